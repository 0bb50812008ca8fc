"""Aggregation of per-fold results: AUC tables over latent dims and seeds, importance."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from vaefusion.evaluation.results import FoldResult


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std())


def auc_table(results: list[FoldResult]) -> list[dict[str, Any]]:
    """Per method and latent dim: mean/std of the fold AUCs, and mean/std over seeds of each
    seed's mean AUC (the seed-robustness figure); not-available cells stay NaN."""
    by: dict[tuple[str, int], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    avail: dict[tuple[str, int], bool] = {}
    for r in results:
        key = (r.method, r.latent_dim)
        by[key][r.seed].append(r.roc_auc)
        avail[key] = avail.get(key, True) and r.available
    rows = []
    for (method, dim), seeds in sorted(by.items()):
        all_folds = [v for vals in seeds.values() for v in vals]
        mean, std = _mean_std(all_folds)
        seed_means = [_mean_std(v)[0] for v in seeds.values()]
        s_mean, s_std = _mean_std(seed_means)
        rows.append({"method": method, "latent_dim": dim, "roc_auc_mean": mean,
                     "roc_auc_std": std, "seed_mean": s_mean, "seed_std": s_std,
                     "n_seeds": len(seeds), "n_folds": len(all_folds),
                     "available": avail[(method, dim)]})
    return rows


def importance_summary(results: list[FoldResult], modalities: list[str],
                       latent_dim: int) -> list[dict[str, Any]]:
    """VAE modality importance at ``latent_dim``: mean and std over folds (and seeds)."""
    from vaefusion.evaluation.classifier import summarize_importance

    per_fold = [r.importance for r in results
                if r.method == "vae" and r.latent_dim == latent_dim and r.importance is not None]
    if not per_fold:
        return []
    return summarize_importance(np.asarray(per_fold), modalities)

