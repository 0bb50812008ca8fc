"""How a run ends: one last line with the exit code and its meaning, the status file's
outcome, crash files for bugs, exit 66 for an unreadable input, and no bare output dataset
after a failure."""

from __future__ import annotations

import logging
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vaefusion.config import Config
from vaefusion.disk import naming
from vaefusion.errors import (
    EXIT_CODES,
    EXIT_FAILURE,
    EXIT_OK,
    Interrupted,
    VaefusionError,
    unreadable_error,
)

if TYPE_CHECKING:  # the status module pulls in numpy and nibabel: not for --help
    from vaefusion.workflows.status import RunStatus

LOG = logging.getLogger("vaefusion")

#: ``extra`` of the last log line of a run (tests and tools find it by this attribute).
ENDING = {"vaefusion_ending": True}


@dataclass
class RunRecord:
    """What :func:`main` needs to end a run: when it started, its status file and log."""

    started: float = field(default_factory=time.time)
    cfg: Config | None = None
    status: RunStatus | None = None
    log_file: Path | None = None


def summary_path(cfg: Config) -> Path:
    assert cfg.output_dir is not None
    return naming.group_dir(cfg.output_dir) / naming.SUMMARY


def _crash_file(cfg: Config | None) -> Path:
    from vaefusion.disk.io import atomic_write_text

    # the run's crash folder in OUTPUT_DIR/logs if the run got that far; never litter the
    # current directory
    logs = naming.logs_dir(cfg.output_dir) if cfg and cfg.output_dir else None
    if cfg is None or logs is None or not logs.is_dir():
        folder = Path(tempfile.gettempdir())
    else:
        folder = naming.crash_dir(cfg.output_dir, cfg.run_id)
    path = naming.crash_file(folder, time.strftime("%Y%m%d-%H%M%S"))
    atomic_write_text(path, traceback.format_exc())
    return path


# --------------------------------------------------------------------------- the ending
def _meaning(code: int) -> str:
    if code == EXIT_FAILURE:
        return "a crash"
    return EXIT_CODES.get(code, "failure").split(" (")[0]


def finish(record: RunRecord, cfg: Config | None, level: str, code: int,
           message: str | None = None, crash: Path | None = None,
           interrupted: Interrupted | None = None) -> int:
    """Write the outcome to the status file and log the run's last line; returns ``code``.

    A failed group run removes ``group/summary.json``: it appears only after a full success.
    """
    if code != EXIT_OK and cfg is not None and record.status is not None \
            and cfg.analysis_level == "group":
        try:
            summary_path(cfg).unlink(missing_ok=True)
        except OSError:
            pass
    if code != EXIT_OK and cfg is not None and cfg.output_dir is not None \
            and record.status is not None:
        from vaefusion.derivatives.dataset import drop_bare_dataset

        # a failed run leaves logs/ alone, no bare dataset
        drop_bare_dataset(cfg.output_dir, cfg.run_id)
    state = "succeeded" if code == EXIT_OK else "interrupted" if interrupted else "failed"
    if record.status is not None:
        record.status.finish(code, state, message, crash)
    where = f"vaefusion {level} level"
    if interrupted is not None:
        work = f" in {cfg.work_dir}" if cfg is not None and cfg.work_dir else ""
        LOG.error("%s: interrupted by %s (exit %d); finished units and training checkpoints "
                  "are kept%s, so the same command resumes.", where, interrupted.signame, code,
                  work, extra=ENDING)
    elif code == EXIT_OK and cfg is not None and cfg.dry_run:
        LOG.info("%s: dry run done (exit 0); nothing was written", where, extra=ENDING)
    elif code == EXIT_OK:
        out = cfg.output_dir if cfg is not None else None
        LOG.info("%s: success (exit 0); outputs in %s", where, out, extra=ENDING)
    else:
        tail = f"; crash file: {crash}" if crash else ""
        LOG.error("%s: failed (exit %d, %s)%s", where, code, _meaning(code), tail, extra=ENDING)
    return code


def input_read_error(cfg: Config | None, exc: OSError) -> VaefusionError | None:
    """Exit 66 for an input file that cannot be read (gone, a dangling link, no permission,
    a folder) wherever it was read, when the file is in BIDS_DIR or a ``--derivatives`` path:
    the checks at discovery name such files first; this is the net under them."""
    if cfg is None or cfg.bids_dir is None or not getattr(exc, "filename", None):
        return None
    roots = [Path(cfg.bids_dir),
             *(Path(p).expanduser().resolve() for p in (cfg.derivatives or {}).values())]
    path = Path(os.path.abspath(exc.filename))
    if not any(path == r or r in path.parents for r in roots):
        return None
    return unreadable_error(exc)


def after_success(record: RunRecord, cfg: Config | None, level: str, code: int) -> int:
    """Success, unless a crash file appeared in this run's crash folder during the run."""
    from vaefusion.workflows.base import crash_files

    crashes = crash_files(cfg, record.started) if cfg is not None else []
    if crashes:
        LOG.error("A step of the run crashed although the run went on; the traceback is in "
                  "%s. Please report it.", crashes[0])
        return finish(record, cfg, level, EXIT_FAILURE, "a step crashed", crashes[0])
    return finish(record, cfg, level, code)


def drop_interrupt_crash_files(cfg: Config | None, since: float) -> None:
    """nipype writes a crash file for the node an interrupt stopped (Linear plugin): not a
    crash, so it goes."""
    from vaefusion.workflows.base import crash_files

    if cfg is None:
        return
    for path in crash_files(cfg, since):
        try:
            if f"{Interrupted.__module__}.Interrupted" in path.read_text(errors="replace"):
                path.unlink()
        except OSError:
            continue
    if cfg.output_dir is not None:  # no crash left: no crash folder either
        try:
            naming.crash_dir(cfg.output_dir, cfg.run_id).rmdir()
        except OSError:  # missing, or it holds a real crash
            pass


def crashed(record: RunRecord, cfg: Config | None, level: str, exc: Exception) -> int:
    from vaefusion.workflows.base import NodeCrash

    if isinstance(exc, NodeCrash) and exc.crash_files:
        crash = exc.crash_files[0]
        more = (f" ({len(exc.crash_files) - 1} more crash file(s) in the same folder)"
                if len(exc.crash_files) > 1 else "")
        LOG.error("vaefusion crashed: %s; the traceback is in %s%s. Please report it.",
                  exc.summary, crash, more)
    else:
        try:
            crash = _crash_file(cfg)
        except OSError:  # e.g. a full disk: the traceback goes to the terminal instead
            LOG.error("vaefusion crashed and could not write a crash file:\n%s",
                      traceback.format_exc())
            return finish(record, cfg, level, EXIT_FAILURE, str(exc))
        LOG.error("vaefusion crashed (%s: %s); the traceback is in %s. Please report it.",
                  type(exc).__name__, exc, crash)
    return finish(record, cfg, level, EXIT_FAILURE, f"{type(exc).__name__}: {exc}", crash)
