"""The derivatives writers, directly: names, atomic writes, the latents schema, group outputs.

Everything here runs on hand-made typed results and a small fake training cache: no training.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from vaefusion.config import Config
from vaefusion.derivatives.group import write_group_outputs, write_model_embedding
from vaefusion.derivatives.subject import LatentsSource, SubjectLatents, write_subject_stack
from vaefusion.disk import io as dio
from vaefusion.disk import naming
from vaefusion.evaluation.manifest import Manifest
from vaefusion.evaluation.results import FoldResult, VAETraining
from vaefusion.inputs.cache import SubjectMeta, write_subject

MODALITIES = ["ICN01", "ICN02", "GMV"]
DIM = 2


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _header(path: Path) -> list[str]:
    return path.read_text().splitlines()[0].split("\t")


# ------------------------------------------------------------------------------ naming
def test_bids_names_follow_entity_order_and_omit_missing_entities(tmp_path):
    assert naming.bids_name("01", None, "latents", ".tsv", desc="vae") == \
        "sub-01_desc-vae_latents.tsv"
    assert naming.bids_name("01", "2", "stack", ".nii.gz", desc="preproc") == \
        "sub-01_ses-2_desc-preproc_stack.nii.gz"
    assert naming.bids_name("01", None, "probseg", ".nii.gz", desc="x", label="GM") == \
        "sub-01_label-GM_desc-x_probseg.nii.gz"
    assert naming.subject_key("01", "2") == "sub-01_ses-2"
    assert naming.subject_latents(tmp_path, "01", "2") == \
        tmp_path / "sub-01" / "ses-2" / "sub-01_ses-2_desc-vae_latents.tsv"
    assert naming.preproc_stack(tmp_path, "01", None) == \
        tmp_path / "sub-01" / "sub-01_desc-preproc_stack.nii.gz"
    assert naming.cache_file(tmp_path, "01", "2") == tmp_path / "sub-01_ses-2.npy"
    with pytest.raises(ValueError, match="unknown BIDS entities"):
        naming.bids_name("01", None, "x", ".tsv", acq="a")


def test_sidecars_and_group_names(tmp_path):
    nii = naming.preproc_stack(tmp_path, "01", None)
    assert naming.sidecar(nii).name == "sub-01_desc-preproc_stack.json"
    assert naming.sidecar(tmp_path / "a_latents.tsv").name == "a_latents.json"
    with pytest.raises(ValueError):
        naming.sidecar(tmp_path / "a.txt")
    assert naming.unit_name("vae", 8, 0, 1, 2) == "vae_L8_seed0_rep1_fold2"
    assert naming.unit_name("pca-late", 8, 0, 1) == "pca-late_L8_seed0_rep1"
    assert naming.model_dir(Path("group"), "vae", 8, 0, 0, 2).as_posix() == \
        "group/models/vae_L8_seed0_rep0_fold2"
    assert naming.latents_table(8, 1, 0) == "latents_vae_L8_seed1_rep0.tsv"
    assert naming.config_file(tmp_path, "group") == tmp_path / "logs" / "config-group.toml"
    run = naming.new_run_id()
    assert naming.config_file(tmp_path, "group", run).name == f"config-group-{run}.toml"
    assert naming.status_file(tmp_path, run).name == f"status-{run}.json"
    assert naming.crash_dir(tmp_path, run).name == f"crash-{run}"
    assert naming.run_id_of(naming.status_file(tmp_path, run)) == run
    assert naming.run_id_of(naming.config_file(tmp_path, "group", run)) == run
    assert run != naming.new_run_id()



def test_the_gm_probseg_takes_the_grid_entities_of_the_icn_input(tmp_path):
    icn = "sub-01_task-rest_space-MNI152NLin6Asym_res-3_desc-neuromark_components.nii.gz"
    assert naming.input_entities(icn) == {"space": "MNI152NLin6Asym", "res": "3"}
    assert naming.preproc_gm(tmp_path, "01", "2", icn) == (
        tmp_path / "sub-01" / "ses-2" / "anat"
        / "sub-01_ses-2_space-MNI152NLin6Asym_res-3_label-GM_desc-preproc_probseg.nii.gz")
    # GIFT's own names have no entities: the name leaves them out (and still validates)
    gift = "/d/gift/neuromark_sub001_component_ica_s1_.nii"
    assert naming.input_entities(gift) == {}
    assert naming.preproc_gm(tmp_path, "01", None, gift) == (
        tmp_path / "sub-01" / "anat" / "sub-01_label-GM_desc-preproc_probseg.nii.gz")


def test_sources_are_bids_uris_through_the_innermost_dataset_link(tmp_path):
    raw = tmp_path / "ds"
    links = {"raw": str(raw), "nm": str(raw / "derivatives" / "neuromark")}
    assert naming.bids_uri(raw / "derivatives" / "spm" / "a.nii", links) == \
        "bids:raw:derivatives/spm/a.nii"
    assert naming.bids_uri(raw / "derivatives" / "neuromark" / "sub-01" / "b.nii", links) == \
        "bids:nm:sub-01/b.nii"
    elsewhere = tmp_path / "other" / "c.nii"
    assert naming.bids_uri(elsewhere, links) == elsewhere.as_uri()
    # a DataLad-style symlink names the file in the dataset, not the annexed object
    (raw / ".git").mkdir(parents=True)
    (raw / ".git" / "obj").write_text("x")
    (raw / "d.nii").symlink_to(raw / ".git" / "obj")
    assert naming.bids_uri(raw / "d.nii", links) == "bids:raw:d.nii"



def test_dataset_links_name_the_input_datasets(tmp_path):
    from vaefusion.derivatives.dataset import dataset_description, dataset_links

    cfg = Config(bids_dir=tmp_path / "ds", derivatives={"nm": str(tmp_path / "nm")})
    assert dataset_links(cfg) == {"raw": str(tmp_path / "ds"), "nm": str(tmp_path / "nm")}
    assert dataset_description(cfg)["DatasetLinks"] == {
        "raw": (tmp_path / "ds").as_uri(), "nm": (tmp_path / "nm").as_uri()}

def test_every_bidsignore_pattern_says_why():
    from vaefusion.derivatives.dataset import BIDSIGNORE

    lines = BIDSIGNORE.splitlines()
    patterns = [i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")]
    assert patterns
    for i in patterns:  # the line above each pattern is its own comment
        assert i > 0 and lines[i - 1].startswith("#"), f"no comment above {lines[i]!r}"
        assert lines[i - 1].lstrip("# ").strip(), lines[i]
    # what BIDS can name is never ignored: the GM probseg, its sidecar, descriptions.tsv
    ignored = {lines[i] for i in patterns}
    assert not any(p in ignored for p in ("*", "sub-*", "/sub-*", "*.nii.gz", "*.json",
                                          "*_probseg.*", "descriptions.tsv"))
    # and README's table ("What the validator checks and what it skips") lists each one
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert [p for p in ignored if f"| `{p}` |" not in readme] == []


def test_gm_probseg_is_the_stacks_gmv_with_a_complete_sidecar(tmp_path):
    from vaefusion.derivatives.subject import write_preproc_gm

    rng = np.random.default_rng(0)
    gmv = rng.random((4, 5, 3)).astype(np.float32)
    gmv /= gmv.max()  # as scale_maxabs leaves a non-negative volume
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    root = tmp_path / "ds" / "derivatives"
    icn = root / "neuromark" / "sub-01_task-rest_space-MNI152NLin6Asym_res-3_components.nii.gz"
    gm = root / "spm" / "sub-01_space-MNI152NLin6Asym_label-GM_probseg.nii.gz"
    nii = write_preproc_gm(tmp_path / "out", "01", None, gmv, affine, str(icn), str(gm),
                           {"raw": str(tmp_path / "ds")})
    assert nii == naming.preproc_gm(tmp_path / "out", "01", None, str(icn))
    img = nib.load(nii)
    assert img.shape == gmv.shape and np.allclose(img.affine, affine)
    assert img.header.get_xyzt_units()[0] == "mm"
    assert np.abs(img.get_fdata() - gmv).max() < 1e-4  # one int16 step
    side = json.loads(naming.sidecar(nii).read_text())
    assert side["Resolution"] == {"3": "3 mm isotropic: the grid of the NeuroMark ICN input "
                                       "(SpatialReference)"}
    assert side["Sources"] == [f"bids:raw:derivatives/spm/{gm.name}",
                               f"bids:raw:derivatives/neuromark/{icn.name}"]
    assert side["SpatialReference"] == side["Sources"][1]
    assert "maximum absolute value" in side["Description"]

# ------------------------------------------------------------------------- atomic writes
def _fail_on_replace(monkeypatch):
    """Every writer ends with os.replace; failing there must leave the old file alone."""
    def boom(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(dio.os, "replace", boom)


@pytest.mark.parametrize(("name", "writer"), [
    ("x.tsv", lambda p: dio.write_tsv(p, [{"a": 1.5, "b": None}], ["a", "b"])),
    ("x.json", lambda p: dio.write_json(p, {"a": [1, 2]})),
    ("x.npy", lambda p: dio.atomic_save_npy(p, np.arange(4))),
    ("x.nii.gz", lambda p: dio.write_nifti_atomic(
        p, nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)))),
], ids=["tsv", "json", "npy", "nifti"])
def test_failed_write_leaves_old_file_and_no_partial_file(tmp_path, monkeypatch, name, writer):
    path = tmp_path / name
    writer(path)  # the writer works...
    assert path.stat().st_size > 3
    path.write_bytes(b"old")
    _fail_on_replace(monkeypatch)  # ...and when its last step fails, nothing changes
    with pytest.raises(OSError, match="No space"):
        writer(path)
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert path.read_bytes() == b"old"


def test_nifti_write_that_dies_midway_leaves_nothing(tmp_path, monkeypatch):
    def half_save(img, path):
        Path(path).write_bytes(b"\x1f\x8b partial")
        raise MemoryError("killed while compressing")
    monkeypatch.setattr(dio.nib, "save", half_save)
    with pytest.raises(MemoryError):
        write_subject_stack(tmp_path, "01", None, np.zeros((3, 2, 2, 2)), np.eye(4),
                            MODALITIES, ["a.nii.gz"])
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_json_a_value_cannot_hold_never_touches_the_file(tmp_path):
    path = dio.write_json(tmp_path / "s.json", {"ok": 1})
    with pytest.raises(TypeError):
        dio.write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_tsv_cells_follow_bids():
    text = dio.tsv_text([{"a": math.nan, "b": 1 / 3}, {"a": None}], ["a", "b"])
    assert text == "a\tb\nn/a\t0.333333\nn/a\tn/a\n"


# ----------------------------------------------------------------- a fake group run
SUBJECTS = [("01", None, "SZ"), ("02", None, "HC"), ("03", None, "SZ"), ("04", None, "HC"),
            ("05", None, "SZ"), ("06", None, "HC"), ("07", "2", None)]


def _latents(fold: int, index: int) -> np.ndarray:
    """Distinct values per fold and subject, so that a test sees which model embedded whom."""
    return (fold * 100 + index * 10 + np.arange(len(MODALITIES) * DIM)).reshape(
        len(MODALITIES), DIM).astype(np.float32)


@pytest.fixture
def fake_run(tmp_path):
    """A manifest of 7 cached subjects (sub-07 unlabeled, with a session) and the typed results
    of a 2-fold VAE and two baselines (one not available)."""
    cache = tmp_path / "cache"
    files = [write_subject(cache, np.zeros((3, 2, 2, 2), np.float32), SubjectMeta(
        subject=s, session=ses, modalities=MODALITIES, affine=np.eye(4).tolist(),
        shape=[2, 2, 2], label=lab)) for s, ses, lab in SUBJECTS]
    keys = [naming.subject_key(s, ses) for s, ses, _ in SUBJECTS]
    labels = [{"SZ": 1, "HC": 0, None: -1}[lab] for _, _, lab in SUBJECTS]
    manifest = Manifest(files=[str(f) for f in files], keys=keys, labels=labels,
                        modalities=MODALITIES)
    tested = {0: [0, 1, 2], 1: [3, 4, 5]}
    results = []
    for fold, idx in tested.items():
        unit = tmp_path / "units" / f"fold{fold}"
        (unit / "model").mkdir(parents=True)
        (unit / "model" / "model.json").write_text(json.dumps({"fold": fold}))
        np.savez(unit / "latents.npz", **{k: _latents(fold, i) for i, k in enumerate(keys)})
        training = VAETraining(best_epoch=1, epochs_run=2, best_val_loss=1.0,
                               stopped_early=False, device="cpu",
                               model_dir=str(unit / "model"),
                               latents=str(unit / "latents.npz"),
                               history=[{"epoch": e, "train_loss": 2.0 - e} for e in (1, 2)])
        results.append(FoldResult(
            method="vae", latent_dim=DIM, seed=0, fold=fold, roc_auc=[0.75, 0.5][fold],
            n_train=3, n_test=3, backend="sklearn", test_subjects=[keys[i] for i in idx],
            test_labels=[labels[i] for i in idx], decision=[0.1, -0.2, 0.3],
            importance=[0.5, 0.3, 0.2] if fold == 0 else [0.3, 0.3, 0.4], training=training))
        results.append(FoldResult(
            method="pca-early", latent_dim=DIM, seed=0, fold=fold, roc_auc=1.0, n_train=3,
            n_test=3, backend="sklearn", test_subjects=[keys[i] for i in idx],
            test_labels=[labels[i] for i in idx], decision=[1.0, -1.0, 1.0]))
        results.append(FoldResult(
            method="pca-late", latent_dim=DIM, seed=0, fold=fold, roc_auc=math.nan,
            n_train=3, n_test=3, backend="sklearn", available=False, reason="too few",
            test_subjects=[keys[i] for i in idx], test_labels=[labels[i] for i in idx]))
    cfg = Config(output_dir=tmp_path / "out", latent_dims=[DIM], seeds=[0], folds=2)
    return cfg, manifest, results


def test_group_outputs_are_written_from_typed_results(fake_run):
    cfg, manifest, results = fake_run
    summary = write_group_outputs(cfg, manifest, results[::-1]).to_dict()  # order must not matter
    group = cfg.output_dir / "group"

    vae = summary["methods"]["vae"]
    assert vae["roc_auc_mean"] == pytest.approx(0.625) and vae["roc_auc_std"] == 0.125
    late = summary["methods"]["pca-late"]
    assert late["available"] is False and late["roc_auc_mean"] is None
    assert late["reason"] == "too few" and late["roc_auc_ci"] is None
    assert summary["n_subjects"] == 7 and summary["n_classified"] == 6
    assert summary["device"] == ["cpu"] and summary["classifier_backend"] == "sklearn"
    assert [i["modality"] for i in summary["importance"]] == ["ICN01", "GMV", "ICN02"]
    assert json.loads((group / "summary.json").read_text()) == summary

    metrics = _rows(group / "metrics.tsv")
    assert [(r["method"], r["fold"]) for r in metrics] == [
        ("pca-early", "0"), ("pca-early", "1"), ("pca-late", "0"), ("pca-late", "1"),
        ("vae", "0"), ("vae", "1")]
    assert metrics[2]["roc_auc"] == "n/a" and metrics[2]["available"] == "False"
    scores = _rows(group / "decision_scores.tsv")
    assert {r["method"] for r in scores} == {"vae", "pca-early"}  # not-available: no scores
    assert len(scores) == 12
    assert len(_rows(group / "importance.tsv")) == 2 * 3
    history = _rows(group / "training_history.tsv")
    assert [(r["fold"], r["epoch"]) for r in history] == [("0", "1"), ("0", "2"), ("1", "1"),
                                                          ("1", "2")]
    assert sorted(p.name for p in (group / "models").iterdir()) == [
        "vae_L2_seed0_rep0_fold0", "vae_L2_seed0_rep0_fold1"]
    assert json.loads((group / "models" / "vae_L2_seed0_rep0_fold1" / "model.json").read_text()) \
        == {"fold": 1}


def test_subject_latents_come_from_the_fold_that_tested_them(fake_run):
    cfg, manifest, results = fake_run
    write_group_outputs(cfg, manifest, results)
    out = cfg.output_dir
    sub04 = out / "sub-04" / "sub-04_desc-vae_latents.tsv"
    rows = _rows(sub04)
    assert [r["modality"] for r in rows] == MODALITIES and rows[-1]["domain"] == "GM"
    assert float(rows[0]["z000"]) == _latents(1, 3)[0, 0]  # fold 1 tested sub-04
    side = json.loads(naming.sidecar(sub04).read_text())
    assert side == {"LatentDim": 2, "Seed": 0, "Fold": 1,
                    "Model": "group/models/vae_L2_seed0_rep0_fold1", "OutOfFold": True}
    # the unlabeled subject was tested by no fold: fold 0's model, not out of fold
    sub07 = out / "sub-07" / "ses-2" / "sub-07_ses-2_desc-vae_latents.tsv"
    assert float(_rows(sub07)[0]["z000"]) == _latents(0, 6)[0, 0]
    assert json.loads(naming.sidecar(sub07).read_text())["OutOfFold"] is False
    table = _rows(out / "group" / "latents_vae_L2_seed0_rep0.tsv")
    assert len(table) == 7 * 3
    assert table[-1]["participant_id"] == "sub-07" and table[-1]["session_id"] == "ses-2"
    assert table[0]["session_id"] == "n/a" and table[0]["fold"] == "0"


def test_latents_schema_is_the_same_for_cross_validation_and_model(fake_run, tmp_path):
    cfg, manifest, results = fake_run
    write_group_outputs(cfg, manifest, results)
    source = LatentsSource(latent_dim=DIM, model="/models/m", seed=0, fold=1)
    items = [SubjectLatents(s, ses, MODALITIES, _latents(0, i), source)
             for i, (s, ses, _) in enumerate(SUBJECTS)]
    embed_out = tmp_path / "embed"
    write_model_embedding(embed_out, items, Path("/models/m"), group=True)

    for s, ses, _ in SUBJECTS:
        cv = naming.subject_latents(cfg.output_dir, s, ses)
        model = naming.subject_latents(embed_out, s, ses)
        assert _header(cv) == _header(model) == ["modality", "domain", "z000", "z001"]
        cv_side = json.loads(naming.sidecar(cv).read_text())
        model_side = json.loads(naming.sidecar(model).read_text())
        assert list(cv_side) == list(model_side)
    assert model_side["OutOfFold"] is None and model_side["Model"] == "/models/m"
    assert _header(cfg.output_dir / "group" / "latents_vae_L2_seed0_rep0.tsv") == \
        _header(embed_out / "group" / "latents_model.tsv") == \
        ["participant_id", "session_id", "fold", "modality", "domain", "z000", "z001"]
    summary = json.loads((embed_out / "group" / "summary.json").read_text())
    assert summary["model"] == "/models/m" and summary["latent_dim"] == DIM
    assert summary["n_subjects"] == 7


def test_latents_of_the_wrong_shape_are_refused():
    source = LatentsSource(latent_dim=3, model="m")
    with pytest.raises(ValueError, match="latent dim 3"):
        SubjectLatents("01", None, MODALITIES, np.zeros((3, 2)), source)
