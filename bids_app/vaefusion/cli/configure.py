"""The one configuration of a run, built from the command line: defaults, then
``--config-file`` TOML, then the options given (which win); resolved once, here."""

from __future__ import annotations

import os
from pathlib import Path

from vaefusion.cli.parser import ANALYSIS_LEVELS
from vaefusion.cli.paths import default_work_dir
from vaefusion.config import Config, check_memory, load_toml
from vaefusion.disk import naming
from vaefusion.errors import EXIT_UNKNOWN_LEVEL, UsageError, VaefusionError, option_file_error

#: CLI destinations that map one-to-one onto Config fields.
_DIRECT = ("participant_label", "session_label", "bids_filter_file", "skip_bids_validation",
           "missing_modality", "n_components", "label_column", "positive_label",
           "negative_label", "work_dir", "nprocs", "omp_nthreads", "mem_gb", "use_plugin",
           "config_file", "device", "gpus", "bf16", "stop_on_first_crash", "dry_run", "verbose",
           "latent_dims",
           "seeds", "folds", "epochs", "patience", "batch_subjects", "lr", "beta", "width",
           "downsample", "augment", "model", "methods", "likelihood", "scaling", "kl_warmup",
           "free_bits",
           "cv_seed", "cv_repeats", "cv_groups",
           "svm_c", "classifier", "permutations", "explain_fold", "diagnosis_map")


def expand_label_files(values: list[str], option: str) -> list[str]:
    """Labels as given, with each ``@FILE`` replaced by the labels FILE lists (separated by
    whitespace, ``#`` starting a comment, ``sub-``/``ses-`` optional): an array job's subject
    list is often a file."""
    labels: list[str] = []
    for value in values:
        if not value.startswith("@"):
            labels.append(value)
            continue
        path = Path(value[1:]).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise option_file_error(option, path, exc, "label") from None
        except UnicodeDecodeError:
            raise UsageError(f"{option} {value}: {path} is not UTF-8 text; give a text file "
                             f"of labels.") from None
        words = [w for line in text.splitlines() for w in line.split("#", 1)[0].split()]
        if not words:
            raise UsageError(f"{option} {value}: {path} lists no label; give one label a line.")
        labels += [w.removeprefix("sub-").removeprefix("ses-") for w in words]
    return labels


def unique_derivatives(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """``--derivatives`` as name -> path; a name given to two folders (two paths ending in
    the same folder name, without ``NAME=``) is refused rather than one silently dropped."""
    named: dict[str, str] = {}
    for name, path in pairs:
        earlier = named.get(name)
        if earlier is not None and os.path.abspath(earlier) != os.path.abspath(path):
            raise UsageError(f"--derivatives names two datasets {name} ({earlier} and {path}); "
                             f"name them apart with NAME=PATH, e.g. --derivatives "
                             f"{name}1={earlier} {name}2={path}.")
        named[name] = path
    return named


def build_config(args) -> Config:
    """Defaults, then ``--config-file`` TOML, then the command line (which wins)."""
    data = load_toml(args.config_file) if args.config_file else {}
    cfg = Config.from_dict(data, source=f"--config-file {args.config_file}")
    cfg.bids_dir = args.bids_dir
    cfg.output_dir = args.output_dir
    cfg.analysis_level = args.analysis_level
    cfg.run_id = naming.new_run_id()  # a reused configuration file names an earlier run
    for name in _DIRECT:
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    if args.icn_order is not None:
        from vaefusion.inputs.template_checks import read_icn_order

        cfg.icn_order = read_icn_order(args.icn_order)
    for name, option in (("participant_label", "--participant-label"),
                         ("session_label", "--session-label")):
        setattr(cfg, name, expand_label_files(getattr(cfg, name), option))
    if args.derivatives:
        cfg.derivatives = unique_derivatives(args.derivatives)
    if cfg.analysis_level not in ANALYSIS_LEVELS:
        raise VaefusionError(
            f"Unknown analysis level '{cfg.analysis_level}'; use participant or group.",
            EXIT_UNKNOWN_LEVEL,
        )
    cfg.bids_dir = Path(cfg.bids_dir).expanduser().resolve()
    cfg.output_dir = Path(cfg.output_dir).expanduser().resolve()
    cfg.work_dir = (Path(cfg.work_dir).expanduser().resolve() if cfg.work_dir
                    else default_work_dir(cfg.output_dir, cfg.bids_dir))
    for name in ("bids_filter_file", "use_plugin", "model", "diagnosis_map"):
        value = getattr(cfg, name)
        if value is not None:
            # absolute, but a link is kept as given, so that a message names what the user gave
            setattr(cfg, name, Path(os.path.abspath(Path(value).expanduser())))
    cfg.validate()
    check_memory(cfg.mem_gb)  # before resolution fills it in with what is available
    # "auto" values (device, threads, memory) become concrete once, here in the parent process
    return cfg.resolve()
