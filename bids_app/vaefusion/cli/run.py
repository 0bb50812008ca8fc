"""The ``vaefusion`` entry point: configuration, guards, logging, and the analysis levels.

Every run ends with one line that says how it ended (success, failure or interrupted), with
the exit code and, after a crash, the crash file; ``OUTPUT_DIR/logs/status.json`` says the
same. Ctrl-C (SIGINT) and SIGTERM stop the whole run, worker processes included, and exit 130
or 143; training checkpoints and finished units stay in the work dir, so the same command
resumes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vaefusion import __version__
from vaefusion.cli.parser import ANALYSIS_LEVELS, build_parser
from vaefusion.cli.signals import stop_signals
from vaefusion.config import Config, load_toml
from vaefusion.disk import naming
from vaefusion.errors import (
    EXIT_CODES,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_UNKNOWN_LEVEL,
    Interrupted,
    MissingInputError,
    OutputError,
    UsageError,
    VaefusionError,
    disk_full_error,
    unreadable_error,
    unreadable_input,
)

if TYPE_CHECKING:  # the status module pulls in numpy and nibabel: not for --help
    from vaefusion.workflows.status import RunStatus

LOG = logging.getLogger("vaefusion")

#: ``extra`` of the last log line of a run (tests and tools find it by this attribute).
ENDING = {"vaefusion_ending": True}

#: CLI destinations that map one-to-one onto Config fields.
_DIRECT = ("participant_label", "session_label", "bids_filter_file", "skip_bids_validation",
           "missing_modality", "n_components", "label_column", "positive_label",
           "negative_label", "work_dir", "nprocs", "omp_nthreads", "mem_gb", "use_plugin",
           "config_file", "device", "gpus", "bf16", "stop_on_first_crash", "verbose", "latent_dims",
           "seeds", "folds", "epochs", "patience", "batch_subjects", "lr", "beta", "width",
           "downsample", "augment", "model", "methods", "likelihood", "kl_warmup", "free_bits",
           "cv_seed", "cv_repeats",
           "svm_c", "explain_fold")


def build_config(args) -> Config:
    """Defaults, then ``--config-file`` TOML, then the command line (which wins)."""
    data = load_toml(args.config_file) if args.config_file else {}
    cfg = Config.from_dict(data, source=f"--config-file {args.config_file}")
    cfg.bids_dir = args.bids_dir
    cfg.output_dir = args.output_dir
    cfg.analysis_level = args.analysis_level
    for name in _DIRECT:
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    if args.derivatives:
        cfg.derivatives = dict(args.derivatives)
    if cfg.analysis_level not in ANALYSIS_LEVELS:
        raise VaefusionError(
            f"Unknown analysis level '{cfg.analysis_level}'; use participant or group.",
            EXIT_UNKNOWN_LEVEL,
        )
    cfg.bids_dir = Path(cfg.bids_dir).expanduser().resolve()
    cfg.output_dir = Path(cfg.output_dir).expanduser().resolve()
    cfg.work_dir = (Path(cfg.work_dir).expanduser().resolve() if cfg.work_dir
                    else default_work_dir(cfg.output_dir))
    for name in ("bids_filter_file", "use_plugin", "model"):
        value = getattr(cfg, name)
        if value is not None:
            # absolute, but a link is kept as given, so that a message names what the user gave
            setattr(cfg, name, Path(os.path.abspath(Path(value).expanduser())))
    cfg.validate()
    # "auto" values (device, threads, memory) become concrete once, here in the parent process
    return cfg.resolve()


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def creatable(path: Path) -> str | None:
    """Why ``path`` cannot be used as a folder to write in (None if it can); creates nothing."""
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a folder"
    base = _nearest_existing(path)
    if not base.is_dir():
        return f"{base} is a file, not a folder"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"{base} is not writable"
    return None


def default_work_dir(output_dir: Path) -> Path:
    """The work dir when ``-w`` is not given: never the current directory.

    ``OUTPUT_DIR/../<name>_work`` (next to the outputs, on the same disk, one per output
    dataset, so reruns resume), or, where that folder cannot be created (e.g. ``/out`` in a
    container), ``$TMPDIR/vaefusion_work_<uid>_<hash of OUTPUT_DIR>``.
    """
    sibling = output_dir.parent / f"{output_dir.name}_work"
    if creatable(sibling) is None:
        return sibling
    key = hashlib.sha1(str(output_dir).encode()).hexdigest()[:8]
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()).resolve() / f"vaefusion_work_{uid}_{key}"


def check_paths(cfg: Config) -> None:
    """The input must be a dataset folder; outputs and work must be creatable outside it.

    Nothing is created here (see :func:`run`), so a refused run leaves nothing behind.
    """
    assert cfg.bids_dir and cfg.output_dir and cfg.work_dir
    if not cfg.bids_dir.exists():
        raise MissingInputError(f"BIDS_DIR {cfg.bids_dir} does not exist; give the dataset root.")
    if not cfg.bids_dir.is_dir():
        raise MissingInputError(
            f"BIDS_DIR {cfg.bids_dir} is not a folder; give the dataset root folder (the one "
            f"holding dataset_description.json)."
        )
    description = cfg.bids_dir / "dataset_description.json"
    if os.path.lexists(description) and (bad := unreadable_input(description)) is not None:
        raise bad
    if not description.is_file():
        raise MissingInputError(
            f"{cfg.bids_dir / 'dataset_description.json'} is missing; BIDS_DIR must be the root "
            f"of a BIDS dataset."
        )
    for what, path in (("OUTPUT_DIR", cfg.output_dir), ("--work-dir", cfg.work_dir)):
        if path == cfg.bids_dir or cfg.bids_dir in path.parents:
            raise UsageError(
                f"{what} {path} is inside BIDS_DIR {cfg.bids_dir}; the input is never written "
                f"to, so choose a folder outside it."
            )
    for what, path in (("the output folder", cfg.output_dir), ("the work dir", cfg.work_dir)):
        why = creatable(path)
        if why:
            option = "OUTPUT_DIR" if path == cfg.output_dir else "-w/--work-dir"
            raise OutputError(f"Cannot write {what} {path} ({why}); give a writable {option}.")


def create_work_dir(cfg: Config) -> None:
    assert cfg.work_dir is not None
    try:
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the work dir {cfg.work_dir} ({exc.strerror}); give a "
                          f"writable --work-dir.") from None


def setup_logging(cfg: Config | None, verbose: int = 0) -> Path | None:
    """Console logging now; a log file in OUTPUT_DIR/logs once that folder exists."""
    level = logging.DEBUG if verbose >= 2 else logging.INFO
    root = logging.getLogger("vaefusion")
    root.setLevel(logging.DEBUG)  # the log file gets DEBUG lines; the terminal ``level``
    consoles = [h for h in root.handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    if not consoles:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s",
                                               "%H:%M:%S"))
        root.addHandler(console)
        consoles = [console]
    for console in consoles:
        console.setLevel(level)
    if cfg is None or cfg.output_dir is None:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = naming.log_file(cfg.output_dir, cfg.analysis_level, stamp)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s [%(levelname)s] %(message)s"))
    root.addHandler(handler)
    return path


@dataclass
class RunRecord:
    """What :func:`main` needs to end a run: when it started, its status file and log."""

    started: float = field(default_factory=time.time)
    cfg: Config | None = None
    status: RunStatus | None = None
    log_file: Path | None = None


def run(cfg: Config, latent_dims_given: bool = False, record: RunRecord | None = None) -> int:
    """Run one analysis level with a validated configuration."""
    from vaefusion.derivatives.dataset import init_output_dir
    from vaefusion.derivatives.provenance import versions_line
    from vaefusion.inputs.options import check_inputs
    from vaefusion.inputs.validation import validate_input
    from vaefusion.workflows.base import plugin_settings, reporting
    from vaefusion.workflows.status import RunStatus

    record = record if record is not None else RunRecord()
    check_paths(cfg)
    check_inputs(cfg, latent_dims_given)
    plugin_settings(cfg)  # a missing or malformed --use-plugin file: exit 64 now, not later
    # every option is checked: only now is anything created
    create_work_dir(cfg)
    init_output_dir(cfg)
    assert cfg.output_dir is not None
    record.log_file = setup_logging(cfg, cfg.verbose)
    record.status = RunStatus(naming.status_file(cfg.output_dir), cfg.analysis_level,
                              record.log_file).start()
    if cfg.analysis_level == "group":  # a summary of an earlier run would read as this one's
        summary_path(cfg).unlink(missing_ok=True)
    LOG.info("vaefusion %s: %s level on %s", __version__, cfg.analysis_level, cfg.bids_dir)
    LOG.info("Software: %s", versions_line())
    LOG.info("Work dir: %s; status: %s", cfg.work_dir, naming.status_file(cfg.output_dir))
    record.status.phase("validating the input")
    if cfg.skip_bids_validation:
        LOG.info("BIDS validation skipped (--skip-bids-validation)")
    else:
        validate_input(cfg.bids_dir, naming.logs_dir(cfg.output_dir))
    if cfg.bf16 and cfg.analysis_level == "group":
        import torch

        if cfg.device == "cpu" or not torch.cuda.is_available():
            LOG.warning("--bf16 applies to CUDA only: training runs in fp32 on the CPU.")
    record.status.phase("finding the input files")
    with reporting(record.status):
        if cfg.analysis_level == "participant":
            from vaefusion.workflows.participant import run_participant_level

            run_participant_level(cfg)
        else:
            from vaefusion.workflows.group import run_group_level

            run_group_level(cfg)
    return EXIT_OK


def summary_path(cfg: Config) -> Path:
    assert cfg.output_dir is not None
    return naming.group_dir(cfg.output_dir) / naming.SUMMARY


def _crash_file(cfg: Config | None) -> Path:
    from vaefusion.disk.io import atomic_write_text

    # OUTPUT_DIR/logs if the run got that far; never litter the current directory
    folder = naming.logs_dir(cfg.output_dir) if cfg and cfg.output_dir else None
    if folder is None or not folder.is_dir():
        folder = Path(tempfile.gettempdir())
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

        drop_bare_dataset(cfg.output_dir)  # a failed run leaves logs/ alone, no bare dataset
    state = "succeeded" if code == EXIT_OK else "interrupted" if interrupted else "failed"
    if record.status is not None:
        record.status.finish(code, state, message, crash)
    where = f"vaefusion {level} level"
    if interrupted is not None:
        work = f" in {cfg.work_dir}" if cfg is not None and cfg.work_dir else ""
        LOG.error("%s: interrupted by %s (exit %d); finished units and training checkpoints "
                  "are kept%s, so the same command resumes.", where, interrupted.signame, code,
                  work, extra=ENDING)
    elif code == EXIT_OK:
        out = cfg.output_dir if cfg is not None else None
        LOG.info("%s: success (exit 0); outputs in %s", where, out, extra=ENDING)
    else:
        tail = f"; crash file: {crash}" if crash else ""
        LOG.error("%s: failed (exit %d, %s)%s", where, code, _meaning(code), tail, extra=ENDING)
    return code


def main(argv: list[str] | None = None) -> int:
    """Console script ``vaefusion``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--boutiques" in argv:
        from vaefusion.cli.boutiques import descriptor_text

        print(descriptor_text())
        return EXIT_OK
    args = build_parser().parse_args(argv)
    setup_logging(None, args.verbose or 0)
    handlers = set(LOG.handlers)
    record = RunRecord()
    level = str(args.analysis_level)
    with stop_signals():
        try:
            return _main(args, record, level)
        except Interrupted as exc:  # it came while the run was ending: still one clean line
            return finish(record, record.cfg, level, exc.code, f"interrupted by {exc.signame}",
                          interrupted=exc)
        finally:  # this run's log file closes with it (main may be called again in a process)
            if record.status is not None:
                record.status.stop()
            for handler in set(LOG.handlers) - handlers:
                LOG.removeHandler(handler)
                handler.close()


def _main(args, record: RunRecord, level: str) -> int:
    """Build the configuration, run, and end the run with its exit code (see :func:`finish`)."""
    try:
        try:
            record.cfg = build_config(args)
            # only the command line: a reused config file always holds latent_dims
            code = run(record.cfg, latent_dims_given=args.latent_dims is not None,
                       record=record)
        except OSError as exc:  # a full disk in this process is the user's to fix
            full = disk_full_error(exc) or _input_unreadable(record.cfg, exc)
            if full is None:
                raise
            raise full from None
        return _after_success(record, record.cfg, level, code)
    except Interrupted as exc:
        _drop_interrupt_crash_files(record.cfg, record.started)
        return finish(record, record.cfg, level, exc.code, f"interrupted by {exc.signame}",
                      interrupted=exc)
    except KeyboardInterrupt:  # SIGINT where no handler could be set (not the main thread)
        return finish(record, record.cfg, level, 130, "interrupted",
                      interrupted=Interrupted(signal.SIGINT))
    except VaefusionError as exc:
        LOG.error("%s", exc.message)
        return finish(record, record.cfg, level, exc.code, exc.message)
    except Exception as exc:  # a bug, not a user error: keep the traceback in a crash file
        return _crashed(record, record.cfg, level, exc)


def _input_unreadable(cfg: Config | None, exc: OSError) -> VaefusionError | None:
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


def _after_success(record: RunRecord, cfg: Config | None, level: str, code: int) -> int:
    """Success, unless a crash file appeared in OUTPUT_DIR/logs during the run."""
    from vaefusion.workflows.base import crash_files

    crashes = crash_files(cfg, record.started) if cfg is not None else []
    if crashes:
        LOG.error("A step of the run crashed although the run went on; the traceback is in "
                  "%s. Please report it.", crashes[0])
        return finish(record, cfg, level, EXIT_FAILURE, "a step crashed", crashes[0])
    return finish(record, cfg, level, code)


def _drop_interrupt_crash_files(cfg: Config | None, since: float) -> None:
    """nipype writes a crash file for the node an interrupt stopped (Linear plugin): not a
    crash, so it goes."""
    from vaefusion.workflows.base import crash_files

    for path in crash_files(cfg, since) if cfg is not None else []:
        try:
            if f"{Interrupted.__module__}.Interrupted" in path.read_text(errors="replace"):
                path.unlink()
        except OSError:
            continue


def _crashed(record: RunRecord, cfg: Config | None, level: str, exc: Exception) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
