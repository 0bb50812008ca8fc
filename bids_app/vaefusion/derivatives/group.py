"""Group outputs from typed results: TSV tables, models, latents and ``summary.json``.

``group/summary.json`` is the evaluation's :class:`~vaefusion.evaluation.group_summary.GroupSummary`
(its headline numbers at the first ``--latent-dim``, with the paired comparisons of
``comparisons.tsv``); the full sweep is in the TSVs. Every row of a table names the seed,
repeat and fold it came from.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from vaefusion.config import Config
from vaefusion.derivatives.provenance import software_versions
from vaefusion.derivatives.subject import (
    LATENT_ROW_COLUMNS,
    LatentsSource,
    SubjectLatents,
    latent_columns,
    latent_rows,
    write_subject_latents,
)
from vaefusion.disk import naming
from vaefusion.disk.io import write_json, write_tsv
from vaefusion.evaluation.group_summary import GroupSummary, summarize_group
from vaefusion.evaluation.manifest import Manifest
from vaefusion.evaluation.methods import is_encoder
from vaefusion.evaluation.results import FoldResult
from vaefusion.evaluation.summary import auc_table, comparisons
from vaefusion.inputs.reference import modality_domain

METRIC_COLUMNS = ["method", "latent_dim", "seed", "repeat", "fold", "roc_auc", "svm_c",
                  "n_train", "n_test", "grid", "available", "backend"]
SCORE_COLUMNS = ["method", "latent_dim", "seed", "repeat", "fold", "participant_id", "label",
                 "decision"]
IMPORTANCE_COLUMNS = ["latent_dim", "seed", "repeat", "fold", "modality", "domain",
                      "importance"]
COMPARISON_COLUMNS = ["method", "baseline", "latent_dim", "n_pairs", "mean_difference",
                      "ci_low", "ci_high", "t", "df", "p_value"]
#: the group latents table: the per-subject schema behind participant, session and fold
LATENTS_TABLE_COLUMNS = ["participant_id", "session_id", "fold", *LATENT_ROW_COLUMNS]


def write_group_outputs(cfg: Config, manifest: Manifest, results: list[FoldResult],
                        summary_file: bool = True) -> GroupSummary:
    """Write everything under OUTPUT_DIR/group (and per-subject latents); returns the summary.

    ``summary_file=False`` leaves ``summary.json`` to the caller, who writes it
    (:func:`write_summary`) after its own last step: the file means the run succeeded.
    """
    assert cfg.output_dir is not None
    group = naming.group_dir(cfg.output_dir)
    group.mkdir(parents=True, exist_ok=True)
    results = sorted(results, key=lambda r: r.sort_key)

    metric_rows = [{c: getattr(r, c) for c in METRIC_COLUMNS} for r in results]
    if manifest.groups is not None:  # --cv-groups: which group(s) each fold tested
        where = dict(zip(manifest.keys, manifest.groups, strict=True))
        for row, r in zip(metric_rows, results, strict=True):
            row["test_group"] = "+".join(sorted({where[k] for k in r.test_subjects}))
    write_tsv(group / naming.METRICS, metric_rows,
              METRIC_COLUMNS + ["test_group"] * (manifest.groups is not None))
    # the dataset's own labels (participants.tsv), not the classifier's 1/0 coding
    names = {1: cfg.positive_label, 0: cfg.negative_label}
    scores = [
        {"method": r.method, "latent_dim": r.latent_dim, "seed": r.seed, "repeat": r.repeat,
         "fold": r.fold, "participant_id": key, "label": names[int(lab)], "decision": d}
        for r in results if r.available
        for key, lab, d in zip(r.test_subjects, r.test_labels, r.decision, strict=True)
    ]
    write_tsv(group / naming.DECISION_SCORES, scores, SCORE_COLUMNS)
    table = auc_table(results)
    write_tsv(group / naming.AUC_TABLE, table, list(table[0]) if table else [])
    comps = comparisons(results)
    write_tsv(group / naming.COMPARISONS, comps, COMPARISON_COLUMNS)

    vae = [r for r in results if is_encoder(r.method)]
    imp_rows = [
        {"latent_dim": r.latent_dim, "seed": r.seed, "repeat": r.repeat, "fold": r.fold,
         "modality": m, "domain": modality_domain(m), "importance": v}
        for r in vae if r.importance is not None
        for m, v in zip(manifest.modalities, r.importance, strict=True)
    ]
    write_tsv(group / naming.IMPORTANCE, imp_rows, IMPORTANCE_COLUMNS)
    if vae:
        _write_models_and_latents(cfg, manifest, vae, group)
        _write_history(vae, group)

    summary = summarize_group(cfg, manifest, results, table, comps, software_versions())
    if summary_file:
        write_summary(cfg.output_dir, summary)
    return summary


def write_summary(out: Path, summary: GroupSummary) -> Path:
    """``group/summary.json``: written last, so that it appears only after a full success."""
    return write_json(naming.group_dir(out) / naming.SUMMARY, summary.to_dict())


def write_latents_table(path: Path, items: list[SubjectLatents]) -> Path:
    """A group latents table: a row per subject and modality, all subjects of one model
    setting (participant_id, session_id, fold, modality, domain, z000...)."""
    dims = {item.source.latent_dim for item in items}
    if len(dims) > 1:
        raise ValueError(f"one latents table cannot hold latent dims {sorted(dims)}")
    rows = [{"participant_id": naming.participant_id(item.subject),
             "session_id": naming.session_id(item.session), "fold": item.source.fold, **row}
            for item in items for row in latent_rows(item)]
    dim = dims.pop() if dims else 0
    return write_tsv(path, rows, [*LATENTS_TABLE_COLUMNS, *latent_columns(dim)])


def _copy_model(src: str, dst: Path) -> None:
    """Copy a model folder so that ``dst`` is complete or absent (copy, then rename)."""
    tmp = dst.with_name(dst.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def _write_models_and_latents(cfg: Config, manifest: Manifest, vae: list[FoldResult],
                              group: Path) -> None:
    """Copy each fold's model; write each subject's out-of-fold latents.

    A classified subject's latents come from the fold that tested it (its model never saw the
    subject); other subjects use fold 0's model. A latents table holds one (latent dim, seed,
    repeat); the primary setting (first latent dim and seed, repeat 0) gives
    ``sub-<label>_desc-vae_latents.tsv``; every setting is in group/latents_*.tsv.
    """
    from vaefusion.inputs.cache import read_meta

    for r in vae:
        assert r.training is not None, "a VAE fold result without its training record"
        _copy_model(r.training.model_dir, naming.model_dir(group, "vae", r.latent_dim, r.seed,
                                                           r.repeat, r.fold))
    metas = {manifest.keys[i]: read_meta(Path(f)) for i, f in enumerate(manifest.files)}
    settings = sorted({(r.latent_dim, r.seed, r.repeat) for r in vae})
    for dim, seed, repeat in settings:
        runs = sorted((r for r in vae if (r.latent_dim, r.seed, r.repeat) == (dim, seed, repeat)),
                      key=lambda r: r.fold)
        tested = {key: r for r in runs for key in r.test_subjects}
        loaded = {r.fold: np.load(r.training.latents) for r in runs if r.training is not None}
        items = []
        for key, meta in metas.items():
            src = tested.get(key, runs[0])
            model = naming.model_dir(Path(naming.GROUP), "vae", dim, seed, repeat, src.fold)
            source = LatentsSource(latent_dim=dim, model=model.as_posix(), seed=seed,
                                   fold=src.fold, out_of_fold=key in tested)
            items.append(SubjectLatents(meta.subject, meta.session, meta.modalities,
                                        loaded[src.fold][key], source))
        write_latents_table(group / naming.latents_table(dim, seed, repeat), items)
        if (dim, seed, repeat) == (cfg.latent_dims[0], cfg.seeds[0], 0):
            for item in items:
                write_subject_latents(cfg.output_dir, item)


def _history_cell(value: object) -> object:
    # Losses are large (thousands of nats per volume) and change little near convergence: 9
    # significant digits keep epochs that differ apart. Lists (KL per latent dimension)
    # become one comma-separated cell.
    if isinstance(value, list):
        return ",".join(f"{x:.6g}" for x in value)
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.9g}"
    return value


def _write_history(vae: list[FoldResult], group: Path) -> None:
    rows = [{"latent_dim": r.latent_dim, "seed": r.seed, "repeat": r.repeat, "fold": r.fold,
             **{k: _history_cell(v) for k, v in h.items()}}
            for r in vae if r.training is not None for h in r.training.history]
    if rows:
        write_tsv(group / naming.TRAINING_HISTORY, rows, list(rows[0]))


def write_model_embedding(out: Path, items: list[SubjectLatents], model: Path,
                          group: bool) -> None:
    """The outputs of embedding with ``--model``: each subject's latents, and at the group
    level the latents table and a ``summary.json`` that records the model used."""
    for item in items:
        write_subject_latents(out, item)
    if not group:
        return
    folder = naming.group_dir(out)
    write_latents_table(folder / naming.MODEL_LATENTS, items)
    write_json(folder / naming.SUMMARY, {
        "methods": {}, "importance": [], "n_subjects": len(items),
        "model": str(model), "latent_dim": items[0].source.latent_dim if items else None,
        "note": "embedding only (--model): no training, no classification",
    })
