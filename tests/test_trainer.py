"""The steppable Trainer: epoch by epoch equals fit, state round trips, federated weights."""

from __future__ import annotations

import pytest
import torch

from test_training import make_cache, tiny_config
from vaefusion.training.trainer import Trainer


@pytest.fixture(autouse=True)
def _restore_determinism():
    """set_seed switches on deterministic algorithms process-wide; leave others' tests alone."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("cache"))


def make_trainer(cache, out, seed: int = 0, **kw) -> Trainer:
    cfg = tiny_config(**{"epochs": 3, **kw})
    return Trainer(cfg, cfg.runtime(), 8, seed, cache[:4], cache[4:], out)


def losses(trainer: Trainer) -> list[tuple[float, ...]]:
    """The history without its timings."""
    return [(h.epoch, h.train_loss, h.train_recon, h.train_kl, h.val_loss, h.val_recon, h.val_kl)
            for h in trainer.history]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stepping_epochs_equals_fit(cache, tmp_path):
    stepped = make_trainer(cache, tmp_path / "stepped")
    assert not stepped.done and stepped.epochs_done == 0
    stats = [stepped.run_epoch() for _ in range(3)]
    assert [s.epoch for s in stats] == [1, 2, 3]
    assert stepped.done and not stepped.stopped
    with pytest.raises(RuntimeError, match="done"):
        stepped.run_epoch()

    fitted = make_trainer(cache, tmp_path / "fitted")
    result = fitted.fit()
    assert losses(stepped) == losses(fitted)
    assert_same_weights(stepped.get_weights(), fitted.get_weights())
    assert (stepped.best_epoch, stepped.best_loss) == (result.best_epoch, result.best_val_loss)
    # fit on a trainer that is done trains nothing and returns the same best model
    again = stepped.fit()
    assert again.epochs_run == 3 and again.resumed_from is None
    assert_same_weights(again.model.state_dict(), result.model.state_dict())
    # the resumable checkpoint is the trainer's state after its last epoch
    saved = torch.load(stepped.checkpoint_path, weights_only=True)
    assert saved["epoch"] == 2 and len(saved["history"]) == 3
    assert_same_weights(saved["model"], stepped.get_weights())


def test_state_round_trip_through_disk_continues_identically(cache, tmp_path):
    first = make_trainer(cache, tmp_path / "first")
    first.run_epoch()
    path = tmp_path / "state.pt"
    torch.save(first.state_dict(), path)
    first.run_epoch()
    first.run_epoch()

    # a new trainer re-seeds the process: only the loaded state can make it continue alike
    second = make_trainer(cache, tmp_path / "second")
    second.load_state_dict(torch.load(path, weights_only=True))
    assert second.epochs_done == 1 and losses(second) == losses(first)[:1]
    second.run_epoch()
    second.run_epoch()
    assert losses(second) == losses(first)
    assert_same_weights(second.get_weights(), first.get_weights())
    a, b = first.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    assert all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i])

    with pytest.raises(ValueError, match="other settings"):
        make_trainer(cache, tmp_path / "other", seed=1).load_state_dict(first.state_dict())


def test_resume_only_from_a_readable_checkpoint_of_the_same_settings(cache, tmp_path):
    out = tmp_path / "run"
    ran = make_trainer(cache, out)
    ran.run_epoch()
    assert ran.checkpoint_path == out / "last" / "checkpoint.pt"

    same = make_trainer(cache, out, epochs=5)  # more epochs: still the same run
    assert same.resume() and same.resumed_from == 1 and same.epochs_done == 1
    assert_same_weights(same.get_weights(), ran.get_weights())
    other = make_trainer(cache, out, seed=1)
    assert not other.resume() and other.epochs_done == 0 and other.resumed_from is None

    ran.checkpoint_path.write_bytes(b"not a checkpoint")
    fresh = make_trainer(cache, out)
    assert not fresh.resume() and fresh.epochs_done == 0


def test_weights_round_trip_and_the_optimizer_stays_local(cache, tmp_path):
    a = make_trainer(cache, tmp_path / "a", seed=0)
    b = make_trainer(cache, tmp_path / "b", seed=1)
    a.run_epoch()
    b.run_epoch()
    wa = a.get_weights()
    assert not torch.equal(next(iter(wa.values())), next(iter(b.get_weights().values())))
    moments = {i: {k: v.clone() for k, v in s.items()}
               for i, s in b.optimizer.state_dict()["state"].items()}

    b.set_weights(wa)
    wb = b.get_weights()
    assert_same_weights(wb, wa)
    x = b.train_data.dataset.load(0)
    with torch.no_grad():
        assert torch.equal(a.model.encode(x)[0], b.model.encode(x)[0])
    after = b.optimizer.state_dict()["state"]
    assert all(torch.equal(moments[i][k], after[i][k]) for i in moments for k in moments[i])

    # the optimizer still steps the parameters it was given, and get_weights was a copy
    b.run_epoch()
    assert any(not torch.equal(wb[k], v) for k, v in b.model.state_dict().items())
    assert_same_weights(wb, wa)
