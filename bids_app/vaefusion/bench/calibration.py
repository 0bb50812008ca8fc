"""Figures that place a simulated dataset beside published ones (``docs/simulation.md``).

Every figure is computed on the maps as vaefusion preprocesses them (GM on the ICN grid, every
volume max-abs scaled), inside each network (template >= 30 % of its maximum) or inside gray
matter:

- ``subject_template_r``: spatial correlation of a subject's ICN map with its template;
- ``icc``: voxelwise test-retest ICC(1,1) of two sessions (subjects' share of the variance);
- ``noise_share``: the share of between-subject variance that a noiseless twin does not hold;
- ``site_share``: the share of between-subject variance explained by site means (eta^2);
- ``gm_cv``: between-subject coefficient of variation of total gray matter (unscaled).
"""

from __future__ import annotations

import numpy as np

#: A voxel belongs to a network where the template is at least this share of its maximum.
NETWORK_FLOOR = 0.3


def network_masks(templates: np.ndarray) -> np.ndarray:
    """``(n, X, Y, Z)`` boolean: each ICN's network (template >= 30 % of its max |value|)."""
    peak = np.abs(templates).reshape(templates.shape[0], -1).max(axis=1)
    return np.abs(templates) >= NETWORK_FLOOR * peak[:, None, None, None]


def subject_template_r(maps: np.ndarray, templates: np.ndarray, mask: np.ndarray
                       ) -> np.ndarray:
    """``(subjects, n)`` Pearson r of each subject's ICN map with its template in the brain
    mask. ``maps``: ``(subjects, n, X, Y, Z)``."""
    t = templates[:, mask]
    t = t - t.mean(axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    x = maps[:, :, mask]
    x = x - x.mean(axis=2, keepdims=True)
    x /= np.maximum(np.linalg.norm(x, axis=2, keepdims=True), 1e-12)
    return np.einsum("snv,nv->sn", x, t)


def icc(session1: np.ndarray, session2: np.ndarray, region: np.ndarray) -> float:
    """Mean voxelwise ICC(1,1) over ``region`` of two sessions ``(subjects, X, Y, Z)``."""
    a, b = session1[:, region].astype(np.float64), session2[:, region].astype(np.float64)
    mean = (a + b) / 2
    msb = 2 * mean.var(axis=0, ddof=1)
    msw = ((a - b) ** 2).sum(axis=0) / (2 * a.shape[0])
    return float(np.nanmean((msb - msw) / np.maximum(msb + msw, 1e-20)))


def noise_share(noisy: np.ndarray, twin: np.ndarray, region: np.ndarray) -> float:
    """Share of the between-subject variance in ``region`` that is not in the noiseless twin
    (both ``(subjects, X, Y, Z)``, preprocessed alike)."""
    total = noisy[:, region].astype(np.float64).var(axis=0).sum()
    structured = twin[:, region].astype(np.float64).var(axis=0).sum()
    return float(1.0 - structured / max(total, 1e-20))


def site_share(maps: np.ndarray, sites: list[str], region: np.ndarray) -> float:
    """Share of the between-subject variance in ``region`` explained by the site means,
    adjusted for the chance share of ``k - 1`` site means (epsilon^2, floored at 0): plain
    eta^2 expects ``(k - 1) / (n - 1)`` even without any site effect."""
    x = maps[:, region].astype(np.float64)
    labels = np.asarray(sites)
    groups = np.unique(labels)
    between = float(np.sum(sum((labels == s).sum()
                               * (x[labels == s].mean(axis=0) - x.mean(axis=0)) ** 2
                               for s in groups)))
    total = float(((x - x.mean(axis=0)) ** 2).sum())
    within = (total - between) / max(x.shape[0] - len(groups), 1)
    return max(0.0, (between - (len(groups) - 1) * within) / max(total, 1e-20))


def gm_cv(raw_gm: np.ndarray) -> float:
    """Between-subject coefficient of variation of total gray matter ``(subjects, ...)``."""
    totals = raw_gm.reshape(raw_gm.shape[0], -1).astype(np.float64).sum(axis=1)
    return float(totals.std(ddof=1) / totals.mean())


def oracle_scores(stacks: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """``(subjects, modalities)``: each subject's preprocessed modality maps projected on the
    known expected HC - SZ difference of that modality, after removing the sample mean.

    The oracle knows the answer's direction (nothing is trained), so its AUC is what a method
    could reach from one modality (a column) or all of them (the row sums) on these data.
    """
    x = stacks.reshape(*stacks.shape[:2], -1).astype(np.float64)
    d = expected.reshape(expected.shape[0], -1).astype(np.float64)
    return np.einsum("smv,mv->sm", x - x.mean(axis=0, keepdims=True), d)
