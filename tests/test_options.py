"""Options as fMRIPrep and MRIQC users give them: ``--mem`` with units and checked against the
machine, finite numbers only."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import vaefusion.config
from vaefusion.cli.parser import build_parser
from vaefusion.cli.run import main

BASE = ["--n-components", "4", "--skip-bids-validation"]


def parse(*options: str):
    return build_parser().parse_args(["ds", "out", "participant", *options])


def refused(capsys, *options: str) -> tuple[int, str]:
    """The exit code and the message of a refused command line."""
    with pytest.raises(SystemExit) as exc:
        parse(*options)
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize(("given", "gb"), [("16", 16.0), ("16G", 16.0), ("16GB", 16.0),
                                           ("16g", 16.0), ("16000M", 16000 / 1024),
                                           ("16000MB", 16000 / 1024), ("1T", 1024.0),
                                           ("0.5", 0.5), ("512M", 0.5)])
def test_mem_takes_units(given, gb):
    assert parse("--mem", given).mem_gb == pytest.approx(gb)


@pytest.mark.parametrize("given", ["lots", "16X", "0", "-1G", "nan", "infG", "0M"])
def test_mem_refuses_what_is_no_amount(capsys, given):
    code, err = refused(capsys, "--mem", given)
    assert code == 64 and "--mem" in err


@pytest.mark.parametrize("option", [("--lr", "nan"), ("--beta", "inf"), ("--lr", "0"),
                                    ("--lr", "-1e-3"), ("--width", "-inf"), ("--width", "0"),
                                    ("--svm-c", "nan"), ("--svm-c", "0"),
                                    ("--free-bits", "nan"), ("--beta", "-inf")])
def test_numbers_must_be_finite_and_positive(capsys, option):
    code, err = refused(capsys, *option)
    assert code == 64 and option[0] in err


def test_nan_in_a_config_file_is_refused(tiny_bids, tmp_path, caplog):
    toml = tmp_path / "c.toml"
    toml.write_text("lr = nan\nbeta = inf\n")
    out = tmp_path / "out"
    assert main([str(tiny_bids), str(out), "participant", "--config-file", str(toml),
                 *BASE]) == 64
    assert "--lr nan is not a finite number; give a number." in caplog.text
    assert not out.exists()


def test_mem_above_the_available_memory_is_refused(tiny_bids, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(vaefusion.config, "available_ram_bytes", lambda: 12 * 2**30)
    out = tmp_path / "out"
    assert main([str(tiny_bids), str(out), "participant", "--mem", "16000", *BASE]) == 64
    assert "--mem 16000 GB is more than the 12.0 GB of memory available" in caplog.text
    assert "give at most --mem 12G" in caplog.text and "Traceback" not in caplog.text
    assert not out.exists() and not (tmp_path / "out_work").exists()


def test_mem_16000_is_refused_on_this_machine(tiny_bids, tmp_path, caplog):
    """A bare number is GB (as documented): 16,000 GB is more than any machine this runs on."""
    assert main([str(tiny_bids), str(tmp_path / "out"), "participant", "--mem", "16000",
                 *BASE]) == 64
    assert "of memory available to this run" in caplog.text


def test_mem_with_units_runs(tiny_bids, tmp_path, monkeypatch):
    monkeypatch.setattr(vaefusion.config, "available_ram_bytes", lambda: 64 * 2**30)
    out = tmp_path / "out"
    assert main([str(tiny_bids), str(out), "participant", "--mem", "16G", "-w",
                 str(tmp_path / "w"), "--participant-label", "01", *BASE]) == 0
    written = tomllib.loads(next(Path(out, "logs").glob("config-participant-*.toml"))
                            .read_text())
    assert written["mem_gb"] == 16.0


# --------------------------------------------------------------------------- item: validation
def test_fmriprep_spellings_are_aliases():
    args = parse("--participant_label", "sub-01", "--session_label", "ses-1",
                 "--skip_bids_validator")
    assert (args.participant_label, args.session_label, args.skip_bids_validation) == (
        ["01"], ["1"], True)


def test_labels_from_a_file(tmp_path):
    from vaefusion.cli.configure import expand_label_files

    listing = tmp_path / "subjects.txt"
    listing.write_text("sub-01\n02 03  # the pilot\n\n# none here\n")
    assert expand_label_files(["05", f"@{listing}"], "--participant-label") == [
        "05", "01", "02", "03"]


def test_a_missing_or_empty_label_file_is_refused(tiny_bids, tmp_path, caplog):
    out = tmp_path / "out"
    assert main([str(tiny_bids), str(out), "participant", "--participant-label",
                 f"@{tmp_path / 'none.txt'}", *BASE]) == 64
    assert f"--participant-label {tmp_path / 'none.txt'} does not exist" in caplog.text
    (tmp_path / "empty.txt").write_text("# nobody\n")
    assert main([str(tiny_bids), str(out), "participant", "--session-label",
                 f"@{tmp_path / 'empty.txt'}", *BASE]) == 64
    assert "lists no label" in caplog.text and not out.exists()


@pytest.mark.parametrize("how", ["timeout", "garbage"])
def test_a_validator_that_fails_is_exit_16(tmp_path, monkeypatch, how):
    import subprocess

    import vaefusion.inputs.validation as validation
    from vaefusion.errors import VaefusionError

    def fake_run(cmd, **kwargs):
        if how == "timeout":
            raise subprocess.TimeoutExpired(cmd, kwargs.get("timeout"))
        return subprocess.CompletedProcess(cmd, 1, "Killed\n", "")

    monkeypatch.setattr(validation, "find_validator", lambda: "bids-validator-deno")
    monkeypatch.setattr(validation.subprocess, "run", fake_run)
    with pytest.raises(VaefusionError) as exc:
        validation.validate_input(tmp_path, tmp_path)
    assert exc.value.code == 16
    assert exc.value.message.endswith("; rerun, or pass --skip-bids-validation to run without "
                                      "validating the input.")
    assert ("ran past its 600 s limit" if how == "timeout" else "gave no JSON report: Killed") \
        in exc.value.message


def test_selected_tree_holds_top_level_files_and_selected_subjects(tiny_bids, tmp_path):
    from vaefusion.inputs.validation import selected_tree

    tree = selected_tree(tiny_bids, ["02"], tmp_path)
    names = sorted(p.name for p in tree.iterdir())
    assert "sub-02" in names and "dataset_description.json" in names
    assert not [n for n in names if n.startswith("sub-") and n != "sub-02"]
    assert "derivatives" not in names


@pytest.mark.slow
def test_only_the_selected_subjects_are_validated(writable_copy, tmp_path, caplog):
    """An invalid subject that is not selected does not stop the run; selected, it is exit 16."""
    from vaefusion.inputs.validation import find_validator

    if find_validator() is None:
        pytest.skip("bids-validator-deno is not installed")
    t1w = next(writable_copy.glob("sub-08/**/*_T1w.nii*"))
    t1w.write_bytes(b"not a nifti")
    common = ["-w", str(tmp_path / "work"), "--n-components", "4"]  # validation not skipped
    assert main([str(writable_copy), str(tmp_path / "out"), "participant",
                 "--participant-label", "01", *common]) == 0
    assert main([str(writable_copy), str(tmp_path / "out8"), "participant",
                 "--participant-label", "08", *common]) == 16
    assert f"{writable_copy} is not valid BIDS:" in caplog.text and "sub-08" in caplog.text
