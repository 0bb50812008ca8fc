"""Aggregation of per-fold results: AUC tables with corrected CIs, paired comparisons,
importance, and the VAE's learning diagnostics.

A *resample* is one (repeat, fold): its test subjects and training set are the same for every
method and seed. Several ``--seed`` values are initialisation noise within a resample, so a
method's AUCs are first averaged over seeds per resample; the J = K x R resample means then
give the mean and its Nadeau-Bengio CI (:mod:`vaefusion.evaluation.statistics`), and the paired
differences of two methods over the same resamples give the comparison. Intervals are clipped
to the values an AUC (0 ... 1) or a difference of AUCs (-1 ... 1) can take: with few folds the
t interval can reach past them, and such an interval says only that the data do not tell.
Nothing here picks a latent dim or seed by its test AUC.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace
from typing import Any

import numpy as np

from vaefusion.evaluation.methods import REFERENCE, is_encoder
from vaefusion.evaluation.results import FoldResult
from vaefusion.evaluation.statistics import CorrectedT, corrected_resampled_t, paired_corrected_t

#: The VAE's learning diagnostics averaged over folds into the summary (VAETraining fields).
VAE_DIAGNOSTICS = ("active_units", "within_units", "kl_per_volume", "recon_r2",
                   "recon_r2_subject", "twin_r2_subject", "late_r2_subject", "min_modality_r2")


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std())


def resamples(results: list[FoldResult]) -> dict[tuple[int, int], tuple[float, int, int]]:
    """``(repeat, fold) -> (AUC mean over seeds, n_train, n_test)`` of one method and dim."""
    by: dict[tuple[int, int], list[FoldResult]] = defaultdict(list)
    for r in results:
        by[(r.repeat, r.fold)].append(r)
    return {key: (float(np.mean([r.roc_auc for r in rs])), rs[0].n_train, rs[0].n_test)
            for key, rs in sorted(by.items())}


def _usable(results: list[FoldResult]) -> bool:
    """Every result available with a finite AUC, and at least two resamples."""
    return (all(r.available and math.isfinite(r.roc_auc) for r in results)
            and len({(r.repeat, r.fold) for r in results}) >= 2)


def auc_ci(results: list[FoldResult]) -> CorrectedT | None:
    """The mean AUC of one method at one latent dim with its corrected 95% CI, clipped to
    [0, 1] (None when the method is not available)."""
    if not results or not _usable(results):
        return None
    res = resamples(results)
    aucs, n_train, n_test = (np.array(v, dtype=np.float64) for v in zip(*res.values(),
                                                                         strict=True))
    ci = corrected_resampled_t(aucs, float(n_train.mean()), float(n_test.mean()))
    return replace(ci, ci_low=max(ci.ci_low, 0.0), ci_high=min(ci.ci_high, 1.0))


def auc_table(results: list[FoldResult]) -> list[dict[str, Any]]:
    """Per method and latent dim: mean/std of the fold AUCs (every seed and repeat), the 95% CI
    of the mean over resamples (corrected resampled t), and mean/std over seeds of each seed's
    mean AUC (the seed-robustness figure); not-available cells stay NaN."""
    by: dict[tuple[str, int], list[FoldResult]] = defaultdict(list)
    for r in results:
        by[(r.method, r.latent_dim)].append(r)
    rows = []
    for (method, dim), rs in sorted(by.items()):
        mean, std = _mean_std([r.roc_auc for r in rs])
        seeds: dict[int, list[float]] = defaultdict(list)
        for r in rs:
            seeds[r.seed].append(r.roc_auc)
        s_mean, s_std = _mean_std([_mean_std(v)[0] for v in seeds.values()])
        ci = auc_ci(rs)
        rows.append({"method": method, "latent_dim": dim, "roc_auc_mean": mean,
                     "roc_auc_std": std,
                     "ci_low": math.nan if ci is None else ci.ci_low,
                     "ci_high": math.nan if ci is None else ci.ci_high,
                     "seed_mean": s_mean, "seed_std": s_std, "n_seeds": len(seeds),
                     "n_repeats": len({r.repeat for r in rs}), "n_folds": len(rs),
                     "available": all(r.available for r in rs)})
    return rows


def comparisons(results: list[FoldResult], reference: str = REFERENCE) -> list[dict[str, Any]]:
    """The reference method minus each available baseline, per latent dim, paired on the
    (repeat, fold) resamples both have: mean difference, 95% CI and two-sided p value."""
    by: dict[tuple[str, int], list[FoldResult]] = defaultdict(list)
    for r in results:
        by[(r.method, r.latent_dim)].append(r)
    rows = []
    for (method, dim), rs in sorted(by.items()):
        ref = by.get((reference, dim))
        if method == reference or not ref or not _usable(ref) or not _usable(rs):
            continue
        a, b = resamples(ref), resamples(rs)
        keys = sorted(set(a) & set(b))
        if len(keys) < 2:
            continue
        n_train = float(np.mean([a[k][1] for k in keys]))
        n_test = float(np.mean([a[k][2] for k in keys]))
        t = paired_corrected_t([a[k][0] for k in keys], [b[k][0] for k in keys], n_train, n_test)
        rows.append({"method": reference, "baseline": method, "latent_dim": dim,
                     "n_pairs": t.n, "mean_difference": t.mean, "ci_low": max(t.ci_low, -1.0),
                     "ci_high": min(t.ci_high, 1.0), "t": t.t, "df": t.df, "p_value": t.p_value})
    return rows


def vae_diagnostics(results: list[FoldResult], latent_dim: int) -> dict[str, float]:
    """Fold means of the VAE's learning diagnostics at ``latent_dim`` (those recorded)."""
    out = {}
    for name in VAE_DIAGNOSTICS:
        values = [getattr(r.training, name, None) for r in results
                  if r.method == REFERENCE and r.latent_dim == latent_dim
                  and r.training is not None]
        finite = [float(v) for v in values if v is not None and math.isfinite(v)]
        if finite:
            out[name] = float(np.mean(finite))
    return out


def importance_summary(results: list[FoldResult], modalities: list[str],
                       latent_dim: int) -> list[dict[str, Any]]:
    """VAE modality importance at ``latent_dim``: mean and std over folds (and seeds)."""
    from vaefusion.evaluation.classifier import summarize_importance

    per_fold = [r.importance for r in results
                if is_encoder(r.method) and r.latent_dim == latent_dim
                and r.importance is not None]
    if not per_fold:
        return []
    return summarize_importance(np.asarray(per_fold), modalities)
