"""Inputs that look right but are wrong (issue 25): rows of docs/reliability.md.

ICN volumes in another order, grey matter in native space or shifted: each stops with exit 65
and one sentence; the real-layout simulated data and the real NeuroMark template pass.
"""

from __future__ import annotations

import json
import logging
import shutil

import nibabel as nib
import numpy as np
import pytest

from conftest import simulate
from test_reliability import (
    cli,
    expect,
    gmv,
    icn,
    make_model,
    nothing_created,
    participants,
    rewrite,
    tsv,
    voxels,
)
from vaefusion.errors import DataError
from vaefusion.inputs import template_checks as tc
from vaefusion.inputs.resample import resample_to_grid
from vaefusion.inputs.template_checks import check_icn_identity
from vaefusion.model.meta_check import MAX_LATENT_DIM, MAX_WIDTH, model_meta_problem
from vaefusion.simulate.config import ARMS
from vaefusion.simulate.grids import icn_grid
from vaefusion.simulate.icn import icn_templates


# --------------------------------------------------------------------------- ICN identity
def test_real_neuromark_template_matches_itself():
    """The real NeuroMark maps, on the 9 mm grid: every volume is its own component."""
    maps, _ = icn_templates(9.0)
    r = tc.icn_correlations(np.moveaxis(np.asarray(maps), 0, -1), icn_grid(9.0).affine)
    assert tc.icn_mismatches(r) == []
    assert (np.argmax(r, axis=1) == np.arange(53)).all()


def test_icn_margin_threshold_both_sides():
    r = np.full((3, 53), 0.1)
    r[np.arange(3), np.arange(3)] = 0.5
    r[1, 7] = 0.5 + tc.ICN_MARGIN - 0.01  # better, but within the margin: accepted
    assert tc.icn_mismatches(r) == []
    r[1, 7] = 0.5 + tc.ICN_MARGIN + 0.01
    assert tc.icn_mismatches(r) == [tc.IcnMismatch(2, 8, 0.5, pytest.approx(0.5 + tc.ICN_MARGIN
                                                                            + 0.01))]


def test_icn_min_r_threshold_both_sides():
    r = np.full((2, 53), -0.5)
    r[0, 0] = tc.ICN_MIN_R + 0.01
    r[1, 1] = tc.ICN_MIN_R + 0.01
    assert tc.icn_mismatches(r) == []
    r[1, 1] = tc.ICN_MIN_R - 0.01
    assert [m.volume for m in tc.icn_mismatches(r)] == [2]


def test_more_volumes_than_neuromark_has():
    with pytest.raises(DataError, match="has 54 ICN volumes but the NeuroMark fMRI 1.0 "
                                       "template has 53 components") as err:
        check_icn_identity(np.zeros((2, 2, 2, 54), np.float32), np.eye(4), "x.nii", "sub-01")
    assert err.value.code == 65


def test_permuted_icn_volumes(writable_copy, tmp_path, caplog):
    path = icn(writable_copy, "02")
    rewrite(path, voxels(path)[..., [1, 0, 2, 3]])
    msg = expect(cli(writable_copy, tmp_path, "participant", "--participant-label", "02"), 65,
                 caplog, f"{path}: sub-02's volume 1 looks like template component 2")
    assert "or their order with --icn-order" in msg


def test_one_displaced_volume_warns_and_two_stop(tiny_bids, caplog):
    img = nib.load(icn(tiny_bids, "02"))
    maps = np.asarray(img.dataobj, np.float32)
    one = maps.copy()
    one[..., 2] = maps[..., 0]  # volume 3 now looks like component 1: one volume only
    with caplog.at_level(logging.WARNING, logger="vaefusion.inputs"):
        check_icn_identity(one, img.affine, "x.nii", "sub-02")
    assert "sub-02's volume 3 looks like template component 1" in caplog.text
    two = one.copy()
    two[..., 3] = maps[..., 1]  # and volume 4 like component 2: a set that is not NeuroMark's
    with pytest.raises(DataError, match="2 of 4 volumes do not match") as err:
        check_icn_identity(two, img.affine, "x.nii", "sub-02")
    assert err.value.code == 65


def test_icn_order_accepts_a_documented_reordering(writable_copy, tmp_path):
    path = icn(writable_copy, "02")
    original = voxels(path)
    rewrite(path, original[..., [1, 0, 2, 3]])
    (tmp_path / "order.txt").write_text("2\n1\n3\n4\n")
    assert cli(writable_copy, tmp_path, "participant", "--participant-label", "02",
               "--icn-order", str(tmp_path / "order.txt")) == 0
    stack = np.load(next((tmp_path / "work" / "cache").glob("sub-02*.npy")))
    expected = original[..., 0] / np.abs(original[..., 0]).max()
    np.testing.assert_allclose(stack[0], expected, atol=2e-3)  # volume 1 is component 1 again


def test_icn_order_must_be_a_permutation(tiny_bids, tmp_path, caplog):
    (tmp_path / "order.txt").write_text("2 1 3")
    expect(cli(tiny_bids, tmp_path, "participant", "--icn-order", str(tmp_path / "order.txt")),
           64, caplog, "--icn-order must list each of the 4 NeuroMark components once (1 to 4)")
    nothing_created(tmp_path)


# --------------------------------------------------------------------------- GMV space
def _scores(ds, sub: str, affine=None) -> tc.GmScores:
    img = nib.load(gmv(ds, sub))
    data = np.asarray(img.dataobj, np.float32).reshape(img.shape[:3])
    grid = nib.load(icn(ds, sub))
    aff = img.affine if affine is None else affine
    return tc.gm_scores(data, aff, resample_to_grid(data, aff, grid.affine, grid.shape[:3]),
                        grid.affine)


def test_simulated_mni_grey_matter_passes(tiny_bids):
    for sub in ("01", "02", "03"):
        s = _scores(tiny_bids, sub)
        assert s.inside >= tc.GM_MIN_INSIDE and s.r >= tc.GM_WARN_R, s


@pytest.mark.parametrize(("inside", "r", "outcome"), [
    (tc.GM_MIN_INSIDE + 0.01, tc.GM_WARN_R + 0.01, "ok"),
    (tc.GM_MIN_INSIDE - 0.01, tc.GM_WARN_R + 0.01, "error"),
    (tc.GM_MIN_INSIDE + 0.01, tc.GM_MIN_R + 0.01, "warn"),
    (tc.GM_MIN_INSIDE + 0.01, tc.GM_MIN_R - 0.01, "error"),
])
def test_gm_thresholds_both_sides(monkeypatch, caplog, inside, r, outcome):
    monkeypatch.setattr(tc, "gm_scores", lambda *a: tc.GmScores(inside, r))
    monkeypatch.setattr(tc, "_warned_spaces", set())
    path = f"sub-01_space-MNI152NLin6Asym_{outcome}.nii.gz"
    with caplog.at_level(logging.WARNING, "vaefusion.inputs"):
        if outcome == "error":
            with pytest.raises(DataError, match="native space or misregistered") as err:
                tc.check_gmv_space(None, None, None, None, path, "sub-01")
            assert err.value.code == 65
        else:
            tc.check_gmv_space(None, None, None, None, path, "sub-01")
            tc.check_gmv_space(None, None, None, None, path, "sub-02")
    warnings = [m for m in caplog.messages if "another MNI template" in m]
    assert len(warnings) == (1 if outcome == "warn" else 0)  # once, not per subject


def test_another_mni_space_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(tc, "gm_scores", lambda *a: tc.GmScores(0.9, 0.9))
    monkeypatch.setattr(tc, "_warned_spaces", set())
    with caplog.at_level(logging.WARNING, "vaefusion.inputs"):
        for sub in ("01", "02"):
            tc.check_gmv_space(None, None, None, None,
                               f"sub-{sub}_space-MNI152NLin2009cAsym_probseg.nii.gz", sub)
    assert sum("another MNI template" in m for m in caplog.messages) == 1


def test_native_space_entity_is_refused():
    with pytest.raises(DataError, match=r"is in space-T1w, not MNI") as err:
        tc.check_gmv_space(None, None, None, None, "sub-01_space-T1w_probseg.nii.gz", "sub-01")
    assert err.value.code == 65


def test_native_space_gmv(writable_copy, tmp_path, caplog):
    """A map whose affine puts the scanner origin at its first voxel (native-like)."""
    path = gmv(writable_copy, "02")
    affine = nib.load(path).affine.copy()
    affine[:3, 3] = 0.0
    assert _scores(writable_copy, "02", affine).inside < tc.GM_MIN_INSIDE
    rewrite(path, voxels(path), affine)
    expect(cli(writable_copy, tmp_path, "participant", "--participant-label", "02"), 65,
           caplog, f"{path}: only 0% of sub-02's grey matter lies inside")


def test_shifted_gmv(writable_copy, tmp_path, caplog):
    """Misregistered by 15 mm (the measured MNI maps correlate 0.86 and more; this < 0.75)."""
    path = gmv(writable_copy, "02")
    affine = nib.load(path).affine.copy()
    affine[0, 3] += 15.0
    assert _scores(writable_copy, "02", affine).r < tc.GM_MIN_R
    rewrite(path, voxels(path), affine)
    expect(cli(writable_copy, tmp_path, "participant", "--participant-label", "02"), 65,
           caplog, "so it is in native space or misregistered")


@pytest.mark.parametrize("arm", ARMS)
def test_no_false_alarm_on_any_simulated_arm(tmp_path, arm):
    """Every arm of the simulator, with 16 ICNs: the ICN and GMV checks pass every subject."""
    shift = ["--shift-icn", "5"] if arm == "shift" else []
    ds = simulate(tmp_path / "ds", "--n-subjects", "3", "--arm", arm, "--seed", "7",
                  "--n-components", "16", *shift)
    for sub in ("01", "02", "03"):
        img = nib.load(icn(ds, sub))
        data = np.asarray(img.dataobj, np.float32)
        check_icn_identity(data, img.affine, str(icn(ds, sub)), f"sub-{sub}")
        s = _scores(ds, sub)
        assert s.inside >= tc.GM_MIN_INSIDE and s.r >= tc.GM_WARN_R, s


# --------------------------------------------------------------------------- diagnosis hygiene
def _near_miss(ds) -> None:
    """Two of the four SZ rows say 'sz', one HC row says 'unknown'."""
    rows = tsv(ds).split("\n")
    sz = [i for i, r in enumerate(rows) if "\tSZ\t" in r]
    hc = [i for i, r in enumerate(rows) if "\tHC\t" in r]
    for i in sz[:2]:
        rows[i] = rows[i].replace("\tSZ\t", "\tsz\t")
    rows[hc[0]] = rows[hc[0]].replace("\tHC\t", "\tunknown\t")
    participants(ds, "\n".join(rows))


def test_diagnosis_near_miss(writable_copy, tmp_path, caplog):
    _near_miss(writable_copy)
    msg = expect(cli(writable_copy, tmp_path, "group"), 65, caplog,
                 "participants.tsv: 2 subjects have 'sz' (did you mean SZ?); correct column "
                 "'diagnosis' or say what the values mean with --diagnosis-map FILE")
    assert '{"sz": "SZ"}' in msg
    nothing_created(tmp_path)


def test_diagnosis_numeric_form(writable_copy, tmp_path, caplog):
    participants(writable_copy, tsv(writable_copy).replace("\tSZ\t", "\t1\t", 3)
                 .replace("\tSZ\t", "\t1.0\t").replace("\tHC\t", "\t0\t"))
    expect(cli(writable_copy, tmp_path, "group", "--positive-label", "1", "--negative-label",
               "0"), 65, caplog, "1 subject has '1.0' (did you mean 1?)")


def test_diagnosis_map_not_json(writable_copy, tmp_path, caplog):
    (tmp_path / "map.json").write_text("{sz: SZ}")
    expect(cli(writable_copy, tmp_path, "group", "--diagnosis-map", str(tmp_path / "map.json")),
           64, caplog, f"--diagnosis-map {tmp_path / 'map.json'} is not valid JSON")
    nothing_created(tmp_path)


def test_diagnosis_map_makes_it_run(writable_copy, tmp_path, caplog):
    """With the map, the two 'sz' subjects are patients; the 'unknown' one is left out of the
    classification and listed, with the reason, in the log and the report."""
    _near_miss(writable_copy)
    (tmp_path / "map.json").write_text('{"sz": "SZ"}')
    with caplog.at_level(logging.INFO):
        code = cli(writable_copy, tmp_path, "group", "--diagnosis-map",
                   str(tmp_path / "map.json"), "--methods", "pca-shared", "--folds", "3",
                   "--latent-dim", "4")
    assert code == 0, caplog.text[-2000:]
    assert "has label 'unknown' (not SZ/HC): embedded, not classified" in caplog.text
    report = (tmp_path / "out" / "group" / "report.html")
    html = report.read_text() if report.is_file() else "".join(
        p.read_text() for p in (tmp_path / "out").rglob("*.html"))
    assert "label unknown is neither SZ nor HC" in html


# --------------------------------------------------------------------------- identifiers
@pytest.fixture
def native_copy(tiny_native, tmp_path):
    """A private copy of the GIFT/SPM-named dataset, and its GIFT mapping TSV."""
    ds = tmp_path / "nds"
    shutil.copytree(tiny_native, ds)
    return ds, ds / "derivatives" / "gift" / "gift_subjects.tsv"


@pytest.mark.parametrize("bad", ["a/b", "../x", "sub-0 2"])
def test_gift_id_not_a_label(native_copy, tmp_path, caplog, bad):
    ds, mapping = native_copy
    mapping.write_text(mapping.read_text().replace("sub-02\t", f"{bad}\t", 1))
    expect(cli(ds, tmp_path), 65, caplog,
           f"{mapping} line 3: participant_id '{bad.removeprefix('sub-')}' is not a BIDS label")


def test_gift_mapping_with_bom_works(native_copy, tmp_path):
    ds, mapping = native_copy
    mapping.write_bytes(b"\xef\xbb\xbf" + mapping.read_bytes())
    assert cli(ds, tmp_path, "participant", "--participant-label", "01") == 0


def test_two_gift_mappings(native_copy, tmp_path, caplog):
    ds, mapping = native_copy
    shutil.copy(mapping, mapping.with_name("old_subjects.tsv"))
    expect(cli(ds, tmp_path), 65, caplog, f"{mapping.parent} holds 2 GIFT subject mappings "
           f"(gift_subjects.tsv and old_subjects.tsv)")


def test_whitespace_rows_are_ignored(writable_copy, tmp_path, caplog):
    """Excel's trailing rows of only tabs are not participants (they were 'listed twice')."""
    participants(writable_copy, tsv(writable_copy).rstrip("\n") + "\n\t\t\t\t\n \t\t\t\t\n")
    with caplog.at_level(logging.WARNING):
        assert cli(writable_copy, tmp_path, "participant", "--participant-label", "01") == 0
    assert "has 2 row(s) of only whitespace (as spreadsheets leave); they are ignored" \
        in caplog.text


def test_labels_giving_the_same_file_names(tiny_bids, tmp_path, caplog):
    expect(cli(tiny_bids, tmp_path, "group", "--positive-label", "-1", "--negative-label", "1"),
           64, caplog, "--positive-label -1 and --negative-label 1 give the same output file "
           "names")
    nothing_created(tmp_path)


# --------------------------------------------------------------------------- model.json
@pytest.mark.parametrize(("change", "fragment"), [
    ({"format": "x"}, "format must be a whole number, not 'x'"),
    ({"format": 99}, "format 99 is newer than this vaefusion reads (format 3); upgrade "
                     "vaefusion."),
    ({"grid": [100000, 100000, 100000]}, "grid must be 3 whole numbers from 1 to 512"),
    ({"grid": [512, 512, 512]}, "grid [512, 512, 512] has 134,217,728 voxels, more than"),
    ({"grid": [9, 11]}, "grid must be 3 whole numbers"),
    ({"latent_dim": -1}, "latent_dim must be a whole number from 1 to 4096, not '-1'"),
    ({"width": "wide"}, "width must be a number above 0"),
    ({"width": float("nan")}, "width must be a number above 0"),
    ({"downsample": 0}, "downsample must be a whole number from 1 to 16"),
    ({"decoder_head": "gelu"}, "decoder_head must be one of leaky, relu"),
    ({"modalities": "ICN01"}, "modalities must be a list of modality names"),
    ({"latent_dim": None}, "latent_dim must be a whole number"),
    ([], "it holds a JSON list, not an object"),
])
def test_model_json_fields_are_checked(tiny_bids, tmp_path, caplog, change, fragment):
    model = make_model(tmp_path / "model")
    meta = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps({**meta, **change} if change else change))
    msg = expect(cli(tiny_bids, tmp_path, "participant", "--model", str(model)), 65, caplog,
                 f"{model / 'model.json'} cannot be used: {fragment}")
    assert msg.endswith(".")
    nothing_created(tmp_path)


def test_model_json_ranges_both_sides():
    base = {"grid": [9, 11, 9], "latent_dim": 4, "width": 0.125, "format": 3}
    assert model_meta_problem(base) is None
    for key, ok, bad in (("latent_dim", MAX_LATENT_DIM, MAX_LATENT_DIM + 1),
                         ("width", MAX_WIDTH, MAX_WIDTH + 0.5),
                         ("grid", [256, 256, 256], [256, 256, 257])):
        assert model_meta_problem({**base, key: ok}) is None
        assert key in model_meta_problem({**base, key: bad})[0]
    assert model_meta_problem({**base, "latent_dim": True}) is not None  # a bool is no number
