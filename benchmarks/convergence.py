"""Convergence of the VAE against the learning rate: the evidence behind the default --lr,
--epochs and --patience (training and validation losses only; no test fold exists here).

    python benchmarks/convergence.py --quick        # CI: 12 tiny subjects, 3 epochs, seconds
    python benchmarks/convergence.py                # 60 subjects at --downsample 4, 300 epochs

Simulates ``--n-subjects`` subjects (default effects, ``--seed``), preprocesses them as the
participant level does, and trains one VAE per learning rate with :class:`Trainer` on a fixed
split: 18 patients + 18 controls to train, 2 + 2 to validate (the quick mode: 9 / 3). Every
run has the same seed, data and knobs (``--likelihood sigma``, ``--width 0.125``,
``--downsample 4``, latent dim 16, one subject per batch) and patience = epochs, so nothing
stops early. Per learning rate it prints the validation loss, KL per volume, active units and
both R^2 at a few epochs, the best epoch, and the longest stretch of epochs without a new
best validation loss (what a patience must outlast).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from simcache import simulate_and_cache

FULL = {"n": 60, "epochs": 300, "lrs": (1e-4, 1e-3, 3e-3), "sim": [], "downsample": 4,
        "split": (18, 2), "latent": 16, "report": (10, 20, 40, 60, 100, 150, 200, 300)}
QUICK = {"n": 12, "epochs": 3, "lrs": (1e-3, 3e-3), "downsample": 1, "split": (3, 3),
         "sim": ["--icn-res", "9", "--gm-res", "4.5", "--n-components", "4"], "latent": 4,
         "report": (1, 3)}


def cache(root: Path, n: int, seed: int, sim: list[str]) -> list[Path]:
    """Simulate and preprocess ``n`` subjects; the cached stacks, sorted."""
    return sorted(simulate_and_cache(root / "bids", root / "cache", "--n-subjects", str(n),
                                     "--seed", str(seed), *sim))


def longest_wait(losses: list[float]) -> tuple[int, int]:
    """The longest run of epochs without a new best loss, and the epoch it started after."""
    best, best_at, gap, after = float("inf"), 0, 0, 0
    for epoch, loss in enumerate(losses, start=1):
        if loss < best:
            if epoch - best_at - 1 > gap:
                gap, after = epoch - best_at - 1, best_at
            best, best_at = loss, epoch
    return gap, after


def run(files: list[Path], lr: float, cfg: dict, root: Path) -> list:
    from vaefusion.config import Config
    from vaefusion.inputs.cache import read_meta
    from vaefusion.training.trainer import Trainer

    sz = [f for f in files if read_meta(f).label == "SZ"]
    hc = [f for f in files if read_meta(f).label != "SZ"]
    k, v = cfg["split"]
    train, val = sz[:k] + hc[:k], sz[k:k + v] + hc[k:k + v]
    c = Config(epochs=cfg["epochs"], patience=cfg["epochs"], width=0.125,
               downsample=cfg["downsample"], batch_subjects=1, lr=lr, device="cpu",
               likelihood="sigma", beta=1.0, scaling="maxabs").resolve()  # as measured
    t = Trainer(c, c.runtime(), cfg["latent"], 0, train, val, root / f"lr{lr:g}")
    t0 = time.monotonic()
    while not t.done:
        t.run_epoch()
    print(f"lr {lr:g}: {len(t.history)} epochs in {time.monotonic() - t0:.0f} s", flush=True)
    return t.history


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="12 tiny subjects, 3 epochs (CI)")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--epochs", type=int, default=None, help="override the epochs")
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.epochs:
        cfg["epochs"] = args.epochs
    with tempfile.TemporaryDirectory(prefix="vaefusion-convergence-") as tmp:
        files = cache(Path(tmp), cfg["n"], args.seed, cfg["sim"])
        histories = {lr: run(files, lr, cfg, Path(tmp)) for lr in cfg["lrs"]}
    print("\n| lr | epoch | val loss | val KL/volume | val active units | val R^2 | "
          "val subject R^2 |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for lr, hist in histories.items():
        for h in hist:
            if h.epoch in cfg["report"]:
                print(f"| {lr:g} | {h.epoch} | {h.val_loss:.1f} | {h.val_kl:.2f} | "
                      f"{h.val_active_units} | {h.val_r2:.3f} | {h.val_r2_subject:.3f} |")
    print("\n| lr | best epoch | best val loss | longest stretch without a new best |")
    print("|---:|---:|---:|---|")
    for lr, hist in histories.items():
        losses = [h.val_loss for h in hist]
        best = min(range(len(losses)), key=losses.__getitem__)
        gap, after = longest_wait(losses)
        print(f"| {lr:g} | {best + 1} | {losses[best]:.1f} | {gap} epochs, after epoch "
              f"{after} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
