"""Group outputs from the joined cross-validation results: TSV tables, models, latents, summary.

The headline numbers of ``group/summary.json`` use the first ``--latent-dim`` value (the
primary setting) and average over folds of every seed; the full sweep is in the TSVs.
Choosing the best latent dim after seeing test AUCs would be optimistic, so it is never done.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from vaefusion import __version__
from vaefusion.config import Config
from vaefusion.derivatives.io import atomic_write_text, tsv_text
from vaefusion.derivatives.subject import write_latents_tsv
from vaefusion.evaluation.manifest import Manifest, unit_name
from vaefusion.evaluation.summary import auc_table, importance_summary
from vaefusion.inputs.reference import modality_domain

METRIC_COLUMNS = ["method", "latent_dim", "seed", "fold", "roc_auc", "n_train", "n_test",
                  "available", "backend"]


def write_group_outputs(cfg: Config, manifest: Manifest, results: list[dict[str, Any]]) -> dict:
    """Write everything under OUTPUT_DIR/group (and per-subject latents); returns the summary."""
    assert cfg.output_dir is not None
    out = Path(cfg.output_dir)
    group = out / "group"
    group.mkdir(parents=True, exist_ok=True)
    results = sorted(results, key=lambda r: (r["method"], r["latent_dim"], r["seed"], r["fold"]))

    atomic_write_text(group / "metrics.tsv", tsv_text(results, METRIC_COLUMNS))
    scores = [
        {"method": r["method"], "latent_dim": r["latent_dim"], "seed": r["seed"],
         "fold": r["fold"], "participant_id": key, "label": lab, "decision": d}
        for r in results if r["available"]
        for key, lab, d in zip(r["test_subjects"], r["test_labels"], r["decision"], strict=True)
    ]
    atomic_write_text(group / "decision_scores.tsv", tsv_text(
        scores, ["method", "latent_dim", "seed", "fold", "participant_id", "label", "decision"]))
    table = auc_table(results)
    columns = list(table[0]) if table else []
    atomic_write_text(group / "auc_by_latent_dim.tsv", tsv_text(table, columns))

    primary = cfg.latent_dims[0]
    vae = [r for r in results if r["method"] == "vae"]
    importance = importance_summary(results, manifest.modalities, primary)
    imp_rows = [
        {"latent_dim": r["latent_dim"], "seed": r["seed"], "fold": r["fold"], "modality": m,
         "domain": modality_domain(m), "importance": v}
        for r in vae for m, v in zip(manifest.modalities, r["importance"], strict=True)
    ]
    atomic_write_text(group / "importance.tsv", tsv_text(
        imp_rows, ["latent_dim", "seed", "fold", "modality", "domain", "importance"]))
    if vae:
        _write_models_and_latents(cfg, manifest, vae, group)
        _write_history(vae, group)

    methods: dict[str, Any] = {}
    for row in table:
        if row["latent_dim"] != primary:
            continue
        methods[row["method"]] = {
            "roc_auc_mean": None if math.isnan(row["roc_auc_mean"]) else row["roc_auc_mean"],
            "roc_auc_std": None if math.isnan(row["roc_auc_std"]) else row["roc_auc_std"],
            "latent_dim": primary, "n_folds": row["n_folds"], "seeds": cfg.seeds,
            "available": row["available"],
        }
    backends = sorted({r["backend"] for r in results})
    summary = {
        "methods": methods,
        "importance": importance,
        "n_subjects": len(manifest.files),
        "n_classified": int(manifest.classified.size),
        "n_positive": int((manifest.y() == 1).sum()),
        "n_negative": int((manifest.y() == 0).sum()),
        "labels": {"positive": cfg.positive_label, "negative": cfg.negative_label},
        "folds": cfg.folds, "latent_dims": cfg.latent_dims, "seeds": cfg.seeds,
        "classifier_backend": backends[0] if len(backends) == 1 else backends,
        "device": sorted({r.get("device", "cpu") for r in vae}) or None,
        "vaefusion_version": __version__,
    }
    atomic_write_text(group / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _write_models_and_latents(cfg: Config, manifest: Manifest, vae: list[dict[str, Any]],
                              group: Path) -> None:
    """Copy each fold's model; write each subject's out-of-fold latents.

    A classified subject's latents come from the fold that tested it (its model never saw the
    subject); other subjects use fold 0's model. The primary setting (first latent dim and
    seed) gives ``sub-<label>_desc-vae_latents.tsv``; every setting is in group/latents_*.tsv.
    """
    models = group / "models"
    for r in vae:
        dst = models / unit_name("vae", r["latent_dim"], r["seed"], r["fold"])
        tmp = dst.with_name(dst.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(r["model_dir"], tmp)
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)

    from vaefusion.inputs.cache import read_meta

    metas = {manifest.keys[i]: read_meta(Path(f)) for i, f in enumerate(manifest.files)}
    settings = sorted({(r["latent_dim"], r["seed"]) for r in vae})
    for dim, seed in settings:
        runs = sorted((r for r in vae if (r["latent_dim"], r["seed"]) == (dim, seed)),
                      key=lambda r: r["fold"])
        tested = {key: r for r in runs for key in r["test_subjects"]}
        loaded = {r["fold"]: np.load(r["latents"]) for r in runs}
        rows = []
        for key, meta in metas.items():
            src = tested.get(key, runs[0])
            mu = loaded[src["fold"]][key]
            for name, z in zip(meta.modalities, mu, strict=True):
                rows.append({"participant_id": f"sub-{meta.subject}",
                             "session_id": f"ses-{meta.session}" if meta.session else "n/a",
                             "fold": src["fold"], "modality": name,
                             "domain": modality_domain(name),
                             **{f"z{j:03d}": float(v) for j, v in enumerate(z)}})
            if (dim, seed) == (cfg.latent_dims[0], cfg.seeds[0]):
                model_name = unit_name("vae", dim, seed, src["fold"])
                write_latents_tsv(cfg.output_dir, meta.subject, meta.session, meta.modalities,
                                  mu, meta={"LatentDim": dim, "Seed": seed, "Fold": src["fold"],
                                            "Model": f"group/models/{model_name}",
                                            "OutOfFold": key in tested})
        cols = ["participant_id", "session_id", "fold", "modality", "domain",
                *[f"z{j:03d}" for j in range(dim)]]
        atomic_write_text(group / f"latents_vae_L{dim}_seed{seed}.tsv", tsv_text(rows, cols))


def _write_history(vae: list[dict[str, Any]], group: Path) -> None:
    rows = [{"latent_dim": r["latent_dim"], "seed": r["seed"], "fold": r["fold"], **h}
            for r in vae for h in r.get("history", [])]
    if rows:
        atomic_write_text(group / "training_history.tsv", tsv_text(rows, list(rows[0])))

