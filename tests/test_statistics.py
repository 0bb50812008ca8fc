"""The corrected resampled t (Nadeau & Bengio 2003) against hand computations, and the summary
tables built on it: CIs per method, paired comparisons on identical (repeat, fold) resamples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vaefusion.evaluation.results import FoldResult
from vaefusion.evaluation.statistics import corrected_resampled_t, paired_corrected_t
from vaefusion.evaluation.summary import auc_ci, auc_table, comparisons, resamples


def test_corrected_t_by_hand_four_resamples() -> None:
    # J = 4 AUCs, training sets of 30 and test sets of 10 subjects (K = 4)
    # mean 0.75; s^2 = 2 * (0.15^2 + 0.05^2) / 3 = 0.05 / 3
    # var(mean) = (1/4 + 10/30) * 0.05/3 = 7/12 * 0.05/3 = 0.35/36; se = 0.0986013
    # t(0.975, 3) = 3.182446 (t table); half width = 3.182446 * 0.0986013 = 0.3137934
    res = corrected_resampled_t([0.6, 0.7, 0.8, 0.9], n_train=30, n_test=10)
    assert res.mean == pytest.approx(0.75)
    assert res.se == pytest.approx(math.sqrt(0.35 / 36))
    assert res.se == pytest.approx(0.0986013, abs=1e-7)
    assert (res.ci_low, res.ci_high) == pytest.approx((0.75 - 0.3137934, 0.75 + 0.3137934),
                                                      abs=1e-6)
    assert (res.df, res.n) == (3, 4)
    assert res.t == pytest.approx(0.75 / 0.0986013, rel=1e-6)
    # the naive interval (se = s / sqrt(J)) is narrower: the correction widens it
    naive = math.sqrt(0.05 / 3 / 4)
    assert res.se > naive * 1.5


def test_paired_corrected_t_by_hand_with_a_closed_form() -> None:
    # two resamples: t has 1 degree of freedom (Cauchy), so quantile and p have closed forms
    # differences 0.1 and 0.3: mean 0.2, s^2 = 0.02; var = (1/2 + 10/40) * 0.02 = 0.015
    res = paired_corrected_t([0.8, 0.9], [0.7, 0.6], n_train=40, n_test=10)
    se = math.sqrt(0.015)
    t = 0.2 / se  # 1.632993
    assert res.mean == pytest.approx(0.2) and res.se == pytest.approx(se)
    assert res.t == pytest.approx(t)
    assert res.p_value == pytest.approx(1.0 - 2.0 * math.atan(t) / math.pi)
    assert res.p_value == pytest.approx(0.349802, abs=1e-6)
    half = math.tan(math.pi * 0.475) * se  # t(0.975, 1) = tan(0.475 pi) = 12.7062
    assert (res.ci_low, res.ci_high) == pytest.approx((0.2 - half, 0.2 + half))
    # the order of the pair flips the sign only
    flipped = paired_corrected_t([0.7, 0.6], [0.8, 0.9], n_train=40, n_test=10)
    assert flipped.mean == pytest.approx(-0.2) and flipped.p_value == pytest.approx(res.p_value)


def test_corrected_t_edge_cases() -> None:
    same = corrected_resampled_t([0.7, 0.7, 0.7], 20, 10)
    assert (same.ci_low, same.ci_high, same.se) == (0.7, 0.7, 0.0) and same.p_value == 0.0
    assert math.isnan(same.t)
    assert paired_corrected_t([0.6, 0.7], [0.6, 0.7], 20, 10).p_value == 1.0
    for bad in ([0.5], [0.5, math.nan], []):
        with pytest.raises(ValueError):
            corrected_resampled_t(bad, 20, 10)
    with pytest.raises(ValueError):
        corrected_resampled_t([0.5, 0.6], 0, 10)
    with pytest.raises(ValueError):
        paired_corrected_t([0.5, 0.6], [0.5], 20, 10)


def _res(method: str, seed: int, repeat: int, fold: int, auc: float,
         available: bool = True) -> FoldResult:
    return FoldResult(method=method, latent_dim=8, seed=seed, fold=fold, roc_auc=auc,
                      n_train=30, n_test=10, backend="sklearn", repeat=repeat,
                      available=available)


def test_seeds_are_averaged_within_a_resample_and_pairs_match() -> None:
    """J counts (repeat, fold) resamples, not seeds; pairs are the same resample."""
    vae, pca = [], []
    rng = np.random.default_rng(0)
    for repeat in range(2):
        for fold in range(3):
            for seed in (0, 1):
                vae.append(_res("vae", seed, repeat, fold, float(rng.uniform(0.6, 0.9))))
                pca.append(_res("pca-late", seed, repeat, fold, float(rng.uniform(0.5, 0.8))))
    res = resamples(vae)
    assert list(res) == [(r, f) for r in range(2) for f in range(3)]
    key_mean = np.mean([v.roc_auc for v in vae if (v.repeat, v.fold) == (1, 2)])
    assert res[(1, 2)] == (pytest.approx(key_mean), 30, 10)

    a = np.array([res[k][0] for k in sorted(res)])
    b_res = resamples(pca)
    b = np.array([b_res[k][0] for k in sorted(b_res)])
    ci = auc_ci(vae)
    ref = corrected_resampled_t(a, 30, 10)
    assert ci is not None and ci.n == 6 and ci.mean == pytest.approx(ref.mean)
    assert (ci.ci_low, ci.ci_high) == pytest.approx((max(ref.ci_low, 0), min(ref.ci_high, 1)))

    # shuffled input: the pairing is by (repeat, fold), not by position
    comp = comparisons(pca[::-1] + vae[3:] + vae[:3])
    assert len(comp) == 1
    c = comp[0]
    paired = paired_corrected_t(a, b, 30, 10)
    assert (c["method"], c["baseline"], c["latent_dim"], c["n_pairs"]) == ("vae", "pca-late",
                                                                          8, 6)
    assert c["mean_difference"] == pytest.approx(paired.mean)
    assert c["p_value"] == pytest.approx(paired.p_value)
    assert (c["ci_low"], c["ci_high"]) == pytest.approx((paired.ci_low, paired.ci_high))

    rows = {r["method"]: r for r in auc_table(vae + pca)}
    assert rows["vae"]["n_folds"] == 12 and rows["vae"]["n_repeats"] == 2
    assert rows["vae"]["n_seeds"] == 2
    assert rows["vae"]["ci_low"] == pytest.approx(ci.ci_low)


def test_unavailable_baselines_get_no_ci_and_no_comparison() -> None:
    vae = [_res("vae", 0, 0, f, 0.7 + 0.05 * f) for f in range(3)]
    x = [_res("pca-early", 0, 0, f, math.nan, available=False) for f in range(3)]
    assert auc_ci(x) is None
    assert comparisons(vae + x) == []
    table = {r["method"]: r for r in auc_table(vae + x)}
    assert math.isnan(table["pca-early"]["ci_low"]) and table["pca-early"]["available"] is False
    assert not math.isnan(table["vae"]["ci_low"])


def test_intervals_are_clipped_to_the_auc_range() -> None:
    few = [_res("vae", 0, 0, 0, 1.0), _res("vae", 0, 0, 1, 0.5)]  # J = 2: a very wide t
    ci = auc_ci(few)
    assert ci is not None and (ci.ci_low, ci.ci_high) == (0.0, 1.0)
