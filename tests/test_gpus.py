"""Units of work spread over GPUs (``--gpus``), tested on the CPU with a faked device count."""

from __future__ import annotations

import logging
import multiprocessing as mp
from pathlib import Path

import pytest
import torch

from vaefusion.cli.parser import build_parser
from vaefusion.cli.run import build_config
from vaefusion.config import GPU_FRACTION, Config, Runtime, parse_gpus, resolve_gpus
from vaefusion.disk.progress import write_unit_progress
from vaefusion.errors import UsageError
from vaefusion.training import gpus as gpus_module
from vaefusion.training.gpus import gpu_lease, placed, units_per_gpu
from vaefusion.workflows.status import RunStatus

GiB = 2**30


def test_gpus_read_like_cuda_visible_devices():
    assert parse_gpus("all") == [] and parse_gpus(" ALL ") == []
    assert resolve_gpus("all", 4) == (0, 1, 2, 3)
    assert resolve_gpus("2,0", 4) == (2, 0)
    assert resolve_gpus("1,1,3", 4) == (1, 3)
    uuids = ["GPU-aaaa-1111", "GPU-bbbb-2222", "GPU-cccc-3333"]
    assert resolve_gpus("GPU-bbbb,0", 3, uuids) == (1, 0)
    for bad in ("4", "GPU-dddd", "GPU-", "0,,1", ""):
        with pytest.raises(UsageError, match="--gpus"):
            resolve_gpus(bad, 4, uuids)
    assert units_per_gpu(8, 8) == 1 and units_per_gpu(9, 8) == 2 and units_per_gpu(1, 4) == 1


def _fake_node(monkeypatch, count: int, free: dict[int, int]) -> list[int]:
    """torch sees ``count`` GPUs with ``free`` bytes each; returns the set_device calls."""
    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    monkeypatch.setattr(torch.cuda, "mem_get_info",
                        lambda d=None: (free[0 if d is None else int(d)], 80 * GiB))
    monkeypatch.setattr(gpus_module, "device_count", lambda: count)
    return calls


def test_config_resolves_the_chosen_gpus_once(monkeypatch):
    _fake_node(monkeypatch, 4, {0: 40 * GiB, 1: 40 * GiB, 2: 40 * GiB, 3: 40 * GiB})
    cfg = Config(device="cuda", gpus="3,1", nprocs=4, omp_nthreads=1, mem_gb=8).resolve()
    assert cfg.gpus == "3,1"
    run = cfg.runtime()
    assert run.gpus == (3, 1) and run.nprocs == 4
    # two units per GPU share its budget (not all four units one GPU's)
    assert run.data_budget_bytes == int(GPU_FRACTION * 40 * GiB / 2)
    assert Runtime.from_json(run.to_json()) == run
    assert Config(device="cuda", nprocs=2, omp_nthreads=1, mem_gb=8).resolve().gpus == "0,1,2,3"
    with pytest.raises(UsageError, match="--gpus 7"):
        Config(device="cuda", gpus="7").resolve()
    with pytest.raises(UsageError, match="--gpus"):
        Config(gpus="0,,1").validate()


def test_gpus_option_reaches_the_config(tmp_path):
    args = build_parser().parse_args([str(tmp_path), str(tmp_path / "out"), "group",
                                      "--gpus", "0,2"])
    assert build_config(args).gpus == "0,2"


def test_leases_round_robin_and_least_loaded_first(tmp_path):
    with gpu_lease((0, 1), tmp_path) as a, gpu_lease((0, 1), tmp_path) as b:
        assert (a, b) == ((0, 0), (1, 0))  # one unit per GPU before any shares
        with gpu_lease((0, 1), tmp_path) as c, gpu_lease((0, 1), tmp_path) as d:
            assert (c, d) == ((0, 1), (1, 1))
        # the second slots are free again and both GPUs hold one unit: the fifth unit's turn
        # starts at GPU 0, which has a free second slot
        with gpu_lease((0, 1), tmp_path) as e:
            assert e == (0, 1)
    with gpu_lease((2, 5, 7), tmp_path) as f:
        assert f == (7, 0)  # nothing held: the sixth turn starts at the third GPU


def _hold(root: str, barrier, out) -> None:
    with gpu_lease((0, 1, 2), Path(root)) as (gpu, slot):
        out.put((gpu, slot))
        barrier.wait(timeout=20)  # every process holds its lease at the same time


def test_concurrent_processes_get_their_own_gpus(tmp_path):
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_hold, args=(str(tmp_path), barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    got = sorted(out.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert all(p.exitcode == 0 for p in procs)
    gpus = sorted(g for g, _ in got)
    assert sorted(set(gpus)) == [0, 1, 2]  # all three GPUs used, one of them twice
    assert sorted(s for _, s in got) == [0, 0, 0, 1]


def test_placed_sets_the_device_and_the_budget_follows_its_gpu(monkeypatch, tmp_path):
    calls = _fake_node(monkeypatch, 2, {0: 10 * GiB, 1: 40 * GiB})
    run = Runtime(device="cuda", threads=1, data_budget_bytes=1, gpus=(0, 1), nprocs=4)
    with placed(run, tmp_path, "vae-a") as a, placed(run, tmp_path, "vae-b") as b:
        assert (a.gpu, b.gpu) == (0, 1) and calls == [0, 1]
        assert a.data_budget_bytes == int(GPU_FRACTION * 10 * GiB / 2)
        assert b.data_budget_bytes == int(GPU_FRACTION * 40 * GiB / 2)
    # a cluster job that sees fewer GPUs than the parent resolved keeps the ones it has
    monkeypatch.setattr(gpus_module, "device_count", lambda: 1)
    with placed(Runtime("cuda", 1, 1, gpus=(1,), nprocs=1), tmp_path / "job") as c:
        assert c.gpu == 0
    cpu = Runtime("cpu", 1, 123)
    with placed(cpu, tmp_path) as same:
        assert same is cpu


def test_status_file_and_log_show_the_assignment(tmp_path, caplog):
    status = RunStatus(tmp_path / "status.json", "group")
    status.note("gpus", [0, 1])
    progress = tmp_path / "progress.json"
    status.unit_started("vae_l-8_seed-0_fold-1", progress)
    write_unit_progress(progress, 0, 5, gpu=1)
    with caplog.at_level(logging.INFO, logger="vaefusion.status"):
        assert status._refresh()
    snap = status.snapshot()
    assert snap["gpus"] == [0, 1]
    assert snap["running"][0]["gpu"] == 1 and snap["running"][0]["epoch"] == 0
    assert "vae_l-8_seed-0_fold-1 runs on GPU 1" in caplog.text
