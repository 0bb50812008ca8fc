"""Where the outputs may go, as BIDS lays derivatives out: ``BIDS_DIR/derivatives/vaefusion``
works; an input derivative dataset, another pipeline's output, or two derivative inputs under
one name are refused before anything is created."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vaefusion.cli.run import main

BASE = ["--n-components", "4", "--skip-bids-validation"]


def test_two_derivatives_with_one_name_are_refused(tiny_bids, tmp_path, caplog):
    out = tmp_path / "out"
    one, two = tmp_path / "a" / "neuromark", tmp_path / "b" / "neuromark"
    assert main([str(tiny_bids), str(out), "participant", "--derivatives", str(one), str(two),
                 *BASE]) == 64
    assert (f"--derivatives names two datasets neuromark ({one} and {two}); name them apart "
            f"with NAME=PATH") in caplog.text
    assert not out.exists()


def test_one_path_given_twice_is_one_dataset():
    from vaefusion.cli.configure import unique_derivatives

    assert unique_derivatives([("nm", "/x/nm"), ("nm", "/x/nm"), ("gm", "/y/gm")]) == {
        "nm": "/x/nm", "gm": "/y/gm"}


@pytest.mark.parametrize("which", ["output", "work"])
def test_output_or_work_inside_an_input_derivative_is_refused(writable_copy, tmp_path, caplog,
                                                               which):
    """A ``--derivatives`` dataset outside BIDS_DIR (inside BIDS_DIR, the work dir is refused
    as inside the input already)."""
    import shutil

    dataset = tmp_path / "inputs" / "neuromark"
    shutil.move(writable_copy / "derivatives" / "neuromark", dataset)
    inside = dataset / "vaefusion"
    out, work = (inside, tmp_path / "work") if which == "output" else (tmp_path / "out", inside)
    code = main([str(writable_copy), str(out), "participant", "-w", str(work), "--derivatives",
                 f"nm={dataset}", f"spm={writable_copy / 'derivatives' / 'spm'}", *BASE])
    option = "OUTPUT_DIR" if which == "output" else "--work-dir"
    assert code == 64
    assert f"{option} {inside} is inside the input derivative dataset {dataset}" in caplog.text
    assert not inside.exists() and not (tmp_path / "out").exists()
    assert not (tmp_path / "work").exists()


def test_output_that_is_an_input_derivative_is_refused(writable_copy, tmp_path, caplog):
    """OUTPUT_DIR = BIDS_DIR/derivatives/neuromark: NeuroMark's dataset, not vaefusion's."""
    out = writable_copy / "derivatives" / "neuromark"
    before = (out / "dataset_description.json").read_bytes()
    assert main([str(writable_copy), str(out), "participant", "-w", str(tmp_path / "w"),
                 *BASE]) == 73
    assert f"OUTPUT_DIR {out} holds " in caplog.text and "not vaefusion's" in caplog.text
    assert (out / "dataset_description.json").read_bytes() == before
    assert not (out / "logs").exists() and not (tmp_path / "w").exists()


def test_output_of_another_pipeline_is_refused(tiny_bids, tmp_path, caplog):
    out = tmp_path / "fmriprep"
    out.mkdir()
    description = {"Name": "fMRIPrep output", "BIDSVersion": "1.10.0",
                   "DatasetType": "derivative", "GeneratedBy": [{"Name": "fMRIPrep"}]}
    (out / "dataset_description.json").write_text(json.dumps(description))
    assert main([str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "w"),
                 *BASE]) == 73
    assert (f"OUTPUT_DIR {out} holds fMRIPrep's derivatives, not vaefusion's; its "
            f"dataset_description.json would be overwritten") in caplog.text
    assert json.loads((out / "dataset_description.json").read_text()) == description
    assert sorted(p.name for p in out.iterdir()) == ["dataset_description.json"]


def test_default_work_dir_of_a_nested_output_is_outside_the_input(tmp_path):
    from vaefusion.cli.paths import default_work_dir

    ds = tmp_path / "ds"
    work = default_work_dir(ds / "derivatives" / "vaefusion", ds)
    assert ds not in work.parents
    assert default_work_dir(tmp_path / "out", ds) == tmp_path / "out_work"


@pytest.mark.slow
def test_nested_output_works_and_validates(writable_copy, tmp_path):
    """BIDS_DIR/derivatives/vaefusion as OUTPUT_DIR: discovery skips it (also on a rerun, once
    it is a vaefusion dataset), and its outputs validate."""
    from test_cli import validator_errors

    out = writable_copy / "derivatives" / "vaefusion"
    args = [str(writable_copy), str(out), "participant", "-w", str(tmp_path / "work"), *BASE]
    assert main([*args, "--participant-label", "01", "02"]) == 0
    assert main([*args, "--participant-label", "03"]) == 0  # now a vaefusion dataset there
    assert sorted(p.name for p in out.glob("sub-*") if p.is_dir()) == [
        "sub-01", "sub-02", "sub-03"]
    assert validator_errors(out) == []
    desc = json.loads(Path(out, "dataset_description.json").read_text())
    assert desc["GeneratedBy"][0]["Name"] == "vaefusion"
