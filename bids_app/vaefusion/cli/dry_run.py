"""``--dry-run``: a new user's first question (what would this run do?) answered cheaply.

After every check of the options, the input is validated and discovered as a real run does it,
with a temporary work dir (pybids' database) and validator report, so that neither OUTPUT_DIR
nor the work dir is created; then the selection, the memory estimate and the planned units are
described.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections import Counter
from pathlib import Path

from vaefusion.config import Config


def describe_run(cfg: Config) -> str:
    """The selection (subjects, modalities, per-class counts), the memory estimate and the
    planned units of ``cfg``'s run, as lines of text; raises the run's own user errors (an
    invalid dataset, a selection that matches nothing)."""
    from vaefusion.inputs.discovery import discover
    from vaefusion.inputs.validation import validate_input

    assert cfg.bids_dir is not None
    with tempfile.TemporaryDirectory(prefix="vaefusion_dry_run_") as tmp:
        scratch = dataclasses.replace(cfg, work_dir=Path(tmp) / "work")
        if not cfg.skip_bids_validation:
            validate_input(cfg.bids_dir, Path(tmp), cfg.participant_label)
        subjects = discover(scratch)
    classes = Counter(s.label if s.label is not None else "n/a" for s in subjects)
    complete = sum(s.complete for s in subjects)
    lines = [
        f"vaefusion {cfg.analysis_level} level, dry run: nothing is written "
        f"(OUTPUT_DIR {cfg.output_dir}, work dir {cfg.work_dir}).",
        f"Subjects: {len(subjects)} ({' '.join(s.key for s in subjects)})",
        f"Modalities: {cfg.n_components} NeuroMark ICN maps + GMV per subject "
        f"({cfg.n_components + 1} volumes); {complete} subject(s) have both, "
        f"{len(subjects) - complete} only one (--missing-modality {cfg.missing_modality})",
        f"Classes ({cfg.label_column}): "
        + ", ".join(f"{label} {n}" for label, n in sorted(classes.items())),
    ]
    lines += _memory_lines(cfg, subjects, classes)
    lines += _unit_lines(cfg, len(subjects))
    return "\n".join(lines)


def _unit_lines(cfg: Config, n_subjects: int) -> list[str]:
    """The units of work the run would schedule (as the workflows build them)."""
    lines = [f"Units: {n_subjects} preprocessing (one per subject; finished ones in the work "
             f"dir are reused)"]
    if cfg.model is not None:
        lines.append(f"Units: embedding of {n_subjects} subject(s) with --model {cfg.model}")
        return lines
    if cfg.analysis_level != "group":
        return lines
    settings = len(cfg.latent_dims) * len(cfg.seeds) * cfg.cv_repeats
    from vaefusion.evaluation.methods import is_encoder

    encoders = [m for m in cfg.methods if is_encoder(m)]
    if encoders:
        lines.append(f"Units: {settings * cfg.folds} VAE fold(s) (latent dims "
                     f"{' '.join(map(str, cfg.latent_dims))} x seeds "
                     f"{' '.join(map(str, cfg.seeds))} x {cfg.cv_repeats} repeat(s) x "
                     f"{cfg.folds} folds, up to {cfg.epochs} epochs each)")
    baselines = [m for m in cfg.methods if not is_encoder(m)]
    if baselines:
        lines.append(f"Units: {settings * len(baselines)} baseline(s) "
                     f"({' '.join(baselines)}, each over all {cfg.folds} folds)")
    return lines


def _memory_lines(cfg: Config, subjects, classes: Counter) -> list[str]:
    """The group level's memory estimate per unit (evaluation/memory.py), from the ICN
    grid; the participant level preprocesses one subject at a time per process."""
    if cfg.analysis_level != "group" or cfg.model is not None or not subjects:
        return ["Memory: about 1 GB per preprocessing unit (one subject at a time)"]
    import nibabel as nib

    from vaefusion.evaluation.memory import GiB, UnitSizes, gb, group_needs
    from vaefusion.evaluation.methods import selected_methods
    from vaefusion.model.network import downsampled_grid

    icn = next((s.icn for s in subjects if s.icn), None)
    if icn is None:
        return []
    grid = downsampled_grid(nib.load(icn).shape[:3], cfg.downsample)
    n = classes.get(cfg.positive_label, 0) + classes.get(cfg.negative_label, 0)
    needs = group_needs(selected_methods(cfg.methods), UnitSizes(
        len(subjects), n - n // cfg.folds, cfg.n_components + 1, tuple(grid),
        cfg.batch_subjects, cfg.width, max(cfg.latent_dims), cfg.runtime().data_budget_bytes,
        cfg.device == "cuda", cfg.downsample))
    limit = float(cfg.mem_gb or 0) * GiB / max(1, cfg.nprocs)
    return [f"Memory: {', '.join(f'{d.method} ~{gb(d.total)}' for d in needs)} per unit; "
            f"{gb(limit)} per unit available (--mem {cfg.mem_gb:g} GB / --nprocs "
            f"{cfg.nprocs})"]
