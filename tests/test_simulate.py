"""The simulator: valid BIDS, deterministic, documented grids and names, recoverable effects."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage, stats

from vaefusion.cli.simulate import main
from vaefusion.inputs import reference
from vaefusion.simulate import GmEffect, IcnEffect, gm_grid, icn_grid, res_label, simulate_dataset

TINY = ["--icn-res", "9", "--gm-res", "6", "--n-components", "4"]
ICN_NAME = "task-rest_space-MNI152NLin6Asym_res-{res}_desc-neuromark_components.nii.gz"
GM_NAME = "space-MNI152NLin6Asym_label-GM_desc-smwc1_probseg.nii.gz"


def _validator() -> str:
    exe = shutil.which("bids-validator-deno")
    if exe is None:
        candidate = Path(sys.executable).with_name("bids-validator-deno")
        exe = str(candidate) if candidate.exists() else None
    if exe is None:
        pytest.skip("bids-validator-deno is not installed (pip install bids-validator-deno)")
    return exe


def _validation_errors(path: Path) -> list[str]:
    proc = subprocess.run([_validator(), "--format", "json", str(path)],
                          capture_output=True, text=True, timeout=120)
    report = json.loads(proc.stdout)
    return [f"{i['code']} {i.get('location', '')}" for i in report["issues"]["issues"]
            if i["severity"] == "error"]


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny dataset with two sessions and both naming schemes, written through the CLI."""
    out = tmp_path_factory.mktemp("sim") / "both"
    rc = main([str(out), "--n-subjects", "6", "--seed", "3", "--sessions", "2",
               "--naming", "both", "--icn-effect", "2:-0.5:12",
               "--gm-effect", "-38,12,0:15:-0.3", "-q", *TINY])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def effects(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """32 subjects on the tiny grids with one strong ICN and one strong GM effect."""
    out = tmp_path_factory.mktemp("sim") / "effects"
    truth = simulate_dataset(out, n_subjects=32, seed=0, icn_res=9, gm_res=6, n_components=4,
                             icn_effects=(IcnEffect(3, -0.9, 12.0),),
                             gm_effects=(GmEffect((-38.0, 12.0, 0.0), 15.0, -0.3),))
    return out, truth


def test_dataset_is_valid_bids(both: Path) -> None:
    # The validator skips derivatives/ by default; each derivative dataset is also checked on
    # its own, where its .bidsignore applies (bids-validator 3.0.2's --recursive ignores them).
    assert _validation_errors(both) == []
    for name in ("neuromark", "spm", "gift", "cat12"):
        assert _validation_errors(both / "derivatives" / name) == [], name


def test_raw_metadata(both: Path) -> None:
    desc = json.loads((both / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "raw" and desc["BIDSVersion"] and desc["License"]
    with open(both / "participants.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert list(rows[0]) == ["participant_id", "diagnosis", "age", "sex", "site"]
    assert [r["participant_id"] for r in rows] == [f"sub-0{i}" for i in range(1, 7)]
    assert sorted(r["diagnosis"] for r in rows) == ["HC"] * 3 + ["SZ"] * 3
    described = json.loads((both / "participants.json").read_text())
    assert set(described) == set(rows[0])
    for name in ("neuromark", "spm", "gift", "cat12"):
        d = json.loads((both / "derivatives" / name / "dataset_description.json").read_text())
        assert d["DatasetType"] == "derivative" and d["GeneratedBy"] and d["SourceDatasets"]
    assert (both / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_T1w.nii.gz").is_file()


def test_both_naming_schemes(both: Path) -> None:
    d = both / "derivatives"
    bids_icn = d / "neuromark/sub-02/ses-2/func" / f"sub-02_ses-2_{ICN_NAME.format(res='9')}"
    gift_icn = d / "gift" / "neuromark_sub002_component_ica_s2_.nii"
    bids_gm = d / "spm/sub-02/ses-2/anat" / f"sub-02_ses-2_{GM_NAME}"
    native_gm = d / "cat12/sub-02/ses-2/anat/smwc1sub-02_ses-2_T1w.nii"
    for p in (bids_icn, gift_icn, bids_gm, native_gm):
        assert p.is_file(), p
    np.testing.assert_array_equal(nib.load(bids_icn).get_fdata(), nib.load(gift_icn).get_fdata())
    np.testing.assert_array_equal(nib.load(bids_gm).get_fdata(), nib.load(native_gm).get_fdata())
    with open(d / "gift" / "gift_subjects.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert {"gift_index", "participant_id", "session_id"} <= set(rows[0])
    assert {"gift_index": "2", "participant_id": "sub-02", "session_id": "ses-2",
            "gift_session": "2"} in rows
    assert len(rows) == 12 and len(list((d / "gift").glob("*_component_ica_*.nii"))) == 12


def test_grids_shapes_and_values(both: Path) -> None:
    truth = json.loads((both / "code" / "simulation.json").read_text())
    igrid, ggrid = icn_grid(9), gm_grid(6)
    assert igrid.shape == (18, 21, 18) and ggrid.shape == (31, 37, 31)
    assert truth["icn_grid"]["shape"] == list(igrid.shape)
    for rec in truth["files"]:
        icn = nib.load(both / rec["icn"])
        gm = nib.load(both / rec["gm"])
        assert icn.shape == (*igrid.shape, 4) and icn.get_data_dtype() == np.float32
        assert gm.shape == ggrid.shape and gm.get_data_dtype() == np.float32
        np.testing.assert_allclose(icn.affine, igrid.affine)
        np.testing.assert_allclose(gm.affine, ggrid.affine)
        data = icn.get_fdata()
        assert np.isfinite(data).all()
        assert (np.abs(data).reshape(-1, 4).max(axis=0) > 0).all()  # no empty volume
        g = gm.get_fdata()
        assert np.isfinite(g).all() and g.min() >= 0 and g.max() > 0
    assert not np.allclose(igrid.affine, ggrid.affine)  # GMV is on a different grid


def test_default_icn_grid_is_neuromarks(tmp_path: Path) -> None:
    assert icn_grid(3).shape == reference.GRID_SHAPE
    np.testing.assert_allclose(icn_grid(3).affine, reference.GRID_AFFINE)
    assert gm_grid(1.5).shape == (121, 145, 121)
    assert res_label(3) == "3" and res_label(4.5) == "4p5"
    truth = simulate_dataset(tmp_path / "d", n_subjects=2, n_components=2, gm_res=3)
    img = nib.load(tmp_path / "d" / truth["files"][0]["icn"])
    assert truth["files"][0]["icn"].endswith(f"sub-01_{ICN_NAME.format(res='3')}")
    assert img.shape == (*reference.GRID_SHAPE, 2)
    np.testing.assert_allclose(img.affine, reference.GRID_AFFINE)
    gm = nib.load(tmp_path / "d" / truth["files"][0]["gm"])
    assert gm.shape != reference.GRID_SHAPE


def test_same_seed_same_files(tmp_path: Path) -> None:
    args = ["--n-subjects", "4", "--naming", "both", "-q", *TINY]
    assert main([str(tmp_path / "a"), "--seed", "7", *args]) == 0
    assert main([str(tmp_path / "b"), "--seed", "7", *args]) == 0
    assert main([str(tmp_path / "c"), "--seed", "8", *args]) == 0
    a, b, c = (_tree_digest(tmp_path / x) for x in "abc")
    assert a == b
    icn = f"derivatives/neuromark/sub-01/func/sub-01_{ICN_NAME.format(res='9')}"
    assert a[icn] != c[icn]


def _neighbourhood(a: np.ndarray, v: tuple[int, int, int]) -> np.ndarray:
    return a[tuple(slice(max(0, x - 1), x + 2) for x in v)]


def _maxabs_ttest(vols: np.ndarray, patient: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # As the app does: every volume scaled to [-1, 1] by its own maximum absolute value.
    vols = vols / np.abs(vols).reshape(len(vols), -1).max(axis=1)[:, None, None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        t, p = stats.ttest_ind(vols[~patient], vols[patient], axis=0)
    return t, p


def test_planted_icn_effect_is_recovered(effects: tuple[Path, dict]) -> None:
    out, truth = effects
    patient = np.array([p["diagnosis"] == "SZ" for p in truth["participants"]])
    (effect,) = truth["icn_effects"]
    assert effect["index"] == 3 and effect["network_peak_mm"] == list(reference.icns()[2].peak_mm)
    # away from the network's peak, so max-abs scaling keeps the effect local
    assert np.linalg.norm(np.subtract(effect["center_mm"], effect["network_peak_mm"])) > 12
    vols = np.stack([nib.load(out / f["icn"]).get_fdata(dtype=np.float32)[..., 2]
                     for f in truth["files"]])
    t, p = _maxabs_ttest(vols, patient)
    peak = tuple(effect["center_voxel"])
    control = icn_grid(9).voxel((40.0, -70.0, 30.0))  # far from the putamen network
    assert np.nanmin(_neighbourhood(p, peak)) < 1e-3
    assert np.nanmax(_neighbourhood(t, peak)) > 0  # HC > SZ: a decrease in patients
    assert p[control] > 1e-3


def test_planted_gm_effect_is_recovered(effects: tuple[Path, dict]) -> None:
    out, truth = effects
    patient = np.array([p["diagnosis"] == "SZ" for p in truth["participants"]])
    (effect,) = truth["gm_effects"]
    vols = np.stack([nib.load(out / f["gm"]).get_fdata(dtype=np.float32)
                     for f in truth["files"]])
    t, p = _maxabs_ttest(vols, patient)
    center = tuple(effect["center_voxel"])
    control = gm_grid(6).voxel((38.0, 12.0, 0.0))  # the mirror image, no effect planted
    assert np.nanmin(_neighbourhood(p, center)) < 1e-4
    assert np.nanmax(_neighbourhood(t, center)) > 0
    assert p[control] > 1e-3


def test_no_effects_means_no_planted_truth(tmp_path: Path) -> None:
    truth = simulate_dataset(tmp_path / "n", n_subjects=2, effect_size=0, icn_res=9, gm_res=6,
                             n_components=1)
    assert truth["icn_effects"] == [] and truth["gm_effects"] == []
    # The default ICN effects (45, 27) do not fit in one component and are dropped.
    truth = simulate_dataset(tmp_path / "m", n_subjects=2, icn_res=9, gm_res=6, n_components=1)
    assert truth["icn_effects"] == [] and len(truth["gm_effects"]) == 2


@pytest.mark.parametrize("argv", [
    ["--n-subjects", "0"],
    ["--patient-fraction", "1.5"],
    ["--icn-res", "abc"],
    ["--icn-effect", "60:-0.3"],
    ["--icn-effect", "5:-0.3", "--n-components", "3"],
    ["--icn-effect", "2:-1.2", "--n-components", "3"],
    ["--gm-effect", "1,2:3"],
    ["--gm-effect", "200,0,0:5:-0.2"],
    ["--naming", "gift"],
    ["--arm", "wobble"],
    ["--arm", "shift", "--no-effects"],
    ["--arm", "null", "--shift-mm", "3"],
    ["--shift-icn", "2", "--n-components", "3"],
    ["--arm", "shift", "--icn-effect", "2:-0.3", "--n-components", "3"],
    ["--arm", "null", "--effect-size", "2"],
    ["--arm", "shift", "--n-components", "3"],  # the default shifted ICNs (45, 27) do not fit
    ["--arm", "shift", "--shift-icn", "5", "--n-components", "3"],
    ["--arm", "shift", "--shift-icn", "2", "--shift-mm", "0", "--widen", "0",
     "--n-components", "3"],
    ["--arm", "null", "--fusion-shift", "1"],
    ["--arm", "shift", "--shift-icn", "2", "--widen", "-0.7", "--n-components", "3"],
])
def test_bad_option_exits_64(tmp_path: Path, argv: list[str],
                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        rc = main([str(tmp_path / "x"), *argv])
        raise SystemExit(rc)
    assert exc.value.code == 64
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_existing_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("not ours")
    assert main([str(out), "--n-subjects", "2", "-q", *TINY]) == 73
    assert main([str(out), "--n-subjects", "2", "--overwrite", "-q", *TINY]) == 73
    assert (out / "keep.txt").exists()  # never deletes a folder it did not write
    new = tmp_path / "new"
    assert main([str(new), "--n-subjects", "2", "-q", *TINY]) == 0
    assert main([str(new), "--n-subjects", "3", "--overwrite", "-q", *TINY]) == 0
    assert len(json.loads((new / "code" / "simulation.json").read_text())["files"]) == 3
    assert "Traceback" not in capsys.readouterr().err


# Arms. Each is checked against a seed-matched dataset: a subject's anatomy, jitter and noise
# come from its own streams, so the same seed differs only by what the arm plants.
ARM_TINY = {"n_subjects": 6, "seed": 5, "icn_res": 9, "gm_res": 6, "n_components": 4}


def _maps(root: Path, truth: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(nib.load(root / f["icn"]).get_fdata(dtype=np.float32),
             nib.load(root / f["gm"]).get_fdata(dtype=np.float32)) for f in truth["files"]]


def _same(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    return np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_null_arm_plants_nothing(tmp_path: Path) -> None:
    null = simulate_dataset(tmp_path / "null", arm="null", **ARM_TINY)
    assert null["arm"]["name"] == "null"
    assert null["icn_effects"] == [] and null["gm_effects"] == []
    diagnosis = [p["diagnosis"] for p in null["participants"]]
    assert diagnosis.count("SZ") == 3 and all(p["effect_scale"] == 0 for p in null["participants"])
    assert "no planted effect" in (tmp_path / "null" / "README").read_text()
    # The same seed with nobody a patient: in the null arm a subject's maps do not depend on
    # its diagnosis at all, so patients and controls are draws from one distribution.
    controls = simulate_dataset(tmp_path / "hc", arm="null", patient_fraction=0.0, **ARM_TINY)
    assert all(p["diagnosis"] == "HC" for p in controls["participants"])
    base = _maps(tmp_path / "hc", controls)
    assert all(_same(a, b) for a, b in zip(_maps(tmp_path / "null", null), base, strict=True))
    # The comparison can fail: the amplitude arm changes the patients, and only them.
    amp = simulate_dataset(tmp_path / "amp", arm="amplitude",
                           icn_effects=(IcnEffect(3, -0.5, 12.0),), **ARM_TINY)
    assert amp["arm"]["name"] == "amplitude"
    for d, a, b in zip(diagnosis, _maps(tmp_path / "amp", amp), base, strict=True):
        assert _same(a, b) == (d == "HC")


def _center_of_mass(img: nib.Nifti1Image, component: int) -> np.ndarray:
    w = np.clip(img.get_fdata()[..., component], 0.0, None)
    return (img.affine @ np.r_[ndimage.center_of_mass(w), 1.0])[:3]


def test_shift_arm_moves_the_icn_by_the_requested_distance(tmp_path: Path) -> None:
    # Noise off so the centre of mass measures the displacement; every subject's own
    # translation, rotation and spread stay. Effect multiplier fixed at 1: every patient's ICN
    # moves by exactly --shift-mm.
    kw = {**ARM_TINY, "icn_res": 3, "n_components": 3, "noise": 0.0, "effect_variability": 0.0,
          "widen": 0.0}
    shift = simulate_dataset(tmp_path / "shift", arm="shift", shift_icns=(3,), shift_mm=4.0, **kw)
    null = simulate_dataset(tmp_path / "null", arm="null", **kw)
    arm = shift["arm"]
    assert arm["name"] == "shift" and arm["shift_mm"] == 4.0 and arm["shift_direction"] == "random"
    assert [i["index"] for i in arm["icns"]] == [3] and arm["icns"][0]["modality"] == "ICN03"
    assert shift["icn_effects"] == [] and shift["gm_effects"] == []
    moved = []
    for p, fs, fn in zip(shift["participants"], shift["files"], null["files"], strict=True):
        a, b = nib.load(tmp_path / "shift" / fs["icn"]), nib.load(tmp_path / "null" / fn["icn"])
        planted = np.array(p["icn_shift_mm"]["ICN03"])
        # Only ICN03 of patients changes; the other ICNs and the gray matter are untouched.
        np.testing.assert_array_equal(a.get_fdata()[..., :2], b.get_fdata()[..., :2])
        np.testing.assert_array_equal(nib.load(tmp_path / "shift" / fs["gm"]).get_fdata(),
                                      nib.load(tmp_path / "null" / fn["gm"]).get_fdata())
        if p["diagnosis"] == "HC":
            assert planted.tolist() == [0.0, 0.0, 0.0]
            np.testing.assert_array_equal(a.get_fdata(), b.get_fdata())
            continue
        assert np.linalg.norm(planted) == pytest.approx(4.0, abs=1e-3)
        moved_by = _center_of_mass(a, 2) - _center_of_mass(b, 2)
        assert 0.75 * 4.0 < np.linalg.norm(moved_by) < 1.25 * 4.0, (moved_by, planted)
        assert moved_by @ planted / (np.linalg.norm(moved_by) * 4.0) > 0.9, (moved_by, planted)
        moved.append(planted / 4.0)
    assert len(moved) == 3
    # Random directions: each patient's own, not one shared vector.
    assert max(abs(u @ v) for i, u in enumerate(moved) for v in moved[i + 1:]) < 0.99


def _radius_of_gyration(img: nib.Nifti1Image, component: int) -> float:
    w = np.clip(img.get_fdata()[..., component], 0.0, None)
    xyz = np.indices(w.shape).reshape(3, -1).T @ img.affine[:3, :3].T
    center = (xyz * w.reshape(-1, 1)).sum(axis=0) / w.sum()
    return float(np.sqrt((((xyz - center) ** 2).sum(axis=1) * w.ravel()).sum() / w.sum()))


def test_shift_arm_fixed_direction_and_widening(tmp_path: Path) -> None:
    kw = {**ARM_TINY, "noise": 0.0, "effect_variability": 0.0}
    shift = simulate_dataset(tmp_path / "shift", arm="shift", shift_icns=(3, 1), shift_mm=3.0,
                             shift_direction="fixed", widen=0.3, **kw)
    null = simulate_dataset(tmp_path / "null", arm="null", **kw)
    directions = {i["modality"]: np.array(i["direction"]) for i in shift["arm"]["icns"]}
    assert set(directions) == {"ICN01", "ICN03"} and shift["arm"]["widen"] == 0.3
    for p, fs, fn in zip(shift["participants"], shift["files"], null["files"], strict=True):
        if p["diagnosis"] == "HC":
            continue
        for name, direction in directions.items():  # every patient moves along the same one
            np.testing.assert_allclose(p["icn_shift_mm"][name], 3.0 * direction, atol=1e-3)
        a, b = nib.load(tmp_path / "shift" / fs["icn"]), nib.load(tmp_path / "null" / fn["icn"])
        assert _radius_of_gyration(a, 2) > 1.05 * _radius_of_gyration(b, 2)  # widened
        np.testing.assert_array_equal(a.get_fdata()[..., 1], b.get_fdata()[..., 1])  # ICN02


def test_default_arm_and_no_effects_alias(tmp_path: Path) -> None:
    args = ["--n-subjects", "4", "--seed", "2", "-q", *TINY]
    assert main([str(tmp_path / "default"), *args]) == 0
    assert main([str(tmp_path / "amplitude"), "--arm", "amplitude", *args]) == 0
    assert main([str(tmp_path / "no-effects"), "--no-effects", *args]) == 0
    assert main([str(tmp_path / "null"), "--arm", "null", *args]) == 0
    assert _tree_digest(tmp_path / "default") == _tree_digest(tmp_path / "amplitude")
    assert _tree_digest(tmp_path / "no-effects") == _tree_digest(tmp_path / "null")
    truth = json.loads((tmp_path / "default" / "code" / "simulation.json").read_text())
    assert truth["arm"]["name"] == "amplitude" and truth["config"]["arm"] == "amplitude"
    assert len(truth["gm_effects"]) == 2  # today's default local effects
