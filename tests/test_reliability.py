"""The bad-input matrix of docs/reliability.md: every row is a test here that runs the real CLI.

Each test gives one bad input to ``vaefusion.cli.run.main`` in-process and checks the exact
outcome: the exit code (SPEC section 4), the start of the one-sentence message, no traceback,
and, for a mistake in an option, that nothing was created. Most runs stop at the checks or at
discovery; the ones that preprocess use the tiny simulated dataset (8 subjects, 4 components).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from vaefusion.cli.run import main

BASE = ["--n-components", "4", "--skip-bids-validation"]
DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"


# --------------------------------------------------------------------------- helpers
def cli(ds: Path, tmp: Path, level: str = "participant", *extra: str, work: bool = True) -> int:
    argv = [str(ds), str(tmp / "out"), level, *BASE, *extra]
    return main(argv + (["-w", str(tmp / "work")] if work else []))


def error(caplog) -> str:
    """The one error message of a failed run (the last ERROR record before the ending)."""
    errors = [r.getMessage() for r in caplog.records
              if r.levelname == "ERROR" and not getattr(r, "vaefusion_ending", False)]
    assert errors, "no error was logged"
    return errors[-1]


def ending(caplog) -> str:
    """The run's last line, which says how it ended."""
    last = caplog.records[-1]
    assert getattr(last, "vaefusion_ending", False), f"not an ending: {last.getMessage()}"
    return last.getMessage()


def expect(code: int, wanted: int, caplog, fragment: str) -> str:
    """Exit code ``wanted`` with ``fragment`` in one sentence, no traceback anywhere, and a
    last line that says the run failed with that exit code."""
    assert code == wanted, f"exit {code}, expected {wanted}: {caplog.text[-2000:]}"
    msg = error(caplog)
    assert fragment in msg, msg
    assert "\n" not in msg and "Traceback" not in caplog.text and "Please report" not in msg
    assert f"failed (exit {wanted}," in ending(caplog)
    return msg


def nothing_created(tmp: Path) -> None:
    assert not (tmp / "out").exists(), "a refused run created the output dataset"
    assert not (tmp / "work").exists(), "a refused run created the work dir"


def icn(ds: Path, sub: str) -> Path:
    return next(ds.glob(f"derivatives/*/sub-{sub}/func/*_components.nii.gz"))


def gmv(ds: Path, sub: str) -> Path:
    return next(ds.glob(f"derivatives/*/sub-{sub}/anat/*_probseg.nii.gz"))


def voxels(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj).astype(np.float32)


def rewrite(path: Path, data: np.ndarray, affine: np.ndarray | None = None,
            dtype=np.float32) -> None:
    img = nib.load(path)
    nib.save(nib.Nifti1Image(data.astype(dtype), img.affine if affine is None else affine), path)


def participants(ds: Path, text: str | bytes) -> Path:
    path = ds / "participants.tsv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def tsv(ds: Path) -> str:
    return (ds / "participants.tsv").read_text()


def snapshot(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*"))


# --------------------------------------------------------------------------- participants.tsv
def test_participants_missing_group(writable_copy, tmp_path, caplog):
    (writable_copy / "participants.tsv").unlink()
    expect(cli(writable_copy, tmp_path, "group"), 66, caplog,
           "participants.tsv is missing; the group level needs it")
    nothing_created(tmp_path)


def test_participants_missing_participant_level_works(writable_copy, tmp_path, caplog):
    (writable_copy / "participants.tsv").unlink()
    assert cli(writable_copy, tmp_path, "participant", "--participant-label", "01") == 0
    assert "participants.tsv is missing: subjects have no diagnosis label" in caplog.text


def test_participants_empty(writable_copy, tmp_path, caplog):
    participants(writable_copy, "")
    expect(cli(writable_copy, tmp_path), 65, caplog, "participants.tsv is empty")
    nothing_created(tmp_path)


def test_participants_no_participant_id_column(writable_copy, tmp_path, caplog):
    participants(writable_copy, tsv(writable_copy).replace("participant_id", "subject", 1))
    expect(cli(writable_copy, tmp_path), 65, caplog, "has no participant_id column")


def test_no_label_column_group(writable_copy, tmp_path, caplog):
    participants(writable_copy, tsv(writable_copy).replace("diagnosis", "group", 1))
    expect(cli(writable_copy, tmp_path, "group"), 65, caplog,
           "has no 'diagnosis' column, which the group level needs")
    nothing_created(tmp_path)


def test_no_label_column_participant_level_works(writable_copy, tmp_path, caplog):
    participants(writable_copy, tsv(writable_copy).replace("diagnosis", "group", 1))
    assert cli(writable_copy, tmp_path, "participant", "--participant-label", "01", "02") == 0
    assert "has no 'diagnosis' column: subjects have no diagnosis label" in caplog.text
    assert len(list((tmp_path / "out").glob("sub-*/*_desc-preproc_stack.nii.gz"))) == 2


def test_label_column_option_missing(tiny_bids, tmp_path, caplog):
    msg = expect(cli(tiny_bids, tmp_path, "group", "--label-column", "dx"), 65, caplog,
                 "has no 'dx' column, which the group level needs")
    assert "columns: participant_id, diagnosis" in msg


def test_unknown_label_values(writable_copy, tmp_path, caplog):
    participants(writable_copy, tsv(writable_copy).replace("\tSZ\t", "\tpatient\t")
                 .replace("\tHC\t", "\tcontrol\t"))
    msg = expect(cli(writable_copy, tmp_path, "group"), 65, caplog, "gives 0 SZ and 0 HC")
    assert "holds control (4), patient (4)" in msg and "--positive-label" in msg


def test_only_one_class(writable_copy, tmp_path, caplog):
    participants(writable_copy, tsv(writable_copy).replace("\tHC\t", "\tSZ\t"))
    expect(cli(writable_copy, tmp_path, "group"), 65, caplog, "gives 8 SZ and 0 HC")


def test_fewer_per_class_than_folds(tiny_bids, tmp_path, caplog):
    # 4 SZ and 4 HC cannot fill 5 test folds with both classes
    msg = expect(cli(tiny_bids, tmp_path, "group", "--folds", "5"), 65, caplog,
                 "--folds 5 needs at least 5 patients and as many controls")
    assert "lower --folds to 4" in msg
    assert not (tmp_path / "work" / "cache").exists(), "refused only after preprocessing"


def test_too_few_subjects_for_two_folds(tiny_bids, tmp_path, caplog):
    # 3 SZ + 3 HC in 2 folds leave 3 training subjects: 2 validate, 1 trains; 2 is the minimum
    msg = expect(cli(tiny_bids, tmp_path, "group", "--folds", "2", "--participant-label",
                     "01", "02", "03", "04", "05", "07"), 65, caplog,
                 "--folds 2 needs at least 4 patients and as many controls")
    assert "lower --folds" not in msg and "2 folds is the fewest" in msg


def test_min_subjects_per_class_matches_make_folds():
    from vaefusion.errors import DataError
    from vaefusion.evaluation.folds import make_folds, min_subjects_per_class

    for k in range(2, 8):
        m = min_subjects_per_class(k)
        make_folds(np.r_[np.ones(m), np.zeros(m)].astype(int), k, seed=0)
        with pytest.raises(DataError):
            make_folds(np.r_[np.ones(m - 1), np.zeros(m - 1)].astype(int), k, seed=0)


def test_duplicate_participant_ids(writable_copy, tmp_path, caplog):
    participants(writable_copy, tsv(writable_copy) + "sub-03\tSZ\t40\tF\tsite2\n")
    expect(cli(writable_copy, tmp_path), 65, caplog, "lists sub-03 more than once")


def test_participants_not_utf8(writable_copy, tmp_path, caplog):
    participants(writable_copy, tsv(writable_copy).replace("site1", "Zürich").encode("latin-1"))
    expect(cli(writable_copy, tmp_path), 65, caplog, "is not UTF-8 text (byte 0xfc")


def test_participants_bom_works(writable_copy, tmp_path, caplog):
    participants(writable_copy, tsv(writable_copy).encode("utf-8-sig"))
    assert cli(writable_copy, tmp_path, "participant", "--participant-label", "01") == 0
    assert re.search(r"sub-01 +ICN=yes GMV=yes label=SZ", caplog.text)


# --------------------------------------------------------------------------- finding files
@pytest.mark.parametrize("kind", ["icn", "gmv"])
def test_subject_without_file_is_skipped(writable_copy, tmp_path, caplog, kind):
    (icn if kind == "icn" else gmv)(writable_copy, "01").unlink()
    assert cli(writable_copy, tmp_path, "participant", "--participant-label", "01", "02") == 0
    what = "NeuroMark ICN" if kind == "icn" else "gray-matter (GMV)"
    assert f"sub-01 lacks a modality (no {what} file found): skipped" in caplog.text
    assert [p.name for p in (tmp_path / "out").glob("sub-*")] == ["sub-02"]


def test_subject_without_file_missing_modality_error(writable_copy, tmp_path, caplog):
    gmv(writable_copy, "01").unlink()
    expect(cli(writable_copy, tmp_path, "participant", "--missing-modality", "error"), 66,
           caplog, "sub-01 lacks a modality (no gray-matter (GMV) file found)")


def test_duplicate_inputs_in_two_datasets_fix_works(writable_copy, tmp_path, caplog):
    """The message gives a --derivatives argument, and that argument makes the run work."""
    import shutil

    src = writable_copy / "derivatives" / "neuromark"
    shutil.copytree(src, writable_copy / "derivatives" / "neuromark-old")
    msg = expect(cli(writable_copy, tmp_path, "participant", "--participant-label", "01"), 65,
                 caplog, "sub-01 has 2 NeuroMark ICN files in different derivative datasets")
    example = msg.split("e.g. --derivatives ", 1)[1].split()
    assert len(example) == 2 and example[1].startswith("spm=")
    assert example[0] in (f"neuromark={src}", f"neuromark-old={src}-old")
    assert cli(writable_copy, tmp_path / "again", "participant", "--participant-label", "01",
               "--derivatives", *example) == 0


def test_duplicate_inputs_in_one_dataset_fix_works(writable_copy, tmp_path, caplog):
    first = icn(writable_copy, "01")
    (first.parent / first.name.replace("desc-neuromark", "desc-old")).write_bytes(
        first.read_bytes())
    msg = expect(cli(writable_copy, tmp_path, "participant", "--participant-label", "01"), 65,
                 caplog, "sub-01 has 2 NeuroMark ICN files in")
    hint = json.loads(msg.split("holds e.g. ", 1)[1])
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps(hint))
    assert cli(writable_copy, tmp_path / "again", "participant", "--participant-label", "01",
               "--bids-filter-file", str(filt)) == 0


def test_gift_index_twice_without_gift_session(tmp_path, caplog):
    from conftest import simulate

    ds = simulate(tmp_path / "gs", "--n-subjects", "2", "--sessions", "2", "--naming", "native")
    tsv = ds / "derivatives" / "gift" / "gift_subjects.tsv"
    full = tsv.read_text()
    tsv.write_text("".join("\t".join(line.split("\t")[:3]) + "\n"
                           for line in full.splitlines()))
    expect(cli(ds, tmp_path), 65, caplog, "lists gift_index 1 twice; add a gift_session column")
    tsv.write_text(full)  # the fix: each GIFT session mapped to its own BIDS session
    assert cli(ds, tmp_path / "fixed") == 0
    assert len(list((tmp_path / "fixed" / "out").glob("sub-*/ses-*/anat/*_probseg.nii.gz"))) == 4


def test_derivatives_without_description_skipped(writable_copy, tmp_path, caplog):
    fs = writable_copy / "derivatives" / "freesurfer" / "sub-01" / "label"
    fs.mkdir(parents=True)
    (fs / "lh.aparc.annot").write_bytes(b"\0" * 16)
    (writable_copy / "derivatives" / "freesurfer" / "sub-01" / "label" /
     "sub-01_label-GM_probseg.nii.gz").write_bytes(b"")  # pybids would choke on 'label'
    assert cli(writable_copy, tmp_path, "participant", "--participant-label", "01") == 0
    assert "freesurfer has no dataset_description.json: it is not indexed" in caplog.text


def test_derivatives_path_missing(tiny_bids, tmp_path, caplog):
    expect(cli(tiny_bids, tmp_path, "participant", "--derivatives",
               f"nm={tmp_path / 'nothere'}"), 66, caplog, "is not a folder; give an existing path")
    nothing_created(tmp_path)


# --------------------------------------------------------------------------- unreadable files
def lsnapshot(root: Path) -> list[tuple[str, str, int, int]]:
    """Every entry under ``root`` as it is on disk (links not followed, so dangling ones
    count), with its link target, size and mtime: the input must be the same after a run."""
    return sorted((str(p.relative_to(root)), os.readlink(p) if p.is_symlink() else "",
                   p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*"))


def dangle(path: Path) -> Path:
    """Replace ``path`` with a symbolic link to a file that does not exist."""
    path.unlink()
    path.symlink_to(path.parent / "gone" / path.name)
    return path


def to_folder(path: Path) -> Path:
    """Replace the file ``path`` with a folder of the same name."""
    path.unlink()
    path.mkdir()
    (path / "x").write_bytes(b"")
    return path


def no_read(path: Path, monkeypatch) -> Path:
    """Take read permission away (root reads anyway, so the permission check sees it too)."""
    path.chmod(0)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False
                            if Path(p) == path and mode & os.R_OK else real(p, mode, *a, **k))
    return path


@pytest.mark.parametrize("level", ["participant", "group"])
def test_icn_broken_symlink(writable_copy, tmp_path, caplog, level):
    path = dangle(icn(writable_copy, "02"))
    before = lsnapshot(writable_copy)
    folds = ["--folds", "2"] if level == "group" else []
    msg = expect(cli(writable_copy, tmp_path, level, *folds), 66, caplog,
                 f"sub-02's ICN file {path} is a broken symbolic link (its target ")
    assert msg.endswith("; restore the target or point the link at an existing file.")
    assert not list((tmp_path / "out" / "logs").glob("crash-*")), "missing input is no crash"
    assert lsnapshot(writable_copy) == before, "the input changed"


def test_several_broken_symlinks_are_all_logged(writable_copy, tmp_path, caplog):
    paths = [dangle(gmv(writable_copy, sub)) for sub in ("03", "05")]
    msg = expect(cli(writable_copy, tmp_path), 66, caplog, f"sub-03's GMV file {paths[0]}")
    assert "(1 more unreadable input file(s) are listed in the log)" in msg
    assert f"sub-05: GMV file {paths[1]} is a broken symbolic link" in caplog.text


@pytest.mark.parametrize("kind", ["icn", "gmv"])
def test_input_file_is_a_folder(writable_copy, tmp_path, caplog, kind):
    path = to_folder((icn if kind == "icn" else gmv)(writable_copy, "02"))
    before = lsnapshot(writable_copy)
    expect(cli(writable_copy, tmp_path), 66, caplog,
           f"{path} is a folder where a file is expected; put the file itself at this path.")
    assert lsnapshot(writable_copy) == before


def test_input_file_unreadable(writable_copy, tmp_path, caplog, monkeypatch):
    path = no_read(gmv(writable_copy, "04"), monkeypatch)
    expect(cli(writable_copy, tmp_path), 66, caplog,
           f"sub-04's GMV file {path} cannot be read (permission denied); give read "
           f"permission, e.g. chmod a+r {path}.")
    assert path.stat().st_mode & 0o777 == 0, "the input was changed"


def test_input_file_vanishes_before_preprocessing(tmp_path):
    """Discovery checked it, then it went (a network share): still missing input, named."""
    from vaefusion.inputs.preprocess import _load

    with pytest.raises(Exception) as info:
        _load(str(tmp_path / "gone_components.nii.gz"))
    assert info.value.code == 66, info.value
    assert info.value.message.endswith("gone_components.nii.gz does not exist; put the file "
                                       "there.")


def test_unreadable_input_anywhere_is_missing_input(writable_copy, tmp_path, caplog,
                                                    monkeypatch):
    """The net under the checks: an input that fails to open wherever it is read in the main
    process ends with exit 66 and its name, not a crash."""
    import errno

    import vaefusion.inputs.discovery as discovery

    path = icn(writable_copy, "01")

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(discovery, "check_headers", refuse)
    expect(cli(writable_copy, tmp_path), 66, caplog, f"{path} cannot be read")
    assert not list((tmp_path / "out" / "logs").glob("crash-*"))


@pytest.mark.parametrize("how", ["link", "folder", "unreadable"])
def test_participants_unreadable(writable_copy, tmp_path, caplog, monkeypatch, how):
    path = writable_copy / "participants.tsv"
    {"link": dangle, "folder": to_folder,
     "unreadable": lambda p: no_read(p, monkeypatch)}[how](path)
    before = lsnapshot(writable_copy)
    why = {"link": "is a broken symbolic link", "folder": "is a folder where a file is expected",
           "unreadable": "cannot be read (permission denied)"}[how]
    expect(cli(writable_copy, tmp_path, "participant"), 66, caplog, f"{path} {why}")
    nothing_created(tmp_path)  # refused at every level, before anything exists
    assert lsnapshot(writable_copy) == before


@pytest.mark.parametrize("which", ["input", "derivative"])
def test_dataset_description_broken_symlink(writable_copy, tmp_path, caplog, which):
    root = writable_copy if which == "input" else icn(writable_copy, "01").parents[2]
    path = dangle(root / "dataset_description.json")
    expect(cli(writable_copy, tmp_path), 66, caplog, f"{path} is a broken symbolic link")


def test_gift_mapping_broken_symlink(tiny_native, tmp_path, caplog):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(tiny_native, ds)
    path = dangle(next(ds.glob("derivatives/gift/*subjects*.tsv")))
    expect(cli(ds, tmp_path), 66, caplog, f"{path} is a broken symbolic link")


@pytest.mark.parametrize("name", ["model.json", "model.safetensors"])
def test_model_file_broken_symlink(tiny_bids, tmp_path, caplog, name):
    model = make_model(tmp_path / "model")
    path = dangle(model / name)
    expect(cli(tiny_bids, tmp_path, "participant", "--model", str(model)), 66, caplog,
           f"--model {path} is a broken symbolic link")
    nothing_created(tmp_path)


@pytest.mark.parametrize("option", ["--bids-filter-file", "--config-file"])
@pytest.mark.parametrize("how", ["link", "folder"])
def test_option_file_unreadable(tiny_bids, tmp_path, caplog, option, how):
    """An option that names an unusable file is a usage error (64), as a missing one is."""
    path = tmp_path / "opt.json"
    path.write_text("{}")
    (dangle if how == "link" else to_folder)(path)
    why = "is a broken symbolic link" if how == "link" else "is a folder where a file is"
    expect(cli(tiny_bids, tmp_path, "participant", option, str(path)), 64, caplog,
           f"{option} {path} {why}")
    nothing_created(tmp_path)


# --------------------------------------------------------------------------- image contents
@pytest.mark.parametrize("level", ["participant", "group"])
def test_truncated_nifti(writable_copy, tmp_path, caplog, level):
    path = icn(writable_copy, "02")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    folds = ["--folds", "2"] if level == "group" else []  # 4 SZ + 4 HC pass the fold check
    msg = expect(cli(writable_copy, tmp_path, level, *folds), 65, caplog,
                 f"{path} cannot be read (EOFError")
    assert "truncated or corrupt" in msg
    assert not list((tmp_path / "out" / "logs").glob("crash-*")), "a data error is no crash"


def test_truncated_header(writable_copy, tmp_path, caplog):
    path = gmv(writable_copy, "02")
    path.write_bytes(path.read_bytes()[:40])
    expect(cli(writable_copy, tmp_path), 65, caplog, f"{path} cannot be read as NIfTI")


def test_icn_3d(writable_copy, tmp_path, caplog):
    path = icn(writable_copy, "02")
    rewrite(path, voxels(path)[..., 0])
    expect(cli(writable_copy, tmp_path), 65, caplog,
           f"{path} is 3D but NeuroMark ICN maps must be 4D")


def test_gmv_4d(writable_copy, tmp_path, caplog):
    path = gmv(writable_copy, "02")
    data = voxels(path)
    rewrite(path, np.stack([data, data], axis=-1))
    expect(cli(writable_copy, tmp_path), 65, caplog, f"{path} is 4D but a GMV volume must be 3D")


def test_wrong_component_count(tiny_bids, tmp_path, caplog):
    # as 52 NeuroMark volumes where 53 are expected: every file has 4, 5 are asked for
    code = main([str(tiny_bids), str(tmp_path / "out"), "participant", "-w",
                 str(tmp_path / "work"), "--skip-bids-validation", "--n-components", "5"])
    expect(code, 65, caplog, "has 4 components but 5 are expected")


def test_component_counts_differ(writable_copy, tmp_path, caplog):
    path = icn(writable_copy, "05")
    rewrite(path, voxels(path)[..., :3])
    expect(cli(writable_copy, tmp_path), 65, caplog,
           f"{path} has 3 components but 7 other subject(s) have 4")


def test_affines_disagree(writable_copy, tmp_path, caplog):
    path = icn(writable_copy, "02")
    affine = nib.load(path).affine.copy()
    affine[0, 3] += 5
    rewrite(path, voxels(path), affine)
    expect(cli(writable_copy, tmp_path), 65, caplog, "resample all ICN maps to one grid")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_voxels(writable_copy, tmp_path, caplog, value):
    path = icn(writable_copy, "02")
    data = voxels(path)
    data[3, 3, 3, 1] = value
    rewrite(path, data)
    expect(cli(writable_copy, tmp_path), 65, caplog, f"{path} has 1 NaN or Inf voxel(s)")


def test_beyond_float32(writable_copy, tmp_path, caplog):
    path = gmv(writable_copy, "02")
    data = voxels(path).astype(np.float64)
    data[5, 5, 5] = 1e300
    rewrite(path, data, dtype=np.float64)
    expect(cli(writable_copy, tmp_path), 65, caplog, "(or values beyond the float32 range)")


def test_all_zero_volume(writable_copy, tmp_path, caplog):
    path = icn(writable_copy, "02")
    data = voxels(path)
    data[..., 2] = 0
    rewrite(path, data)
    expect(cli(writable_copy, tmp_path), 65, caplog, f"{path}: volume ICN03 is all zero")


def test_extreme_value(writable_copy, tmp_path, caplog):
    path = icn(writable_copy, "02")
    data = voxels(path)
    data[4, 4, 4, 0] = 1e9 * np.abs(data[..., 0]).max()
    rewrite(path, data)
    expect(cli(writable_copy, tmp_path), 65, caplog, f"{path}: volume ICN01 has an extreme value")


def test_int16_with_scl_slope_works(writable_copy, tmp_path):
    """Stored integers times scl_slope plus scl_inter are what gets scaled and stacked."""
    path = icn(writable_copy, "01")
    data = voxels(path)
    inter = float(np.abs(data).max()) / 2  # an offset, so that ignoring it would show
    slope = float(np.abs(data - inter).max()) / 30000  # int16 holds +-32767
    ints = np.round((data - inter) / slope).astype(np.int16)
    img = nib.Nifti1Image(ints, nib.load(path).affine)
    img.header.set_data_dtype(np.int16)
    img.header.set_slope_inter(slope, inter)
    nib.save(img, path)
    assert nib.load(path).get_data_dtype() == np.int16
    assert cli(writable_copy, tmp_path, "participant", "--participant-label", "01") == 0
    stack = nib.load(next((tmp_path / "out").glob("sub-01/*_stack.nii.gz"))).get_fdata()
    real = ints * slope + inter
    expected = real / np.abs(real).max(axis=(0, 1, 2))
    np.testing.assert_allclose(stack[..., :4], expected, atol=2e-3)
    ignored = ints / np.abs(ints).max(axis=(0, 1, 2))  # what ignoring scl_inter would give
    assert np.abs(ignored - expected).max() > 0.05


# --------------------------------------------------------------------------- selection
@pytest.mark.parametrize("option", ["--participant-label", "--session-label"])
def test_label_with_path_characters(tiny_bids, tmp_path, caplog, option):
    expect(cli(tiny_bids, tmp_path, "participant", option, "../x"), 64, caplog,
           f"{option} '../x' is not a BIDS label")
    nothing_created(tmp_path)


@pytest.mark.parametrize("content,fragment", [
    ("{not json", "is not valid JSON"),
    ('{"bold": {"task": "rest"}}', "must be a JSON object with keys among icn, gmv"),
    ('{"icn": {"dsc": "neuromark"}}', '"icn" names unknown BIDS entity dsc'),
    ('{"icn": "neuromark"}', '"icn" must map entity names to values'),
], ids=["not-json", "unknown-key", "unknown-entity", "not-a-mapping"])
def test_bad_bids_filter_file(tiny_bids, tmp_path, caplog, content, fragment):
    filt = tmp_path / "filter.json"
    filt.write_text(content)
    expect(cli(tiny_bids, tmp_path, "participant", "--bids-filter-file", str(filt)), 64,
           caplog, fragment)
    nothing_created(tmp_path)


def test_filter_matches_nothing(tiny_bids, tmp_path, caplog):
    filt = tmp_path / "filter.json"
    filt.write_text('{"icn": {"desc": "nothere"}, "gmv": {"desc": "nothere"}}')
    expect(cli(tiny_bids, tmp_path, "participant", "--bids-filter-file", str(filt)), 18, caplog,
           "No ICN maps or GMV volumes in")


def test_participant_label_matches_nothing(tiny_bids, tmp_path, caplog):
    msg = expect(cli(tiny_bids, tmp_path, "participant", "--participant-label", "99"), 18,
                 caplog, f"--participant-label 99 matches no subject in {tiny_bids}")
    assert msg.endswith("; the existing labels include 01 02 03 04 05.")  # none is close


def test_one_unknown_label_among_known_ones_stops_the_run(tiny_bids, tmp_path, caplog):
    """fMRIPrep and MRIQC stop at a label that names no subject (a typo), suggesting the
    closest labels."""
    msg = expect(cli(tiny_bids, tmp_path, "participant", "--participant-label", "01", "O2",
                     "sub-07x"), 18, caplog, f"--participant-label 07x O2 matches no subject in "
                     f"{tiny_bids} (participants.tsv or the input files); the closest existing "
                     f"label(s): ")
    assert "02" in msg and "07" in msg


def other_pipelines_only(ds: Path) -> Path:
    """derivatives/ holding only a pipeline that is neither NeuroMark nor SPM (ds000117)."""
    import shutil

    for name in ("neuromark", "spm"):
        shutil.rmtree(ds / "derivatives" / name)
    other = ds / "derivatives" / "meg"
    (other / "sub-01" / "meg").mkdir(parents=True)
    (other / "dataset_description.json").write_text(
        '{"Name": "meg", "BIDSVersion": "1.8.0", "DatasetType": "derivative"}')
    return other


def test_no_inputs_without_a_selection_is_missing_input(writable_copy, tmp_path, caplog):
    """No NeuroMark/GMV files and no filter given: missing input (66), as when derivatives/
    is missing; blaming filters that nobody gave would send the user the wrong way."""
    other = other_pipelines_only(writable_copy)
    msg = expect(cli(writable_copy, tmp_path, "participant"), 66, caplog,
                 f"No ICN maps or GMV volumes in {other}; put the NeuroMark ICN maps and GMV "
                 f"volumes in a derivative dataset under {writable_copy / 'derivatives'}")
    assert "--participant-label" not in msg and "--bids-filter-file" not in msg


def test_no_inputs_with_a_selection_blames_the_selection(writable_copy, tmp_path, caplog):
    other_pipelines_only(writable_copy)
    expect(cli(writable_copy, tmp_path, "participant", "--participant-label", "01"), 18,
           caplog, "match the selection; check --participant-label.")


def test_subject_folders_under_derivatives_are_no_datasets(writable_copy, tmp_path, caplog):
    """bids-examples eeg_rest_fmri: derivatives/sub-32 is a subject folder (of derivatives/
    itself), not a derivative dataset: no warning per subject."""
    for sub in ("32", "33"):
        (writable_copy / "derivatives" / f"sub-{sub}" / "eeg").mkdir(parents=True)
        (writable_copy / "derivatives" / f"sub-{sub}" / "eeg" / "x.set").write_bytes(b"")
    assert cli(writable_copy, tmp_path, "participant", "--participant-label", "01") == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert not [w for w in warnings if "sub-32" in w or "sub-33" in w], warnings
    assert len([w for w in warnings if "has no dataset_description.json" in w]) <= 1


def test_failed_run_leaves_only_logs(tiny_bids, tmp_path, caplog):
    """A run that fails before any output leaves logs/ (with the error), not a bare dataset;
    a failed rerun keeps the outputs of an earlier run."""
    out = tmp_path / "out"
    expect(cli(tiny_bids, tmp_path, "participant", "--participant-label", "99"), 18, caplog,
           "--participant-label 99 matches no subject in")
    assert [p.name for p in out.iterdir()] == ["logs"]
    logs = "".join(p.read_text() for p in (out / "logs").glob("*.log"))
    assert "matches no subject" in logs and "failed (exit 18" in logs
    assert cli(tiny_bids, tmp_path, "participant", "--participant-label", "01") == 0
    assert cli(tiny_bids, tmp_path, "participant", "--participant-label", "99") == 18
    assert (out / "dataset_description.json").is_file() and (out / "sub-01").is_dir()


# --------------------------------------------------------------------------- paths and config
def test_invalid_bids(writable_copy, tmp_path, caplog):
    from vaefusion.inputs.validation import find_validator

    if find_validator() is None:
        pytest.skip("bids-validator-deno is not installed")
    t1w = next(writable_copy.glob("sub-*/**/*_T1w.nii*"))
    t1w.write_bytes(b"not a nifti")
    code = main([str(writable_copy), str(tmp_path / "out"), "participant", "-w",
                 str(tmp_path / "work"), "--n-components", "4"])  # validation not skipped
    expect(code, 16, caplog, f"{writable_copy} is not valid BIDS:")
    assert "--skip-bids-validation" in error(caplog)
    assert (tmp_path / "out" / "logs" / "bids_validator.json").exists()


def test_bids_dir_missing(tmp_path, caplog):
    expect(cli(tmp_path / "nothere", tmp_path), 66, caplog, "does not exist; give the dataset")


def test_bids_dir_is_a_file(tmp_path, caplog):
    (tmp_path / "ds.txt").write_text("")
    expect(cli(tmp_path / "ds.txt", tmp_path), 66, caplog, "ds.txt is not a folder")
    nothing_created(tmp_path)


def test_bids_dir_without_description(writable_copy, tmp_path, caplog):
    (writable_copy / "dataset_description.json").unlink()
    expect(cli(writable_copy, tmp_path), 66, caplog, "dataset_description.json is missing")


@pytest.mark.parametrize("which", ["output", "work"])
def test_output_or_work_inside_bids_dir(writable_copy, tmp_path, caplog, which):
    # BIDS_DIR/derivatives/<name> is a valid OUTPUT_DIR (test_output_folders.py); elsewhere
    # inside BIDS_DIR it is not, and a work dir never is
    inside = writable_copy / ("code" if which == "output" else "derivatives") / "vaefusion"
    out, work = (inside, tmp_path / "work") if which == "output" else (tmp_path / "out", inside)
    code = main([str(writable_copy), str(out), "participant", "-w", str(work), *BASE])
    expect(code, 64, caplog, "is inside BIDS_DIR")
    assert not inside.exists() and not (tmp_path / "out").exists()


def test_output_dir_not_writable(tiny_bids, tmp_path, caplog):
    (tmp_path / "file").write_text("")
    code = main([str(tiny_bids), str(tmp_path / "file" / "out"), "participant", "-w",
                 str(tmp_path / "work"), *BASE])
    expect(code, 73, caplog, "Cannot write the output folder")
    assert not (tmp_path / "work").exists()


def test_output_dir_read_only(tiny_bids, tmp_path, caplog):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user ignores permissions (root)")
        code = main([str(tiny_bids), str(locked / "out"), "participant", "-w",
                     str(tmp_path / "work"), *BASE])
        expect(code, 73, caplog, "is not writable")
    finally:
        locked.chmod(0o755)


def test_read_only_bids_dir_works(tiny_bids, tmp_path):
    """The shared dataset is read-only (mode a-w); the run works and changes nothing in it."""
    assert not os.stat(tiny_bids).st_mode & stat.S_IWUSR
    before = snapshot(tiny_bids)
    assert cli(tiny_bids, tmp_path, "participant", "--participant-label", "01") == 0
    assert snapshot(tiny_bids) == before


def test_default_work_dir_is_not_the_current_directory(tiny_bids, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert cli(tiny_bids, tmp_path, "participant", "--participant-label", "01", work=False) == 0
    assert list(cwd.iterdir()) == []
    assert (tmp_path / "out_work" / "cache" / "sub-01.npy").is_file()


def test_default_work_dir_falls_back_to_temp(tmp_path, monkeypatch):
    from vaefusion.cli.run import default_work_dir

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    assert default_work_dir(tmp_path / "out") == tmp_path / "out_work"
    (tmp_path / "file").write_text("")  # OUTPUT_DIR/.. cannot hold a folder
    fallback = default_work_dir(tmp_path / "file" / "out")
    assert fallback.parent == tmp_path / "tmp" and fallback.name.startswith("vaefusion_work_")
    assert fallback == default_work_dir(tmp_path / "file" / "out")  # stable: reruns resume


@pytest.mark.parametrize("content,fragment", [
    ("epochs = [", "is not valid TOML"),
    ("epochz = 3\n", "has unknown setting(s) epochz"),
    ('epochs = "ten"\n', "epochs = 'ten' is not a valid value (expected int)"),
], ids=["syntax", "unknown-key", "wrong-type"])
def test_bad_config_file(tiny_bids, tmp_path, caplog, content, fragment):
    toml = tmp_path / "c.toml"
    toml.write_text(content)
    expect(cli(tiny_bids, tmp_path, "participant", "--config-file", str(toml)), 64, caplog,
           fragment)
    nothing_created(tmp_path)


def test_unknown_option(tiny_bids, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli(tiny_bids, tmp_path, "participant", "--epoch", "3")
    assert exc.value.code == 64
    assert "unrecognized arguments: --epoch 3" in capsys.readouterr().err
    nothing_created(tmp_path)


def test_unknown_level(tiny_bids, tmp_path, caplog):
    expect(cli(tiny_bids, tmp_path, "subject"), 17, caplog, "Unknown analysis level 'subject'")
    nothing_created(tmp_path)


def test_use_plugin_missing_checked_first(tiny_bids, tmp_path, caplog):
    expect(cli(tiny_bids, tmp_path, "participant", "--use-plugin", str(tmp_path / "slurm.yml")),
           64, caplog, "--use-plugin")
    assert "cannot be read" in error(caplog)
    nothing_created(tmp_path)


@pytest.mark.parametrize("level", ["participant", "group"])
def test_device_cuda_without_gpu(tiny_bids, tmp_path, caplog, monkeypatch, level):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    expect(cli(tiny_bids, tmp_path, level, "--device", "cuda"), 64, caplog,
           "--device cuda was asked for but torch sees no CUDA GPU")
    nothing_created(tmp_path)


def test_help_names_level_config_file(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # as wrapped for any terminal width
    assert "logs/config-<level>-<run id>.toml" in text and "logs/config.toml" not in text
    assert "never the current directory" in text


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_outputs_honour_umask(tiny_bids, tmp_path, umask):
    old = os.umask(umask)
    try:
        assert cli(tiny_bids, tmp_path, "participant", "--participant-label", "01") == 0
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.suffix == ".json" for p in files) and any(p.suffix == ".toml" for p in files)
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
    cache = list((tmp_path / "work" / "cache").iterdir())
    assert {oct(p.stat().st_mode & 0o777) for p in cache} == {oct(0o666 & ~umask)}


# --------------------------------------------------------------------------- --model
MODALITIES = ["ICN01", "ICN02", "ICN03", "ICN04", "GMV"]


def make_model(folder: Path, grid=(9, 11, 9), downsample: int = 2) -> Path:
    """An untrained model on the tiny dataset's grid (18 x 21 x 18 downsampled by 2)."""
    import torch

    from vaefusion.model.checkpoint import save_model
    from vaefusion.model.network import VAE

    torch.manual_seed(0)
    return save_model(VAE(grid, 4, 0.125), folder,
                      {"downsample": downsample, "modalities": MODALITIES})


def test_model_works(tiny_bids, tmp_path):
    """The control for the rows below: a compatible model embeds at the participant level."""
    model = make_model(tmp_path / "model")
    assert cli(tiny_bids, tmp_path, "participant", "--participant-label", "01",
               "--model", str(model)) == 0
    assert list((tmp_path / "out").glob("sub-01/*_latents.tsv"))


def test_no_label_column_group_with_model_works(writable_copy, tmp_path):
    """Embedding with a trained model needs no labels, at the group level too."""
    participants(writable_copy, tsv(writable_copy).replace("diagnosis", "group", 1))
    model = make_model(tmp_path / "model")
    assert cli(writable_copy, tmp_path, "group", "--model", str(model)) == 0
    assert (tmp_path / "out" / "group" / "summary.json").is_file()


def test_model_missing(tiny_bids, tmp_path, caplog):
    (tmp_path / "model").mkdir()
    expect(cli(tiny_bids, tmp_path, "participant", "--model", str(tmp_path / "model")), 66,
           caplog, "is not a vaefusion model: it needs model.json and model.safetensors")
    nothing_created(tmp_path)


def test_model_other_grid(tiny_bids, tmp_path, caplog):
    model = make_model(tmp_path / "model", grid=(9, 11, 9), downsample=1)
    msg = expect(cli(tiny_bids, tmp_path, "participant", "--model", str(model)), 65, caplog,
                 "was trained on grid [9, 11, 9] (downsample 1) but these ICN maps are "
                 "[18, 21, 18]")
    assert msg.endswith("use a model trained on inputs of this resolution.")
    assert not (tmp_path / "work" / "cache").exists(), "refused only after preprocessing"


def test_model_other_latent_dim(tiny_bids, tmp_path, caplog):
    model = make_model(tmp_path / "model")
    expect(cli(tiny_bids, tmp_path, "participant", "--model", str(model), "--latent-dim", "8"),
           64, caplog, "--latent-dim 8 disagrees with --model")
    nothing_created(tmp_path)


def test_model_weights_do_not_match_json(tiny_bids, tmp_path, caplog):
    model = make_model(tmp_path / "model")
    meta = json.loads((model / "model.json").read_text())
    meta["latent_dim"] = 8
    (model / "model.json").write_text(json.dumps(meta))
    expect(cli(tiny_bids, tmp_path, "participant", "--model", str(model)), 65, caplog,
           "model.safetensors does not match model.json")
    nothing_created(tmp_path)


class _Payload:
    """Unpickling this creates a folder: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_model_tampered_weights_run_no_code(tiny_bids, tmp_path, caplog):
    model = make_model(tmp_path / "model")
    marker = tmp_path / "pwned"
    (model / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    expect(cli(tiny_bids, tmp_path, "participant", "--model", str(model)), 65, caplog,
           "model.safetensors is not a valid safetensors file")
    assert not marker.exists(), "the weights file was unpickled"
    nothing_created(tmp_path)


# --------------------------------------------------------------------------- faults and endings
#: A cheap group run: one VAE epoch per fold, no PCA baseline.
QUICK_GROUP = ["--downsample", "2", "--width", "0.125", "--epochs", "1", "--folds", "3",
               "--latent-dim", "4", "--methods", "vae"]


def full_disk_at(monkeypatch, fragment: str) -> list[str]:
    """Make the atomic writers' files whose temporary name holds ``fragment`` hit a full disk
    halfway: half the bytes are written, then ``OSError(ENOSPC)``, as from a real write."""
    import errno
    import types

    import vaefusion.disk.io as dio

    hits: list[str] = []
    real = os.fdopen

    class HalfFull:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            hits.append(self.fh.name)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def fdopen(fd, *args, **kwargs):
        fh = real(fd, *args, **kwargs)
        name = os.readlink(f"/proc/self/fd/{fd}")
        return HalfFull(fh) if fragment in name else fh

    proxy = types.ModuleType("os")
    proxy.__dict__.update(os.__dict__)
    proxy.fdopen = fdopen
    monkeypatch.setattr(dio, "os", proxy)
    return hits


def looks_complete(root: Path) -> list[Path]:
    """Leftovers of an interrupted write that do not look like one (named as outputs)."""
    return [p for p in root.rglob("*") if p.is_file() and ".part" in p.name
            and not p.name.startswith(".")]


def test_full_disk_while_preprocessing(writable_copy, tmp_path, caplog, monkeypatch):
    hits = full_disk_at(monkeypatch, ".sub-03.npy.")
    msg = expect(cli(writable_copy, tmp_path), 73, caplog, "The disk is full while writing")
    assert hits and "sub-03.npy" in msg and "rerun the same command" in msg
    cache, out = tmp_path / "work" / "cache", tmp_path / "out"
    assert not list(cache.glob("sub-03*")) and not list(out.glob("sub-03"))
    assert not list(cache.glob(".*part*")) and not looks_complete(tmp_path)
    assert json.loads(next((out / "logs").glob("status-*.json")).read_text())["exit_code"] == 73
    monkeypatch.undo()
    assert cli(writable_copy, tmp_path) == 0  # the rerun completes sub-03 (nothing reused)
    assert (cache / "sub-03.json").is_file() and list(out.glob("sub-03/*_stack.json"))


def test_derivative_without_its_sidecar_is_rewritten(tiny_bids, tmp_path):
    """A run killed between a subject's stack and its sidecar: the rerun writes both again
    (the stack alone is never taken as done)."""
    args = ("--participant-label", "01", "02")
    assert cli(tiny_bids, tmp_path, "participant", *args) == 0
    stack = next((tmp_path / "out" / "sub-01").glob("*_stack.nii.gz"))
    sidecar = stack.with_name(stack.name.replace(".nii.gz", ".json"))
    other = next((tmp_path / "out" / "sub-02").glob("*_stack.nii.gz"))
    text, before, other_before = (sidecar.read_text(), stack.stat().st_mtime_ns,
                                  other.stat().st_mtime_ns)
    sidecar.unlink()
    time.sleep(0.01)
    assert cli(tiny_bids, tmp_path, "participant", *args) == 0
    assert sidecar.read_text() == text and stack.stat().st_mtime_ns > before
    assert other.stat().st_mtime_ns == other_before  # a complete subject is left alone


@pytest.mark.slow
def test_full_disk_in_a_training_worker(tiny_bids, tmp_path, caplog, monkeypatch):
    """A node in a MultiProc worker hits the full disk: the parent exits 73, not 1."""
    import errno

    import torch

    real = torch.save

    def save(obj, f, *args, **kwargs):
        if str(f).endswith("checkpoint.pt.part"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    msg = expect(cli(tiny_bids, tmp_path, "group", *QUICK_GROUP, "--nprocs", "2"), 73, caplog,
                 "The disk is full while writing")
    assert "checkpoint.pt" in msg
    assert not list((tmp_path / "work" / "training").rglob("*.part"))
    assert not (tmp_path / "out" / "group" / "summary.json").exists()


def test_full_disk_writing_group_outputs(tiny_bids, tmp_path, caplog, monkeypatch):
    full_disk_at(monkeypatch, ".metrics.tsv.")
    msg = expect(cli(tiny_bids, tmp_path, "group", *QUICK_GROUP), 73, caplog,
                 "The disk is full while writing")
    group = tmp_path / "out" / "group"
    assert "metrics.tsv" in msg and not (group / "metrics.tsv").exists()
    assert not (group / "summary.json").exists() and not looks_complete(tmp_path)
    assert not list(group.glob(".*part*"))


def test_real_full_disk_is_recognised(tmp_path):
    """On a real full disk (a 1 MB tmpfs) each library reports it differently (numpy: an
    OSError without errno, torch: RuntimeError, safetensors: its own error); every writer
    turns it into ENOSPC naming the file, and leaves nothing behind."""
    import subprocess

    import nibabel as nib
    import torch

    from vaefusion.disk.io import atomic_save_npy, atomic_write_text, write_nifti_atomic
    from vaefusion.errors import disk_full_error
    from vaefusion.model.checkpoint import save_model
    from vaefusion.model.network import VAE
    from vaefusion.training.trainer import save_checkpoint

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                             capture_output=True)
    if mounted.returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        writes = {
            "a.npy": lambda p: atomic_save_npy(p, np.ones(300_000)),
            "a.txt": lambda p: atomic_write_text(p, "x" * 2_000_000),
            "a.nii.gz": lambda p: write_nifti_atomic(p, nib.Nifti1Image(
                np.random.default_rng(0).random((80, 80, 80), dtype=np.float32), np.eye(4))),
            "last/checkpoint.pt": lambda p: save_checkpoint(p, {"w": torch.ones(300_000)}),
            "best/model.safetensors": lambda p: save_model(VAE((32, 32, 32), 8, 1.0),
                                                           p.parent),
        }
        for name, write in writes.items():
            with pytest.raises(OSError) as info:
                write(disk / name)
            full = disk_full_error(info.value)
            assert full is not None and full.code == 73, (name, info.value)
            assert name in full.message
            assert not [p for p in disk.rglob("*") if p.is_file()], name
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_failure_after_the_results_leaves_no_summary(tiny_bids, tmp_path, caplog, monkeypatch):
    """A step after the tables fails (here the report, with a bug): exit 1, the crash file
    named in the last line and the status file, and no group/summary.json."""
    import vaefusion.reports.group

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug in the report")

    monkeypatch.setattr(vaefusion.reports.group, "write_interpretation", broken)
    assert cli(tiny_bids, tmp_path, "group", *QUICK_GROUP) == 1
    group = tmp_path / "out" / "group"
    assert (group / "metrics.tsv").is_file() and not (group / "summary.json").exists()
    line = ending(caplog)
    crash = Path(line.split("crash file: ", 1)[1])
    assert "failed (exit 1," in line and "simulated bug" in crash.read_text()
    status = json.loads(next((tmp_path / "out" / "logs").glob("status-*.json")).read_text())
    assert (status["state"], status["exit_code"], status["crash_file"]) == (
        "failed", 1, str(crash))


@pytest.mark.slow
def test_crash_that_nipype_lets_pass_is_no_success(tiny_bids, tmp_path, caplog, monkeypatch):
    """MultiProc runs the derivatives sink in the main process and, when it fails, writes a
    crash file but reports success; the run must still fail (exit 1), naming the file."""
    import vaefusion.derivatives.subject

    real = vaefusion.derivatives.subject.write_subject_stack

    def flaky(out, subject, *args, **kwargs):
        if subject == "02":
            raise RuntimeError("simulated bug in the sink")
        return real(out, subject, *args, **kwargs)

    monkeypatch.setattr(vaefusion.derivatives.subject, "write_subject_stack", flaky)
    assert cli(tiny_bids, tmp_path, "participant", "--nprocs", "2") == 1
    line = ending(caplog)
    assert "failed (exit 1," in line and "crash file:" in line
    assert "success" not in line
    assert "simulated bug" in Path(line.split("crash file: ", 1)[1]).read_text()


def test_success_ends_with_one_line_and_a_status_file(tiny_bids, tmp_path, caplog):
    assert cli(tiny_bids, tmp_path, "participant", "--participant-label", "01", "02") == 0
    assert f"success (exit 0); outputs in {tmp_path / 'out'}" in ending(caplog)
    logs = tmp_path / "out" / "logs"
    status = json.loads(next(logs.glob("status-*.json")).read_text())
    assert (status["state"], status["exit_code"], status["level"]) == (
        "succeeded", 0, "participant")
    log = next(logs.glob("vaefusion-participant-*.log")).read_text()
    assert "Software: python" in log and "torch" in log and "nipype" in log
    assert log.rstrip().endswith(ending(caplog))
    assert not list(logs.glob(".*part*"))


def test_mem_too_small_is_refused(tiny_bids, tmp_path, caplog):
    msg = expect(cli(tiny_bids, tmp_path, "group", *QUICK_GROUP, "--mem", "0.5"), 64, caplog,
                 "vae needs about")
    assert "raise --mem" in msg and "--mem 0.5 GB / --nprocs 1" in msg
    assert not list((tmp_path / "work").glob("training/*"))  # refused before any training
    # the group level counts the subjects on the terminal; the list goes to the log file
    listed = [r for r in caplog.records if "ICN=yes" in r.getMessage()]
    assert len(listed) == 8 and {r.levelname for r in listed} == {"DEBUG"}
    assert "Selected 8 subject(s) (4 HC, 4 SZ; the list is in the log file)" in caplog.text


def test_gram_matrices_beyond_mem_are_refused(tmp_path):
    """2,000 subjects x 54 volumes: pca-early's Gram matrices take 1.6 GB, more than --mem 2
    shared by --nprocs 2; refused (exit 64) with the way out, before any training."""
    from vaefusion.config import Config
    from vaefusion.errors import UsageError
    from vaefusion.evaluation.manifest import Manifest
    from vaefusion.evaluation.memory import check_group_memory
    from vaefusion.evaluation.methods import selected_methods
    from vaefusion.inputs.cache import SubjectMeta, write_subject

    mods = [f"ICN{i:02d}" for i in range(1, 54)] + ["GMV"]
    npy = write_subject(tmp_path, np.zeros((54, 9, 11, 9), np.float32),
                        SubjectMeta("0001", None, mods, np.eye(4).tolist(), [9, 11, 9]))
    n = 2000
    manifest = Manifest([str(npy)] * n, [f"sub-{i:04d}" for i in range(n)],
                        [i % 2 for i in range(n)], mods)
    cfg = Config(mem_gb=2.0, nprocs=2, device="cpu", omp_nthreads=1, latent_dims=[8],
                 folds=10, width=0.125, methods=["vae", "pca-early", "pca-late"]).resolve()
    with pytest.raises(UsageError) as info:
        check_group_memory(cfg, manifest, selected_methods(cfg.methods))
    assert info.value.code == 64
    assert info.value.message.startswith("pca-early needs about 2.")
    assert "Gram matrices 54 x 2000^2 float64 (1.61 GB)" in info.value.message
    assert "(--methods vae)" in info.value.message
    check_group_memory(Config(**{**cfg.__dict__, "mem_gb": 16.0}), manifest,
                       selected_methods(cfg.methods))  # fits


# --------------------------------------------------------------------------- the document
def test_reliability_table_is_backed_by_these_tests():
    """Every row of docs/reliability.md names a test of this module (or, written
    ``test_recovery.py::test_x``, of that module of tests/), with its exit code."""
    rows = [line for line in DOC.read_text().splitlines()
            if line.startswith("| ") and "`test_" in line]
    assert len(rows) >= 25
    sources: dict[str, str] = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        found = re.search(r"`(?:(test_\w+\.py)::)?(test_\w+)", cells[-1])
        module, test = found.group(1) or "test_reliability.py", found.group(2)
        if module not in sources:
            sources[module] = (Path(__file__).parent / module).read_text()
        source = sources[module]
        assert f"\ndef {test}(" in source, f"{test} (docs/reliability.md) is not in {module}"
        code = re.match(r"\d+", cells[1]).group(0)
        body = source.split(f"\ndef {test}(", 1)[1].split("\ndef ", 1)[0]
        assert code == "0" or re.search(rf"\b{code}\b", body), f"{test}: exit {code} not checked"
