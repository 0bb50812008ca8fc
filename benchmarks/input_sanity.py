"""The thresholds of the template checks (inputs/template_checks.py), measured.

ICN identity: simulated subjects of every arm, and the real NeuroMark template itself (on the
3 mm grid), against the same maps with their volumes permuted, two neighbouring components
swapped, and smooth random maps standing for another template. GMV space: the simulated MNI
grey matter against the same maps shifted and in a native-like space (rotated, rescaled, the
origin moved to a corner of the field of view).

    python benchmarks/input_sanity.py            # 4 subjects per arm, NeuroMark's 3 mm grid
    python benchmarks/input_sanity.py --quick    # 2 subjects per arm (about a minute)

Prints, per case, the worst score over subjects and volumes, next to the threshold.
"""

from __future__ import annotations

import argparse
import glob
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from vaefusion.cli.simulate import main as simulate
from vaefusion.inputs import template_checks as tc
from vaefusion.inputs.resample import resample_to_grid
from vaefusion.simulate.config import ARMS
from vaefusion.simulate.icn import icn_templates


def _rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    rot = np.eye(4)
    rot[1:3, 1:3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return rot


def gm_variants(affine: np.ndarray) -> dict[str, np.ndarray]:
    """The same voxels under other affines: a misregistered map is one whose voxels sit
    elsewhere in MNI space."""
    out = {}
    for mm in (6, 9, 12, 15, 20):
        for axis in (0, 1, 2):
            a = affine.copy()
            a[axis, 3] += mm
            out[f"shift {mm} mm axis {axis}"] = a
    corner = affine.copy()
    corner[:3, 3] = 0.0  # a scanner origin at the first voxel
    out["native-like: origin at a corner"] = corner
    native = _rotation(15) @ np.diag([1.1, 1.1, 1.1, 1]) @ affine
    native[:3, 3] += (0.0, 25.0, 30.0)
    out["native-like: rotated 15 deg, x1.1, +30 mm"] = native
    out["native-like: rotated 10 deg, x0.9"] = _rotation(10) @ np.diag([0.9, 0.9, 0.9, 1]) @ affine
    return out


def measure_gm(paths: list[str], grid_affine: np.ndarray, grid_shape: tuple[int, int, int]
               ) -> dict[str, tuple[float, float]]:
    """Worst (inside, r) per case over the subjects."""
    worst: dict[str, tuple[float, float]] = {}
    for p in paths:
        img = nib.load(p)
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3])
        for case, aff in {"MNI (as simulated)": img.affine, **gm_variants(img.affine)}.items():
            on_grid = resample_to_grid(data, aff, grid_affine, grid_shape)
            s = tc.gm_scores(data, aff, on_grid, grid_affine)
            if case.startswith("MNI"):
                prev = worst.get(case, (1.0, 1.0))
                worst[case] = (min(prev[0], s.inside), min(prev[1], s.r))
            else:
                prev = worst.get(case, (0.0, -1.0))
                worst[case] = (max(prev[0], s.inside), max(prev[1], s.r))
    return worst


def icn_scores(r: np.ndarray, order: np.ndarray) -> tuple[float, float]:
    """(largest margin of another component over the expected one, smallest own r)."""
    own = r[np.arange(r.shape[0]), order]
    others = r.copy()
    others[np.arange(r.shape[0]), order] = -np.inf
    return float((others.max(axis=1) - own).max()), float(own.min())


def measure_icn(maps: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator
                ) -> dict[str, tuple[float, float]]:
    """Per case, over subjects: (worst margin, smallest own r) in template order, and the
    mismatched volume's (margin, r_own) for the wrong cases (the least alarming one)."""
    cases: dict[str, list[tuple[float, float]]] = {}
    for data, affine in maps:
        n = data.shape[3]
        ident = np.arange(n)
        r = tc.icn_correlations(data, affine)
        cases.setdefault("template order", []).append(icn_scores(r, ident))
        perm = rng.permutation(n)
        # the volumes hold components perm; a check must flag at least one: the best volume
        # is the largest margin over the volumes that moved
        moved = perm != ident
        rp = r[perm]
        m = [icn_scores(rp[k:k + 1], ident[k:k + 1]) for k in np.flatnonzero(moved)]
        cases.setdefault("volumes permuted", []).append(max(m))
        # the hardest swap: two neighbours in template order
        for k in range(0, n - 1, 13):
            sw = ident.copy()
            sw[[k, k + 1]] = sw[[k + 1, k]]
            cases.setdefault("neighbours swapped", []).append(
                max(icn_scores(r[sw][j:j + 1], ident[j:j + 1]) for j in (k, k + 1)))
        noise = np.stack([ndimage.gaussian_filter(rng.standard_normal(data.shape[:3]), 3.0)
                          for _ in range(n)], axis=-1)
        rn = tc.icn_correlations(noise, affine)
        cases.setdefault("another template (smooth random maps)", []).append(
            max(icn_scores(rn[k:k + 1], ident[k:k + 1]) for k in range(n)))
    out = {}
    for case, vals in cases.items():
        margins, owns = zip(*vals, strict=True)
        if case == "template order":
            out[case] = (max(margins), min(owns))
        else:  # the least alarming wrong input
            out[case] = min(vals, key=lambda v: (v[0] - tc.ICN_MARGIN, tc.ICN_MIN_R - v[1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 subjects per arm")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = 2 if args.quick else 4
    rng = np.random.default_rng(args.seed)
    icn_maps, gm_paths = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, arm in enumerate(ARMS):
            ds = Path(tmp) / arm
            assert simulate([str(ds), "--n-subjects", str(n), "--seed", str(args.seed + i),
                             "--arm", arm, "-q"]) == 0
            for p in sorted(glob.glob(f"{ds}/derivatives/neuromark/**/*.nii.gz",
                                      recursive=True)):
                img = nib.load(p)
                icn_maps.append((np.asarray(img.dataobj, dtype=np.float32), img.affine))
            gm_paths += sorted(glob.glob(f"{ds}/derivatives/spm/**/*.nii.gz", recursive=True))
        grid_affine, grid_shape = icn_maps[0][1], icn_maps[0][0].shape[:3]
        real, _ = icn_templates(3.0)
        icn_maps.append((np.moveaxis(np.asarray(real), 0, -1), grid_affine))
        print(f"ICN identity ({len(icn_maps)} subjects: {n} per arm and the real NeuroMark "
              f"template): thresholds margin > {tc.ICN_MARGIN} or own r < {tc.ICN_MIN_R}")
        for case, (margin, own) in measure_icn(icn_maps, rng).items():
            print(f"  {case:40s} margin {margin:+.3f}  own r {own:.3f}")
        print(f"GMV space ({len(gm_paths)} subjects): thresholds inside < {tc.GM_MIN_INSIDE} "
              f"or r < {tc.GM_MIN_R} (warn below r {tc.GM_WARN_R})")
        for case, (inside, r) in measure_gm(gm_paths, grid_affine, grid_shape).items():
            print(f"  {case:40s} inside {inside:.3f}  r {r:.3f}")


if __name__ == "__main__":
    main()
