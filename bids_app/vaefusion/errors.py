"""Exit codes (BIDS execution spec) and the one exception type that carries them.

A user mistake raises :class:`VaefusionError` with one sentence that names the file and the
fix; the CLI prints that sentence and exits with ``code``, never with a traceback.
"""

from __future__ import annotations

import errno
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
