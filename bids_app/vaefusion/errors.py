"""Exit codes (BIDS execution spec) and the one exception type that carries them.

A user mistake raises :class:`VaefusionError` with one sentence that names the file and the
fix; the CLI prints that sentence and exits with ``code``, never with a traceback.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import ClassVar

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BIDS_INVALID = 16
EXIT_UNKNOWN_LEVEL = 17
EXIT_NO_DATA = 18
EXIT_USAGE = 64
EXIT_DATA = 65
EXIT_NO_INPUT = 66
EXIT_CANT_CREATE = 73

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILURE: "failure (a crash; see logs/ for the crash file)",
    EXIT_BIDS_INVALID: "BIDS validation failed",
    EXIT_UNKNOWN_LEVEL: "unknown analysis level",
    EXIT_NO_DATA: "the selection matched no data",
    EXIT_USAGE: "usage error (bad option or option value)",
    EXIT_DATA: "bad input data",
    EXIT_NO_INPUT: "missing input",
    EXIT_CANT_CREATE: "cannot create output",
}


class VaefusionError(Exception):
    """A user-facing error: one clear message and a documented exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


class UsageError(VaefusionError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


class DataError(VaefusionError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_DATA)


class MissingInputError(VaefusionError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_NO_INPUT)


class NoDataError(VaefusionError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_NO_DATA)


class OutputError(VaefusionError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_CANT_CREATE)


#: errno values that mean the disk (or the user's quota) is full
FULL_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full_error(exc: BaseException) -> OutputError | None:
    """The exit-73 error for an ``OSError`` that says the disk or quota is full, else None."""
    if not isinstance(exc, OSError) or exc.errno not in FULL_DISK_ERRNOS:
        return None
    where = f" while writing {exc.filename}" if exc.filename else ""
    return OutputError(f"The disk is full{where} ({exc.strerror or 'no space left'}); free "
                       f"space or give another OUTPUT_DIR or -w, then rerun the same command "
                       f"(finished work is reused).")


#: errno values that mean an input cannot be read: gone, a dangling link, no permission, a
#: folder where a file should be, a link loop
UNREADABLE_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR,
                               errno.ENOTDIR, errno.ELOOP})


def unreadable_file(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be read as a file, as the end of a sentence with its fix (None when
    it can): a broken symbolic link, a folder, no read permission, or nothing at all.

    The sentence starts with the path: ``f"{path} {unreadable_file(path)}"``.
    """
    p = os.fspath(path)
    if os.path.islink(p) and not os.path.exists(p):
        try:
            target = os.readlink(p)
        except OSError:
            target = "?"
        return (f"is a broken symbolic link (its target {target} does not exist); restore the "
                f"target or point the link at an existing file")
    if not os.path.lexists(p):
        return "does not exist; put the file there"
    if os.path.isdir(p):
        return "is a folder where a file is expected; put the file itself at this path"
    if not os.access(p, os.R_OK):
        return f"cannot be read (permission denied); give read permission, e.g. chmod a+r {p}"
    return None


def unreadable_input(path: str | os.PathLike[str], what: str = "",
                     error: type[VaefusionError] = MissingInputError) -> VaefusionError | None:
    """The user error (exit 66 unless ``error`` says otherwise) for an input file that cannot
    be read, naming it (``what`` comes first, e.g. "sub-01's ICN file"), or None if it can."""
    why = unreadable_file(path)
    if why is None:
        return None
    return error(f"{what + ' ' if what else ''}{os.fspath(path)} {why}.")


def option_file_error(option: str, path: str | os.PathLike[str], exc: OSError,
                      kind: str) -> VaefusionError:
    """The usage error (exit 64) for a file named by ``option`` that cannot be read: missing
    (``kind`` says what file to give, e.g. "JSON"), a dangling link, a folder, no permission."""
    if not os.path.lexists(path):
        return UsageError(f"{option} {os.fspath(path)} does not exist; give an existing {kind} "
                          f"file.")
    return (unreadable_input(path, option, UsageError)
            or UsageError(f"{option} {os.fspath(path)} cannot be read ({exc.strerror})."))


def unreadable_error(exc: BaseException, what: str = "") -> MissingInputError | None:
    """The exit-66 error for an ``OSError`` raised while reading an input (missing, a dangling
    link, no permission, a folder), else None."""
    if not isinstance(exc, OSError) or exc.errno not in UNREADABLE_ERRNOS or not exc.filename:
        return None
    why = unreadable_file(exc.filename) or (f"cannot be read ({exc.strerror}); check the file "
                                            f"and its permissions")
    return MissingInputError(f"{what + ' ' if what else ''}{os.fspath(exc.filename)} {why}.")


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: stop the run, exit 128 + the signal number (130, 143).

    A ``BaseException``, like ``KeyboardInterrupt``, so that no ``except Exception`` takes it
    for an ordinary error. The workflow engine still turns anything raised inside a node into
    a failed node and goes on with the next one, so the interrupt is also kept in
    :attr:`pending`, which the workflow callbacks re-raise (vaefusion.workflows.base).
    """

    #: the interrupt of this process's run, once one arrived (set by the signal handler)
    pending: ClassVar[Interrupted | None] = None

    def __init__(self, signum: int) -> None:
        super().__init__(int(signum))
        self.signum = int(signum)

    @property
    def code(self) -> int:
        """130 for SIGINT, 143 for SIGTERM, as a shell reports a process ended by them."""
        return 128 + self.signum

    @property
    def signame(self) -> str:
        return signal.Signals(self.signum).name
