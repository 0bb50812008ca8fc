"""One training across processes: 2 gloo ranks on the CPU against one process with the same
global batch, and a killed rank that ends the job with a clear error instead of a hang."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_training import _restore_determinism, make_cache  # noqa: F401 (autouse fixture)
from vaefusion.config import Config
from vaefusion.training.distributed import chunk_sizes, shard_range, split_subjects
from vaefusion.training.trainer import Trainer

HERE = Path(__file__).parent
#: The tiny model of the cost knobs; a global batch of 3 over 2 ranks gives uneven shards
#: (2 and 1 subjects) and, with 8 training subjects, a last batch where rank 1 has nothing.
OPTIONS = {"epochs": 2, "batch_subjects": 3, "width": 0.125, "lr": 2e-3, "omp_nthreads": 1}
FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in OPTIONS.items()]
#: Not bitwise: float32 gradients summed in another order (two shard backwards plus an
#: all-reduce, against one whole-batch backward) and the variance's SSE summed in float64
#: across ranks differ in the last bits, which Adam's first steps (m / sqrt(v), near sign(g))
#: pass on. Measured: 3.5e-7 largest weight difference after 2 epochs; losses agree to 1e-13.
ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp") / "cache"
    make_cache(root, n_subjects=9)
    return root


def torchrun(script: list[str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "--monitor-interval", "0.2", *script, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE)


def test_shards_and_noise_chunks():
    assert [shard_range(3, r, 2) for r in (0, 1)] == [(0, 2), (2, 3)]
    assert [shard_range(1, r, 2) for r in (0, 1)] == [(0, 1), (1, 1)]
    assert [shard_range(10, r, 4) for r in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert chunk_sizes(7, 3) == [3, 3, 1] and chunk_sizes(2, 5) == [2]
    paths = [Path(f"s{i}.npy") for i in range(10)]
    train, val = split_subjects(paths, 0.1, 0)
    assert len(val) == 1 and sorted(train + val) == sorted(paths)
    assert split_subjects(paths, 0.1, 0) == (train, val)


@pytest.mark.slow
@pytest.mark.parametrize("scaling", ["maxabs", "voxelwise"])
def test_two_gloo_ranks_train_the_single_process_model(cache, tmp_path, scaling):
    out = tmp_path / "ddp"
    run = torchrun(["-m", "vaefusion.cli.train_ddp"], str(cache), str(out), "--device=cpu",
                   "--latent-dim=8", f"--scaling={scaling}", *FLAGS)
    assert run.returncode == 0, run.stderr[-3000:]
    cfg = Config(device="cpu", scaling=scaling, **OPTIONS).resolve()
    train, val = split_subjects(sorted(cache.glob("*.npy")), cfg.val_fraction, cfg.cv_seed)
    single = Trainer(cfg, cfg.runtime(), 8, 0, train, val, tmp_path / "one")
    single.fit()
    state = torch.load(out / "last" / "checkpoint.pt", weights_only=True)
    ref = single.get_weights()
    assert state["model"].keys() == ref.keys()
    for name, w in ref.items():
        torch.testing.assert_close(state["model"][name], w, atol=ATOL, rtol=RTOL, msg=name)
    # the comparison must be able to fail: training moved the weights far beyond the tolerance
    init = Trainer(cfg, cfg.runtime(), 8, 0, train, val, tmp_path / "init").get_weights()
    moved = max(float((ref[k] - init[k]).abs().max()) for k in ref)
    assert moved > 100 * ATOL
    # the same objective: the reduced losses and the calibrated sigma match too
    for mine, theirs in zip(state["history"], single.history, strict=True):
        for key in ("train_loss", "val_loss", "sigma", "train_r2", "val_r2", "train_kl"):
            assert mine[key] == pytest.approx(getattr(theirs, key), rel=1e-4, abs=1e-5), key
    assert state["epoch"] == 1 and (out / "best").is_dir()
    # resumable: the same command with more epochs continues after epoch 2
    again = torchrun(["-m", "vaefusion.cli.train_ddp"], str(cache), str(out), "--device=cpu",
                     "--latent-dim=8", f"--scaling={scaling}", *FLAGS, "--epochs=3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stderr and "epoch 3/3" in again.stderr


def test_a_killed_rank_ends_the_job_with_a_clear_error(cache, tmp_path):
    run = torchrun([str(HERE / "ddp_worker.py")], str(cache), str(tmp_path / "out"),
                   "--device=cpu", "--latent-dim=8", "--timeout-s=30", *FLAGS, "--epochs=20")
    assert run.returncode != 0
    text = run.stdout + run.stderr
    # torchrun names the rank that died and how; the survivor says what happened, if it
    # reached its next collective before torchrun stopped it
    assert "ddp_worker.py FAILED" in text and "local_rank: 1" in text, text[-3000:]
    assert "Signal 9 (SIGKILL)" in text
    assert "epoch 20/20" not in text
