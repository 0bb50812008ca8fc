"""The ``vaefusion`` entry point: configuration, guards, logging, and the analysis levels."""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path

from vaefusion import __version__
from vaefusion.cli.parser import ANALYSIS_LEVELS, build_parser
from vaefusion.config import Config, load_toml
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
           "downsample", "augment", "model", "methods")


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
    cfg.work_dir = Path(cfg.work_dir or Path.cwd() / "work").expanduser().resolve()
    for name in ("bids_filter_file", "use_plugin", "model"):
        value = getattr(cfg, name)
        if value is not None:
            setattr(cfg, name, Path(value).expanduser().resolve())
    cfg.validate()
    # "auto" values (device, threads, memory) become concrete once, here in the parent process
    return cfg.resolve()


def check_paths(cfg: Config) -> None:
    """The input must exist; outputs and work must not be inside it and must be creatable."""
    assert cfg.bids_dir and cfg.output_dir and cfg.work_dir
    if not cfg.bids_dir.is_dir():
        raise MissingInputError(f"BIDS_DIR {cfg.bids_dir} does not exist; give the dataset root.")
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
    if cfg.model is not None and not (cfg.model / "model.json").is_file():
        raise MissingInputError(
            f"--model {cfg.model} holds no model.json; give a folder written by a group run "
            f"(OUTPUT_DIR/group/models/...)."
        )
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
    path = cfg.output_dir / "logs" / f"vaefusion-{cfg.analysis_level}-{stamp}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s [%(levelname)s] %(message)s"))
    root.addHandler(handler)
    return path


def run(cfg: Config) -> int:
    """Run one analysis level with a validated configuration."""
    from vaefusion.derivatives.dataset import init_output_dir
    from vaefusion.inputs.validation import validate_input

    check_paths(cfg)
    init_output_dir(cfg)
    setup_logging(cfg, cfg.verbose)
    LOG.info("vaefusion %s: %s level on %s", __version__, cfg.analysis_level, cfg.bids_dir)
    if cfg.skip_bids_validation:
        LOG.info("BIDS validation skipped (--skip-bids-validation)")
    else:
        validate_input(cfg.bids_dir, cfg.output_dir / "logs")
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
    folder = cfg.output_dir / "logs" if cfg and cfg.output_dir else Path.cwd()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(os.environ.get("TMPDIR", "/tmp"))
    path = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-vaefusion.txt"
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
    try:
        cfg = build_config(args)
        return run(cfg)
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


if __name__ == "__main__":
    sys.exit(main())
