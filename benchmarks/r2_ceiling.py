"""How far a perfect reconstruction can take the VAE's two reconstruction R^2 on simulated maps.

    python benchmarks/r2_ceiling.py --quick     # CI: 12 subjects, 4 ICNs at 9 mm, seconds
    python benchmarks/r2_ceiling.py             # 24 subjects, 53 ICNs at 9 mm, noise 1 / 0.5 / 0.25

The training history reports two R^2 (``vaefusion.training.metrics``): ``r2`` against each
modality's mean intensity and ``r2_subject`` against each modality's mean *map* over the
subjects. Between-subject variation of simulated (and real) ICN maps is mostly voxel noise,
which no encoder with a small latent can reproduce. This script measures the ceiling: it
simulates a dataset and its noiseless twin (same seed, ``--noise 0``: the same subjects, shapes,
effects and site offsets without the smooth noise), preprocesses both as vaefusion does, and
scores the twin's volumes as if they were a perfect VAE's reconstructions of the noisy ones.

``--noise 0`` also switches off the gray matter's regional variability, so the GM ceiling is
conservative; the ICN ceiling is exact for this simulator.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from simcache import simulate_and_cache

QUICK = {"n": 12, "noise": (1.0,), "sim": ["--n-components", "4"]}
FULL = {"n": 24, "noise": (1.0, 0.5, 0.25), "sim": []}
GRID = ["--icn-res", "9", "--gm-res", "4.5"]


def stacks(root: Path, n: int, seed: int, noise: float, sim: list[str]) -> np.ndarray:
    """Simulate and preprocess; ``(subjects, modalities, X, Y, Z)`` in float64."""
    from vaefusion.inputs.cache import load_stack

    files = simulate_and_cache(root / f"noise-{noise:g}", root / f"cache-{noise:g}",
                               "--n-subjects", str(n), "--seed", str(seed), "--noise",
                               str(noise), *GRID, *sim)
    return np.stack([np.asarray(load_stack(f), dtype=np.float64) for f in files])


def ceiling(noisy: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Both R^2 of ``truth`` as the reconstruction of ``noisy``, averaged over modalities as
    the training history averages them, and the ICN-only and GM-only values."""
    maps = noisy.mean(0, keepdims=True)
    levels = maps.mean(axis=(2, 3, 4), keepdims=True)
    sse = ((noisy - truth) ** 2).sum(axis=(0, 2, 3, 4))
    dev = noisy - maps
    r2_map = 1 - sse / (dev ** 2).sum(axis=(0, 2, 3, 4))
    r2_level = 1 - sse / ((noisy - levels) ** 2).sum(axis=(0, 2, 3, 4))
    structured = ((truth - truth.mean(0, keepdims=True)) ** 2)[:, :-1].sum()
    return {
        "r2": float(r2_level.mean()),
        "r2_subject": float(r2_map.mean()),
        "r2_subject_icn": float(r2_map[:-1].mean()),
        "r2_subject_gm": float(r2_map[-1]),
        "noise_share_icn": float(1 - structured / (dev[:, :-1] ** 2).sum()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="12 subjects, 4 ICNs, noise 1 (CI)")
    p.add_argument("--seed", type=int, default=4)
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    print("| --noise | oracle r2 | oracle r2_subject | r2_subject ICNs | r2_subject GM | "
          "noise share of ICN between-subject variance |")
    print("|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="vaefusion-r2-") as tmp:
        root = Path(tmp)
        truth = stacks(root / "truth", cfg["n"], args.seed, 0.0, cfg["sim"])
        for noise in cfg["noise"]:
            c = ceiling(stacks(root / "noisy", cfg["n"], args.seed, noise, cfg["sim"]), truth)
            print(f"| {noise:g} | {c['r2']:.3f} | {c['r2_subject']:.3f} | "
                  f"{c['r2_subject_icn']:.3f} | {c['r2_subject_gm']:.3f} | "
                  f"{c['noise_share_icn']:.1%} |", flush=True)
            if not c["r2"] > c["r2_subject"]:
                print("unexpected: the level baseline should be the weaker one", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
