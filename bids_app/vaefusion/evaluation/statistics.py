"""Uncertainty of cross-validated ROC-AUCs: the Nadeau-Bengio corrected resampled t.

The J = K x R fold AUCs of a repeated K-fold are not independent: every two training sets share
most of their subjects. The naive standard error ``s / sqrt(J)`` is then far too small (and more
repeats would shrink it without limit). Nadeau & Bengio (2003, Machine Learning 52:239) correct
the variance of the mean by the overlap of the training sets:

    var(mean) = (1 / J + n_test / n_train) * s^2

with ``s^2`` the sample variance (ddof 1) of the J values, and use a t distribution with J - 1
degrees of freedom (Bouckaert & Frank 2004 for the repeated-CV form). The same statistic on
the paired differences of two methods over identical (repeat, fold) pairs gives the comparison:
the mean difference, its CI and a two-sided p value.

Pure functions on plain numbers; nothing here knows the results' dataclasses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: Two-sided confidence level of every reported interval.
CONFIDENCE = 0.95


@dataclass(frozen=True)
class CorrectedT:
    """A mean over J resamples with its corrected standard error, CI and t test against 0."""

    mean: float
    se: float  # sqrt((1/J + n_test/n_train) * s^2)
    ci_low: float
    ci_high: float
    t: float  # mean / se (the test of "mean == 0"; for AUCs themselves it is not of interest)
    df: int  # J - 1
    p_value: float  # two-sided
    n: int  # J


def corrected_resampled_t(values: Sequence[float], n_train: float, n_test: float,
                          confidence: float = CONFIDENCE) -> CorrectedT:
    """The Nadeau-Bengio corrected resampled t of ``values`` (one per resample).

    ``n_train`` and ``n_test`` are the sizes of a resample's training and test sets (means
    over the folds when they differ by one subject). Needs at least two finite values. When
    all values are equal the SE is 0: the CI is that value, t is NaN, and p is 1 for 0,
    else 0.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size < 2 or not np.isfinite(x).all():
        raise ValueError(f"need two or more finite values, got {x.tolist()}")
    if n_train <= 0 or n_test <= 0:
        raise ValueError(f"training and test sizes must be positive, got {n_train}, {n_test}")
    j = x.size
    df = j - 1
    if np.ptp(x) == 0.0:  # exactly equal values (float sums would leave a spurious spread)
        mean = float(x[0])
        # no spread: the t statistic is undefined (NaN), the p value its limit
        return CorrectedT(mean, 0.0, mean, mean, math.nan, df, 1.0 if mean == 0.0 else 0.0, j)
    mean = float(x.mean())
    se = math.sqrt((1.0 / j + n_test / n_train) * float(x.var(ddof=1)))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df)) * se
    t = mean / se
    p = float(2.0 * stats.t.sf(abs(t), df))
    return CorrectedT(mean, se, mean - half, mean + half, t, df, p, j)


def paired_corrected_t(a: Sequence[float], b: Sequence[float], n_train: float, n_test: float,
                       confidence: float = CONFIDENCE) -> CorrectedT:
    """Corrected resampled t of the paired differences ``a - b`` (same resamples, same order)."""
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired values differ in shape: {a_arr.shape} and {b_arr.shape}")
    return corrected_resampled_t(a_arr - b_arr, n_train, n_test, confidence)


def permutation_p(observed: float, null: Sequence[float]) -> float:
    """One-sided label-permutation p value of an AUC: ``(1 + #{null >= observed}) / (1 + P)``
    over the finite null values (Phipson & Smyth 2010: never 0). NaN without a null."""
    x = np.asarray(null, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0 or not math.isfinite(observed):
        return math.nan
    return float((1 + np.count_nonzero(x >= observed - 1e-12)) / (1 + x.size))
