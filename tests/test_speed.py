"""GPU speed switches and version traps, tested on the CPU (the GPU facts are faked)."""

from __future__ import annotations

import logging

import pytest
import torch

from test_trainer import make_trainer
from test_training import _restore_determinism, make_cache  # noqa: F401 (autouse fixture)
from vaefusion.config import Config
from vaefusion.training import speed
from vaefusion.training.speed import resolve_bf16, version_traps

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("cache"))


def test_version_traps_name_the_published_bugs():
    assert version_traps("2.8.0", 90501) == []
    assert version_traps("2.10.0", 91500) == []
    slow = version_traps("2.9.1+cu128", None)
    assert len(slow) == 1 and "#166122" in slow[0]
    for bad in (90800, 90900, 91002):
        assert any("#163539" in w for w in version_traps("2.8.0", bad))
    assert version_traps("2.8.0", 91100) == [] and version_traps("2.8.0", 90705) == []


def test_bf16_defaults_on_where_supported_and_falls_back_on_a_bad_cudnn(caplog):
    assert Config().bf16 is None  # auto
    assert resolve_bf16(None, CPU) is False and resolve_bf16(True, CPU) is False
    assert resolve_bf16(None, CUDA, supported=True, cudnn=91500) is True
    assert resolve_bf16(False, CUDA, supported=True, cudnn=91500) is False
    assert resolve_bf16(None, CUDA, supported=False, cudnn=91500) is False
    with caplog.at_level(logging.WARNING):
        assert resolve_bf16(None, CUDA, supported=True, cudnn=91002) is False
        assert resolve_bf16(True, CUDA, supported=True, cudnn=90800) is False
        assert resolve_bf16(True, CUDA, supported=False, cudnn=91500) is False
    assert caplog.text.count("#163539") == 2 and "no bf16 support" in caplog.text


def test_default_switches_leave_training_unchanged(cache, tmp_path):
    """Off by default: the same weights as a trainer that never heard of them."""
    a = make_trainer(cache, tmp_path / "a", epochs=1)
    a.fit()  # the torch RNG is global: each trainer seeds it, so fit before the next one
    b = make_trainer(cache, tmp_path / "b", epochs=1, channels_last=False, compile=False,
                     cuda_graphs=False, bf16=False)
    b.fit()
    assert a.bf16 is False
    wa, wb = a.get_weights(), b.get_weights()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_channels_last_trains_the_same_model(cache, tmp_path):
    a = make_trainer(cache, tmp_path / "a", epochs=1)
    a.fit()
    b = make_trainer(cache, tmp_path / "b", epochs=1, channels_last=True)
    conv = next(p for p in b.model.parameters() if p.dim() == 5)
    assert conv.is_contiguous(memory_format=torch.channels_last_3d)
    b.fit()
    wa, wb = a.get_weights(), b.get_weights()
    # Another memory layout sums in another order: equal to float tolerance. The default
    # per-volume variance divides each volume's gradient by its own squared error, so the
    # summation-order difference reaches the step too (measured: 1 of 55,296 weights off by
    # 3.4e-5 after one epoch), hence 1e-4 rather than 1e-5.
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-4, rtol=1e-3)
    assert (tmp_path / "b" / "best").is_dir()  # the layout does not stop the weights saving


def test_compile_and_cuda_graphs_switches(monkeypatch, cache, tmp_path, caplog):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append(kw))
    make_trainer(cache, tmp_path / "a", compile=True)
    assert calls == [{"mode": None}]
    with caplog.at_level(logging.INFO):
        make_trainer(cache, tmp_path / "b", cuda_graphs=True)  # CPU: ignored, plain compile off
    assert calls == [{"mode": None}] and "cuda_graphs applies to CUDA only" in caplog.text
    model = torch.nn.Linear(2, 2)
    speed.apply_switches(model, CUDA, channels_last=False, compile=False, cuda_graphs=True)
    assert calls[-1] == {"mode": "reduce-overhead"}
