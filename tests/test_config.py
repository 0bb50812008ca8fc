"""The one configuration object: TOML round trip, precedence, resolution, method settings."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from vaefusion.cli.parser import build_parser
from vaefusion.cli.run import build_config
from vaefusion.config import Config, Runtime, load_toml
from vaefusion.errors import UsageError


def test_toml_round_trip(tmp_path):
    cfg = Config(bids_dir=Path("/data"), output_dir=Path("/out"), latent_dims=[8, 16],
                 seeds=[1, 2], lr=3e-4, derivatives={"nm": "/d/nm"}, methods=["vae"])
    path = cfg.write(tmp_path)
    back = Config.from_dict(load_toml(path))
    assert back == cfg
    assert isinstance(back.bids_dir, Path)


def test_unknown_toml_key_is_refused(tmp_path):
    (tmp_path / "c.toml").write_text("latent_dim = 8\n")  # the field is latent_dims
    with pytest.raises(UsageError, match="latent_dim"):
        Config.from_dict(load_toml(tmp_path / "c.toml"), source="c.toml")


def test_precedence_defaults_then_toml_then_cli(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "c.toml").write_text("epochs = 7\nlr = 0.01\n[method]\nbeta = 2.0\n")
    args = build_parser().parse_args([str(tmp_path / "ds"), str(tmp_path / "out"), "group",
                                      "--config-file", str(tmp_path / "c.toml"), "--lr", "0.5",
                                      "-w", str(tmp_path / "w")])
    cfg = build_config(args)
    assert cfg.epochs == 7  # TOML over the default (100)
    assert cfg.beta == 2.0  # a TOML section is flattened
    assert cfg.lr == 0.5  # the command line over TOML
    assert cfg.patience == Config().patience  # untouched default


def test_resolve_makes_auto_values_concrete_once():
    cfg = Config(device="cpu", nprocs=1)
    assert not cfg.resolved
    res = cfg.resolve()
    assert res.resolved and cfg.omp_nthreads == 0  # a copy: the original is unchanged
    assert res.omp_nthreads >= 1 and res.mem_gb > 0
    assert res.resolve() == res  # idempotent
    auto = Config(device="auto").resolve()
    assert auto.device in ("cpu", "cuda")


def test_resolve_refuses_cuda_without_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="--device cuda"):
        Config(device="cuda").resolve()


def test_runtime_needs_resolution_and_round_trips():
    with pytest.raises(ValueError):
        Config().runtime()
    rt = Config(device="cpu", omp_nthreads=3, mem_gb=2.0, nprocs=2).resolve().runtime()
    assert rt == Runtime(device="cpu", threads=3, data_budget_bytes=2**30 // 2, nprocs=2)
    assert Runtime.from_json(rt.to_json()) == rt


def test_method_settings_hold_what_changes_results_only():
    a = Config(device="cpu", nprocs=1, output_dir=Path("/a"), omp_nthreads=1)
    b = Config(device="cpu", nprocs=8, output_dir=Path("/b"), omp_nthreads=4, mem_gb=3.0)
    assert a.method_settings() == b.method_settings()
    assert Config(lr=0.1).method_settings() != Config(lr=0.2).method_settings()
    for name in ("nprocs", "omp_nthreads", "output_dir", "work_dir", "device", "mem_gb"):
        assert name not in a.method_settings()


def test_written_config_is_the_resolved_one(tiny_bids, tmp_path):
    from vaefusion.cli.run import main

    out = tmp_path / "out"
    assert main([str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "w"),
                 "--skip-bids-validation", "--n-components", "4", "--device", "auto"]) == 0
    written = tomllib.loads(next((out / "logs").glob("config-participant-*.toml")).read_text())
    assert written["device"] in ("cpu", "cuda") and written["omp_nthreads"] >= 1
