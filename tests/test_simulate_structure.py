"""The simulator's subject-level structure, its calibration and the truth of every arm."""

from __future__ import annotations

from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from vaefusion.bench import calibration as cal
from vaefusion.inputs.preprocess import scale_maxabs, stack_subject
from vaefusion.simulate import simulate_dataset
from vaefusion.simulate.config import DEFAULT_GM_EFFECTS, DEFAULT_ICN_EFFECTS
from vaefusion.simulate.grids import icn_grid
from vaefusion.simulate.icn import icn_templates
from vaefusion.simulate.structure import smooth_fields

GRID9 = {"icn_res": 9, "gm_res": 6}


def _stacks(root, truth, scale: bool = True) -> np.ndarray:
    out = []
    for f in truth["files"]:
        icn, gm = nib.load(root / f["icn"]), nib.load(root / f["gm"])
        stack = stack_subject(icn.get_fdata(dtype=np.float32), icn.affine,
                              gm.get_fdata(dtype=np.float32), gm.affine)
        names = [str(i) for i in range(len(stack))]
        out.append(scale_maxabs(stack, names, names) if scale else stack)
    return np.stack(out)


def test_smooth_fields_have_unit_variance_and_the_requested_smoothness() -> None:
    f = smooth_fields(np.random.default_rng(0), 400, (30, 5, 5), 3.0, 24.0)
    assert f.shape == (400, 30, 5, 5)
    assert f.var() == pytest.approx(1.0, abs=0.1)
    # neighbours 3 mm apart are almost the same; 60 mm apart nearly independent
    near = np.corrcoef(f[:, 10, 2, 2], f[:, 11, 2, 2])[0, 1]
    far = np.corrcoef(f[:, 5, 2, 2], f[:, 25, 2, 2])[0, 1]
    assert near > 0.9 and abs(far) < 0.15


@pytest.mark.slow
def test_calibration_figures_fall_in_the_published_ranges(tmp_path) -> None:
    # 3 mm (the published figures' grid), 8 networks, 12 subjects with test-retest sessions.
    kw = {"n_subjects": 12, "seed": 3, "n_components": 8, "sessions": 2}
    truth = simulate_dataset(tmp_path / "ds", **kw)
    twin_truth = simulate_dataset(tmp_path / "twin", noise=0.0, **kw)
    s = _stacks(tmp_path / "ds", truth)
    s1, s2, twin = s[0::2], s[1::2], _stacks(tmp_path / "twin", twin_truth)[0::2]
    templates, mask = icn_templates(3.0, 8)
    nets = cal.network_masks(templates)
    r = np.median(cal.subject_template_r(s1[:, :8], templates, mask))
    icc = np.mean([cal.icc(s1[:, c], s2[:, c], nets[c]) for c in range(8)])
    noise = np.mean([cal.noise_share(s1[:, c], twin[:, c], nets[c]) for c in range(8)])
    gm_icc = cal.icc(s1[:, -1], s2[:, -1], s1[:, -1].mean(0) > 0.2)
    assert 0.40 <= r <= 0.80, r  # Joel et al. 2010
    assert 0.25 <= icc <= 0.60, icc  # Zuo et al. 2010, Wisner et al. 2013
    assert 0.40 <= noise <= 0.75, noise
    assert 0.70 <= gm_icc <= 0.92, gm_icc  # Suckling et al. 2012


def test_amplitude_arm_moves_no_scaled_maximum(tmp_path) -> None:
    # Noise-free maps of the default effects (ICN27, ICN45, two GM regions): a patient's
    # volumes keep their maximum, so max-abs scaling does not turn the local effect into a
    # global gain. Seed-matched null data are the same subjects without the effect.
    kw = {"n_subjects": 8, "seed": 4, "noise": 0.0, "effect_variability": 0.3, **GRID9}
    amp = simulate_dataset(tmp_path / "amp", **kw)
    null = simulate_dataset(tmp_path / "null", arm="null", **kw)
    a, b = _stacks(tmp_path / "amp", amp, False), _stacks(tmp_path / "null", null, False)
    patient = np.array([p["diagnosis"] == "SZ" for p in amp["participants"]])
    peak_a = np.abs(a).reshape(*a.shape[:2], -1).max(axis=2)
    peak_b = np.abs(b).reshape(*b.shape[:2], -1).max(axis=2)
    assert np.abs(peak_a / peak_b - 1).max() < 0.02
    # ... while the planted volumes do change (the check can fail)
    changed = np.abs(a - b).reshape(*a.shape[:2], -1).max(axis=2) / peak_b
    strong = np.array([p["effect_scale"] > 0.5 for p in amp["participants"]])
    assert strong.sum() >= 2 and (changed[strong][:, [26, 44, 53]] > 0.02).all()
    assert (changed[~patient] == 0).all()


def test_expected_difference_matches_the_data(tmp_path) -> None:
    # the default effects' places at strengths far above their realistic (d about 0.45) ones:
    # 40 subjects then show the difference clearly enough to compare it with the truth
    strong = {"icn_effects": tuple(replace(e, strength=-0.6) for e in DEFAULT_ICN_EFFECTS),
              "gm_effects": tuple(replace(e, strength=-0.6) for e in DEFAULT_GM_EFFECTS)}
    truth = simulate_dataset(tmp_path / "amp", n_subjects=40, seed=2, **strong, **GRID9)
    exp = nib.load(tmp_path / "amp" / truth["expected_difference"]["file"]).get_fdata()
    exp = np.moveaxis(exp, -1, 0)
    affected = {e["modality"] for e in truth["expected_difference"]["affected"]}
    assert affected == {"ICN27", "ICN45", "GMV"}
    s = _stacks(tmp_path / "amp", truth)
    patient = np.array([p["diagnosis"] == "SZ" for p in truth["participants"]])
    observed = s[~patient].mean(0) - s[patient].mean(0)
    for m in (26, 44, 53):
        region = np.abs(exp[m]) > 0.2 * np.abs(exp[m]).max()
        r = np.corrcoef(observed[m][region], exp[m][region])[0, 1]
        assert observed[m][region].mean() > 0.3 * exp[m][region].mean() > 0, m
        assert r > 0.3, (m, r)


@pytest.mark.slow
def test_fusion_arm_needs_several_modalities(tmp_path) -> None:
    # a 3 SD shift (the default is 2): at 60 subjects the best of 30 single-modality AUCs is
    # inflated by chance, and the larger shift keeps the comparison decisive
    truth = simulate_dataset(tmp_path / "fusion", n_subjects=60, seed=1, arm="fusion",
                             fusion_shift=3.0, **GRID9)
    assert truth["arm"]["name"] == "fusion" and truth["icn_effects"] == []
    exp = np.moveaxis(nib.load(tmp_path / "fusion" / truth["expected_difference"]["file"])
                      .get_fdata(), -1, 0)
    loaded = [truth["expected_difference"]["modalities"].index(e["modality"])
              for e in truth["expected_difference"]["affected"]]
    assert len(loaded) >= 10 and loaded[-1] == 53  # several ICNs and the gray matter
    scores = cal.oracle_scores(_stacks(tmp_path / "fusion", truth), exp)
    sz = np.array([p["diagnosis"] == "SZ" for p in truth["participants"]])
    single = max(roc_auc_score(sz, -scores[:, m]) for m in loaded)
    # every modality's projection weighs the same (z-scored), then summed
    fused = roc_auc_score(sz, -(scores[:, loaded] / scores[:, loaded].std(axis=0)).sum(axis=1))
    assert fused > 0.8 and fused - single > 0.08, (single, fused)


def test_null_arm_has_no_group_difference(tmp_path) -> None:
    truth = simulate_dataset(tmp_path / "null", n_subjects=4, seed=1, arm="null", **GRID9)
    exp = nib.load(tmp_path / "null" / truth["expected_difference"]["file"]).get_fdata()
    assert truth["expected_difference"]["affected"] == [] and not exp.any()
    assert exp.shape == (*icn_grid(9).shape, 54)
