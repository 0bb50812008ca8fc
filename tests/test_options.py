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


def refused(capsys, *options: str) -> str:
    with pytest.raises(SystemExit) as exc:
        parse(*options)
    assert exc.value.code == 64
    return capsys.readouterr().err


@pytest.mark.parametrize(("given", "gb"), [("16", 16.0), ("16G", 16.0), ("16GB", 16.0),
                                           ("16g", 16.0), ("16000M", 16000 / 1024),
                                           ("16000MB", 16000 / 1024), ("1T", 1024.0),
                                           ("0.5", 0.5), ("512M", 0.5)])
def test_mem_takes_units(given, gb):
    assert parse("--mem", given).mem_gb == pytest.approx(gb)


@pytest.mark.parametrize("given", ["lots", "16X", "0", "-1G", "nan", "infG", "0M"])
def test_mem_refuses_what_is_no_amount(capsys, given):
    assert "--mem" in refused(capsys, "--mem", given)


@pytest.mark.parametrize("option", [("--lr", "nan"), ("--beta", "inf"), ("--lr", "0"),
                                    ("--lr", "-1e-3"), ("--width", "-inf"), ("--width", "0"),
                                    ("--svm-c", "nan"), ("--svm-c", "0"),
                                    ("--free-bits", "nan"), ("--beta", "-inf")])
def test_numbers_must_be_finite_and_positive(capsys, option):
    assert option[0] in refused(capsys, *option)


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
