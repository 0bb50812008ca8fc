"""How large each planted effect is, as a clinical paper would report it (``docs/simulation.md``).

    python benchmarks/effect_sizes.py --quick                       # CI: 16 subjects at 9 mm
    python benchmarks/effect_sizes.py --arm amplitude               # 120 subjects at 3 mm
    python benchmarks/effect_sizes.py --arm fusion -n 300 --res 6   # 300 subjects at 6 mm
    python benchmarks/effect_sizes.py --arm fusion --dataset DIR    # an existing dataset

It simulates an arm (or reads a simulated dataset), preprocesses every subject as vaefusion
does (GM resampled to the ICN grid, every volume max-abs scaled) and prints, per modality the
truth file lists as affected:

- **core d**: Cohen's d, voxel by voxel, averaged over the effect's core: the voxels where the
  expected difference is at least 80 % of its largest value (a mean over a core, not the
  largest voxel, so noise does not inflate it). Two estimates: the truth file's expected
  difference over the pooled within-group SD (the SD is the only estimated part, so it is
  precise at 40 subjects), and the sample d (HC mean - SZ mean over the same SD; its standard
  error is about ``sqrt(4 / n)``);
- **oracle AUC**: each subject's map projected on that modality's known expected difference (no
  training): what one modality can give at best. The all-modality oracle sums these projections
  over the affected modalities, each in units of its SD across subjects (no label is used).

Published effects that the simulator's defaults aim at: GM reductions in schizophrenia of
d 0.3-0.6 at the most affected regions (mega-analyses of cortical thickness and surface area,
van Erp et al. 2018, Biol Psychiatry 84:644; of subcortical volumes, van Erp et al. 2016, Mol
Psychiatry 21:547), and resting-state network differences of similar, small-to-moderate size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

#: The core of an effect: voxels where the expected |difference| reaches this share of its max.
CORE = 0.8


def pooled_sd(x: np.ndarray, hc: np.ndarray) -> np.ndarray:
    """Per-voxel pooled within-group SD of ``x`` ``(subjects, ...)``; ``hc`` a boolean per
    subject (the rest are patients)."""
    a, b = x[hc].astype(np.float64), x[~hc].astype(np.float64)
    pooled = ((a.shape[0] - 1) * a.var(0, ddof=1) + (b.shape[0] - 1) * b.var(0, ddof=1)) / (
        a.shape[0] + b.shape[0] - 2)
    return np.sqrt(pooled)


def cohens_d(difference: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """``difference / sd`` voxel by voxel, 0 where the SD is 0."""
    return np.where(sd > 0, difference / np.where(sd > 0, sd, 1.0), 0.0)


def core_d(d: np.ndarray, expected: np.ndarray) -> float:
    """Mean d over the voxels where ``|expected|`` is at least :data:`CORE` of its maximum."""
    core = np.abs(expected) >= CORE * np.abs(expected).max()
    return float(d[core].mean())


def auc(score: np.ndarray, hc: np.ndarray) -> float:
    """ROC-AUC of ``score`` for HC (higher = more HC-like), ties counted half."""
    from scipy.stats import rankdata

    r = rankdata(score)
    n1, n0 = int(hc.sum()), int((~hc).sum())
    return float((r[hc].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def measure(ds: Path, downsample: int = 1) -> dict[str, object]:
    """Per affected modality: core d and oracle AUC; and the all-modality and GMV oracles."""
    import nibabel as nib
    import torch

    from vaefusion.bench.calibration import oracle_scores
    from vaefusion.inputs.preprocess import scale_maxabs, stack_subject
    from vaefusion.model.network import downsample_volumes

    truth = json.loads((ds / "code" / "simulation.json").read_text())
    stacks = []
    for f in truth["files"]:
        icn, gm = nib.load(ds / f["icn"]), nib.load(ds / f["gm"])
        stack = stack_subject(icn.get_fdata(dtype=np.float32), icn.affine,
                              gm.get_fdata(dtype=np.float32), gm.affine)
        names = [str(i) for i in range(stack.shape[0])]
        stacks.append(scale_maxabs(stack, names, names))
    x = np.stack(stacks)
    expected = nib.load(ds / truth["expected_difference"]["file"]).get_fdata(dtype=np.float32)
    expected = np.moveaxis(expected, -1, 0)
    if downsample > 1:  # the grid the VAE and the baselines read (--downsample)
        x = downsample_volumes(torch.from_numpy(x).reshape(-1, 1, *x.shape[2:]),
                               downsample).reshape(*x.shape[:2], -1).numpy()
        expected = downsample_volumes(torch.from_numpy(expected).unsqueeze(1),
                                      downsample).squeeze(1).numpy()
    hc = np.array([p["diagnosis"] == "HC" for p in truth["participants"]])
    modalities = truth["expected_difference"]["modalities"]
    affected = [a["modality"] for a in truth["expected_difference"]["affected"]]
    idx = [modalities.index(m) for m in affected]
    scores = oracle_scores(x, expected)  # (subjects, modalities)
    rows = {}
    for m, i in zip(affected, idx, strict=True):
        xi, ei = x[:, i].reshape(x.shape[0], -1), expected[i].ravel()
        sd = pooled_sd(xi, hc)
        sample = xi[hc].mean(0) - xi[~hc].mean(0)
        rows[m] = {"core_d": core_d(cohens_d(ei, sd), ei),
                   "sample_d": core_d(cohens_d(sample, sd), ei),
                   "oracle_auc": auc(scores[:, i], hc)}
    out: dict[str, object] = {"n": int(hc.size), "arm": truth["arm"]["name"], "rows": rows}
    if idx:
        # each modality's projection in units of its SD across subjects (no label used), so a
        # modality with a large but noisy expected difference does not drown the others
        z = scores[:, idx] / scores[:, idx].std(axis=0, keepdims=True).clip(1e-30)
        out["all_oracle_auc"] = auc(z.sum(1), hc)
    if "GMV" in modalities:
        out["gmv_oracle_auc"] = auc(scores[:, modalities.index("GMV")], hc)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="16 subjects at 9 mm (CI)")
    p.add_argument("--arm", default="amplitude")
    p.add_argument("-n", "--n-subjects", type=int, default=120)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--res", type=float, default=3.0,
                   help="ICN voxel size in mm (GM at half of it); 6 is 8x faster than 3")
    p.add_argument("--downsample", type=int, default=1)
    p.add_argument("--dataset", type=Path, help="measure this simulated dataset instead")
    p.add_argument("simulate_args", nargs="*", help="more vaefusion-simulate options, after --")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ds = args.dataset
        if ds is None:
            from vaefusion.cli.simulate import main as simulate

            ds = Path(tmp) / "ds"
            n, res = (16, 9.0) if args.quick else (args.n_subjects, args.res)
            rc = simulate([str(ds), "--n-subjects", str(n), "--seed", str(args.seed),
                           "--arm", args.arm, "--icn-res", f"{res:g}", "--gm-res",
                           f"{res / 2:g}", "-q", *args.simulate_args])
            if rc:
                return rc
        res = measure(ds, args.downsample)
    print(f"{res['arm']} arm, {res['n']} subjects, grid /{args.downsample}")
    print("| modality | core d (truth / SD) | core d (sample) | oracle AUC |")
    print("|---|---:|---:|---:|")
    for m, r in res["rows"].items():  # type: ignore[union-attr]
        print(f"| {m} | {r['core_d']:+.2f} | {r['sample_d']:+.2f} | {r['oracle_auc']:.2f} |")
    for key in ("all_oracle_auc", "gmv_oracle_auc"):
        if key in res:
            print(f"{key.replace('_', ' ')}: {res[key]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
