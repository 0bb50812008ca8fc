"""The real CLI: exit codes and messages for every bad input, guards, participant end to end."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import vaefusion.inputs.validation
from vaefusion.cli.run import main
from vaefusion.inputs.validation import find_validator, run_validator

BASE = ["--n-components", "4", "--skip-bids-validation"]


def run_cli(ds: Path, out: Path, level: str = "participant", *extra: str) -> int:
    return main([str(ds), str(out), level, "-w", str(out.parent / "work"), *BASE, *extra])


def _icn_files(ds: Path) -> list[Path]:
    return sorted(ds.glob("derivatives/**/*_components.nii.gz"))


def _rewrite(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    img = nib.load(path)
    nib.save(nib.Nifti1Image(data.astype(np.float32), img.affine if affine is None else affine),
             path)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "vaefusion" in capsys.readouterr().out


def test_unknown_level_exit_17(tiny_bids, tmp_path):
    assert run_cli(tiny_bids, tmp_path / "out", "subject") == 17


def test_bad_option_exit_64(tiny_bids, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([str(tiny_bids), str(tmp_path / "out"), "group", "--epochs", "zero"])
    assert exc.value.code == 64


def test_unknown_toml_key_exit_64(tiny_bids, tmp_path, caplog):
    cfg = tmp_path / "c.toml"
    cfg.write_text("epochz = 3\n")
    assert run_cli(tiny_bids, tmp_path / "out", "participant", "--config-file", str(cfg)) == 64
    assert "epochz" in caplog.text


def test_output_or_work_inside_bids_dir_exit_64(writable_copy, tmp_path):
    assert main([str(writable_copy), str(writable_copy / "derivatives" / "vf"), "participant",
                 *BASE]) == 64
    assert main([str(writable_copy), str(tmp_path / "out"), "participant", "-w",
                 str(writable_copy / "work"), *BASE]) == 64


def test_missing_bids_dir_exit_66(tmp_path):
    assert run_cli(tmp_path / "nothere", tmp_path / "out") == 66


def test_unwritable_output_exit_73(tiny_bids, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if (locked / "x").exists() or _can_write(locked):
            pytest.skip("running as a user that ignores permissions")
        assert run_cli(tiny_bids, locked / "out") == 73
    finally:
        locked.chmod(0o755)


def _can_write(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("")
        (folder / ".probe").unlink()
        return True
    except OSError:
        return False


def test_no_match_exit_18(tiny_bids, tmp_path):
    assert run_cli(tiny_bids, tmp_path / "out", "participant", "--participant-label",
                   "nobody") == 18


@pytest.mark.parametrize("case,pattern", [
    ("nan", "NaN or Inf"),
    ("zero", "is all zero"),
    ("count", "has 3 components but 4 are expected"),
    ("3d", "is 3D but NeuroMark ICN maps must be 4D"),
    ("affine", "resample all ICN maps to one grid"),
])
def test_bad_inputs_exit_65_naming_the_file(writable_copy, tmp_path, caplog, case, pattern):
    target = _icn_files(writable_copy)[1]
    data = np.asanyarray(nib.load(target).dataobj).astype(np.float32)
    if case == "nan":
        data[2, 2, 2, 0] = np.nan
        _rewrite(target, data)
    elif case == "zero":
        data[..., 1] = 0
        _rewrite(target, data)
    elif case == "count":
        _rewrite(target, data[..., :3])
    elif case == "3d":
        _rewrite(target, data[..., 0])
    elif case == "affine":
        aff = nib.load(target).affine.copy()
        aff[0, 3] += 5
        _rewrite(target, data, aff)
    assert run_cli(writable_copy, tmp_path / "out") == 65
    assert pattern in caplog.text and target.name in caplog.text
    assert "Traceback" not in caplog.text


def test_invalid_bids_exit_16(writable_copy, tmp_path):
    if find_validator() is None:
        pytest.skip("bids-validator-deno is not installed")
    t1w = next(writable_copy.glob("sub-*/**/*_T1w.nii*"))
    t1w.write_bytes(b"not a nifti")
    code = main([str(writable_copy), str(tmp_path / "out"), "participant", "-w",
                 str(tmp_path / "work"), "--n-components", "4"])
    assert code == 16
    assert (tmp_path / "out" / "logs" / "bids_validator.json").exists()


def validator_errors(path: Path) -> list[dict]:
    if find_validator() is None:
        pytest.skip("bids-validator-deno is not installed")
    return vaefusion.inputs.validation.validator_errors(run_validator(path))


@pytest.mark.slow
def test_participant_end_to_end_valid_and_resumable(tiny_bids, tmp_path):
    """Simulate -> participant level on a read-only input -> valid derivatives; rerun skips."""
    out = tmp_path / "out"
    code = main([str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--n-components", "4"])  # validates the input too
    assert code == 0
    stacks = sorted(out.glob("sub-*/*_desc-preproc_stack.nii.gz"))
    assert len(stacks) == 8
    img = nib.load(stacks[0])
    assert img.shape[-1] == 5  # 4 ICNs + GMV
    data = img.get_fdata()
    assert np.abs(data).max() <= 1.0 + 1e-6
    sidecar_path = stacks[0].with_name(stacks[0].name.replace(".nii.gz", ".json"))
    sidecar = json.loads(sidecar_path.read_text())
    assert sidecar["Modalities"][-1] == "GMV"
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "vaefusion"
    assert desc["SourceDatasets"]
    assert (out / "logs" / "config-participant.toml").exists()
    assert validator_errors(out) == []
    # a rerun reuses the work dir: the cache is not rewritten
    cache = sorted((tmp_path / "work" / "cache").glob("*.npy"))
    before = [p.stat().st_mtime_ns for p in cache]
    assert main([str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 *BASE]) == 0
    assert [p.stat().st_mtime_ns for p in cache] == before


def test_use_plugin_yaml(tmp_path):
    from vaefusion.config import Config
    from vaefusion.errors import UsageError
    from vaefusion.workflows.base import plugin_settings

    good = tmp_path / "slurm.yml"
    good.write_text("plugin: SLURM\nplugin_args:\n  sbatch_args: --time=2:00:00\n")
    assert plugin_settings(Config(use_plugin=good)) == (
        "SLURM", {"sbatch_args": "--time=2:00:00"})
    assert plugin_settings(Config(nprocs=3, mem_gb=8))[0] == "MultiProc"
    bad = tmp_path / "bad.yml"
    bad.write_text("plugin_args: {}\n")
    with pytest.raises(UsageError, match="no 'plugin' key"):
        plugin_settings(Config(use_plugin=bad))


def test_a_crash_writes_a_crash_file_and_exits_1(tiny_bids, tmp_path, monkeypatch, capsys):
    import vaefusion.inputs.discovery

    def broken(cfg):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(vaefusion.inputs.discovery, "discover", broken)
    out = tmp_path / "out"
    assert run_cli(tiny_bids, out) == 1
    crash = list((out / "logs").glob("crash-*.txt"))
    assert len(crash) == 1 and "simulated bug" in crash[0].read_text()
    assert "Traceback" not in capsys.readouterr().err
