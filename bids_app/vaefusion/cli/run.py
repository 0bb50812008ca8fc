"""The ``vaefusion`` entry point: configuration, guards, logging, and the analysis levels."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from vaefusion import __version__
from vaefusion.cli.parser import ANALYSIS_LEVELS, build_parser
from vaefusion.config import Config, load_toml
from vaefusion.derivatives import naming
from vaefusion.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_UNKNOWN_LEVEL,
    MissingInputError,
    OutputError,
    UsageError,
    VaefusionError,
)

LOG = logging.getLogger("vaefusion")

#: CLI destinations that map one-to-one onto Config fields.
_DIRECT = ("participant_label", "session_label", "bids_filter_file", "skip_bids_validation",
           "missing_modality", "n_components", "label_column", "positive_label",
           "negative_label", "work_dir", "nprocs", "omp_nthreads", "mem_gb", "use_plugin",
           "config_file", "device", "bf16", "stop_on_first_crash", "verbose", "latent_dims",
           "seeds", "folds", "epochs", "patience", "batch_subjects", "lr", "beta", "width",
           "downsample", "augment", "model", "methods", "likelihood", "cv_seed", "cv_repeats",
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
            setattr(cfg, name, Path(value).expanduser().resolve())
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
    if not (cfg.bids_dir / "dataset_description.json").is_file():
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
    root.setLevel(level)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in root.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s",
                                               "%H:%M:%S"))
        root.addHandler(console)
    if cfg is None or cfg.output_dir is None:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = naming.log_file(cfg.output_dir, cfg.analysis_level, stamp)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s [%(levelname)s] %(message)s"))
    root.addHandler(handler)
    return path


def run(cfg: Config, latent_dims_given: bool = False) -> int:
    """Run one analysis level with a validated configuration."""
    from vaefusion.derivatives.dataset import init_output_dir
    from vaefusion.inputs.options import check_inputs
    from vaefusion.inputs.validation import validate_input
    from vaefusion.workflows.base import plugin_settings

    check_paths(cfg)
    check_inputs(cfg, latent_dims_given)
    plugin_settings(cfg)  # a missing or malformed --use-plugin file: exit 64 now, not later
    # every option is checked: only now is anything created
    create_work_dir(cfg)
    init_output_dir(cfg)
    setup_logging(cfg, cfg.verbose)
    LOG.info("vaefusion %s: %s level on %s", __version__, cfg.analysis_level, cfg.bids_dir)
    LOG.info("Work dir: %s", cfg.work_dir)
    if cfg.skip_bids_validation:
        LOG.info("BIDS validation skipped (--skip-bids-validation)")
    else:
        validate_input(cfg.bids_dir, naming.logs_dir(cfg.output_dir))
    if cfg.bf16 and cfg.analysis_level == "group":
        import torch

        if cfg.device == "cpu" or not torch.cuda.is_available():
            LOG.warning("--bf16 applies to CUDA only: training runs in fp32 on the CPU.")
    if cfg.analysis_level == "participant":
        from vaefusion.workflows.participant import run_participant_level

        run_participant_level(cfg)
    else:
        from vaefusion.workflows.group import run_group_level

        run_group_level(cfg)
    LOG.info("Done. Outputs are in %s", cfg.output_dir)
    return EXIT_OK


def _crash_file(cfg: Config | None) -> Path:
    # OUTPUT_DIR/logs if the run got that far; never litter the current directory
    folder = naming.logs_dir(cfg.output_dir) if cfg and cfg.output_dir else None
    if folder is None or not folder.is_dir():
        folder = Path(tempfile.gettempdir())
    path = naming.crash_file(folder, time.strftime("%Y%m%d-%H%M%S"))
    path.write_text(traceback.format_exc())
    return path


def main(argv: list[str] | None = None) -> int:
    """Console script ``vaefusion``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--boutiques" in argv:
        from vaefusion.cli.boutiques import descriptor_text

        print(descriptor_text())
        return EXIT_OK
    args = build_parser().parse_args(argv)
    cfg: Config | None = None
    setup_logging(None, args.verbose or 0)
    handlers = set(LOG.handlers)
    try:
        cfg = build_config(args)
        # only the command line: a reused config file always holds latent_dims
        return run(cfg, latent_dims_given=args.latent_dims is not None)
    except VaefusionError as exc:
        LOG.error("%s", exc.message)
        return exc.code
    except KeyboardInterrupt:
        LOG.error("Interrupted; rerun the same command to resume from the work dir.")
        return 130
    except Exception as exc:  # a bug, not a user error: keep the traceback in a crash file
        crash = _crash_file(cfg)
        LOG.error("vaefusion crashed (%s: %s); the traceback is in %s. Please report it.",
                  type(exc).__name__, exc, crash)
        return EXIT_FAILURE
    finally:  # this run's log file closes with it (main may be called again in one process)
        for handler in set(LOG.handlers) - handlers:
            LOG.removeHandler(handler)
            handler.close()


if __name__ == "__main__":
    sys.exit(main())
