"""The real CLI: version, option errors, validation, participant end to end, plugins, crashes.

Every bad input, with its exit code and message, is in test_reliability.py
(docs/reliability.md).
"""

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


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "vaefusion" in capsys.readouterr().out


def test_bad_option_exit_64(tiny_bids, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([str(tiny_bids), str(tmp_path / "out"), "group", "--epochs", "zero"])
    assert exc.value.code == 64


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
    assert len(list((out / "logs").glob("config-participant-*.toml"))) == 1
    assert validator_errors(out) == []
    # a rerun reuses the work dir: the cache is not rewritten
    cache = sorted((tmp_path / "work" / "cache").glob("*.npy"))
    before = [p.stat().st_mtime_ns for p in cache]
    probseg = sorted(out.glob("sub-*/anat/*_label-GM_desc-preproc_probseg.json"))
    assert len(probseg) == 8
    probseg[0].unlink()  # ...but a deleted output comes back
    assert main([str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 *BASE]) == 0
    assert [p.stat().st_mtime_ns for p in cache] == before
    assert probseg[0].is_file()


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
    crash = list((out / "logs").glob("crash-*/crash-*.txt"))  # the run's crash folder
    assert len(crash) == 1 and "simulated bug" in crash[0].read_text()
    assert "Traceback" not in capsys.readouterr().err


def test_demo_verdict_says_where_the_vae_does_not_win():
    from vaefusion.evaluation.group_summary import Comparison, verdict

    def comp(baseline: str, lo: float, hi: float) -> Comparison:
        return Comparison(method="vae", baseline=baseline, latent_dim=4, n_pairs=5,
                          mean_difference=(lo + hi) / 2, ci=[lo, hi], p_value=0.5)

    text = verdict([comp("pca-early", 0.02, 0.3), comp("pca-late", -0.2, 0.1),
                    comp("pca-shared", -0.4, -0.1)])
    assert "beats pca-early" in text and "worse than pca-shared" in text
    assert "is not shown to differ from pca-late (mean AUC difference -0.05 against pca-late" \
        in text
    assert verdict([]) == "The VAE was not compared with a baseline."
