"""How far a perfect reconstruction can take the VAE's two reconstruction R^2 on simulated maps.

    python benchmarks/r2_ceiling.py --quick     # CI: 12 subjects, 4 ICNs at 9 mm, seconds
    python benchmarks/r2_ceiling.py             # 60 subjects, 53 ICNs at 3 mm, read at 12 and 6 mm

The training history reports two R^2 (``vaefusion.training.metrics``): ``r2`` against each
modality's mean intensity over the *training* subjects and ``r2_subject`` against their mean
*map*, both on validation subjects. This script measures their ceiling the way validation
measures them: it simulates a dataset and its noiseless twin (same seed, ``--noise 0``: the
same subjects, topography, shared factors, site fields and effects, without the session-level
measurement noise), preprocesses both as vaefusion does, and scores the twin's volumes as if
they were a perfect VAE's reconstructions of the noisy ones.

Two biases of the first version are gone:
- the baselines (mean level, mean map) come from the training subjects of a 3-fold split and
  are scored on the held-out fold, as validation does (a subject inside its own mean map
  shrinks the baseline's error and with it the ceiling);
- both twins are divided by the *noisy* map's maximum |value| (the divisor a model sees);
  each scaled by its own maximum, the twin was 0.86-0.92 times too bright.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

QUICK = {"n": 12, "res": 9.0, "factors": (1,), "sim": ["--n-components", "4"]}
FULL = {"n": 60, "res": 3.0, "factors": (4, 2), "sim": []}
FOLDS = 3


def raw_stacks(ds: Path) -> np.ndarray:
    """Every subject's unscaled stack (GM on the ICN grid), ``(subjects, n + 1, X, Y, Z)``."""
    from vaefusion.inputs.preprocess import stack_subject

    with open(ds / "participants.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    out = []
    for row in rows:
        sub = row["participant_id"]
        icn = nib.load(next((ds / "derivatives" / "neuromark" / sub).rglob("*.nii.gz")))
        gm = nib.load(next((ds / "derivatives" / "spm" / sub).rglob("*.nii.gz")))
        out.append(stack_subject(icn.get_fdata(dtype=np.float32), icn.affine,
                                 gm.get_fdata(dtype=np.float32), gm.affine))
    return np.stack(out)


def scale_like(noisy: np.ndarray, twin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both divided by the noisy volume's maximum |value| (vaefusion's max-abs scaling)."""
    peak = np.abs(noisy).reshape(*noisy.shape[:2], -1).max(axis=2)[..., None, None, None]
    return noisy / peak, twin / peak


def downsample(x: np.ndarray, factor: int) -> np.ndarray:
    """Area averaging as ``--downsample`` does it."""
    if factor == 1:
        return x
    from vaefusion.model.network import downsampled_grid

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    size = downsampled_grid(t.shape[-3:], factor)
    return F.adaptive_avg_pool3d(t.flatten(0, 1), size).reshape(*t.shape[:2], *size).numpy()


def ceiling(noisy: np.ndarray, truth: np.ndarray, folds: int = FOLDS) -> dict[str, float]:
    """Both R^2 of ``truth`` as the reconstruction of ``noisy``, per modality with training-fold
    baselines scored on the held-out fold (summed over folds), then averaged over modalities
    as the training history averages them; plus the ICN-only and GM-only values."""
    n = noisy.shape[0]
    order = np.random.default_rng(0).permutation(n)
    sse = np.zeros(noisy.shape[1])
    dev_map = np.zeros_like(sse)
    dev_level = np.zeros_like(sse)
    for k in range(folds):
        held = order[k::folds]
        train = np.setdiff1d(order, held)
        maps = noisy[train].mean(0, keepdims=True)
        levels = maps.mean(axis=(2, 3, 4), keepdims=True)
        x = noisy[held]
        sse += ((x - truth[held]) ** 2).sum(axis=(0, 2, 3, 4))
        dev_map += ((x - maps) ** 2).sum(axis=(0, 2, 3, 4))
        dev_level += ((x - levels) ** 2).sum(axis=(0, 2, 3, 4))
    r2_map, r2_level = 1 - sse / dev_map, 1 - sse / dev_level
    dev = noisy - noisy.mean(0, keepdims=True)
    structured = ((truth - truth.mean(0, keepdims=True)) ** 2)[:, :-1].sum()
    # Inside each network (template subject's mean map >= 30 % of its peak), as in
    # docs/simulation.md: the whole box adds the noise of voxels where no network is.
    mean_t = np.abs(truth.mean(0))[:-1]
    nets = mean_t >= 0.3 * mean_t.reshape(len(mean_t), -1).max(axis=1)[:, None, None, None]
    var_noisy = noisy[:, :-1].var(axis=0)[nets].sum()
    var_truth = truth[:, :-1].var(axis=0)[nets].sum()
    return {
        "noise_share_in_networks": float(1 - var_truth / var_noisy),
        "r2": float(r2_level.mean()),
        "r2_subject": float(r2_map.mean()),
        "r2_subject_icn": float(r2_map[:-1].mean()),
        "r2_subject_gm": float(r2_map[-1]),
        "noise_share_icn": float(1 - structured / (dev[:, :-1] ** 2).sum()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="12 subjects, 4 ICNs at 9 mm (CI)")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--n-subjects", type=int, default=None)
    args = p.parse_args(argv)
    from vaefusion.cli.simulate import main as simulate

    cfg = QUICK if args.quick else FULL
    n = args.n_subjects or cfg["n"]
    res = cfg["res"]
    common = ["--n-subjects", str(n), "--seed", str(args.seed), "-q", "--icn-res", f"{res:g}",
              "--gm-res", f"{res / 2:g}", *cfg["sim"]]
    with tempfile.TemporaryDirectory(prefix="vaefusion-r2-") as tmp:
        root = Path(tmp)
        if simulate([str(root / "noisy"), *common]) or simulate(
                [str(root / "twin"), *common, "--noise", "0"]):
            return 1
        noisy, twin = scale_like(raw_stacks(root / "noisy"), raw_stacks(root / "twin"))
    print(f"{n} subjects, amplitude arm, seed {args.seed}, simulated at {res:g} mm; "
          f"{FOLDS}-fold training-subject baselines")
    print("| grid | oracle r2 | oracle r2_subject | r2_subject ICNs | r2_subject GM | "
          "noise share of ICN between-subject variance (in networks / whole box) |")
    print("|---|---:|---:|---:|---:|---:|")
    for factor in cfg["factors"]:
        c = ceiling(downsample(noisy, factor), downsample(twin, factor))
        print(f"| {res * factor:g} mm | {c['r2']:.3f} | {c['r2_subject']:.3f} | "
              f"{c['r2_subject_icn']:.3f} | {c['r2_subject_gm']:.3f} | "
              f"{c['noise_share_in_networks']:.1%} / {c['noise_share_icn']:.1%} |", flush=True)
        if not all(np.isfinite(v) for v in c.values()):
            print("unexpected: a non-finite R^2", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
