"""Preprocessing time per subject on one core, against a straightforward nilearn baseline.

Simulates N subjects on the real 3 mm NeuroMark grid (53 ICNs, GMV at 1.5 mm), then times, for
each subject and side by side in one run:

* ours: ``vaefusion.preprocess.preprocess_subject`` (read, NaN check, GMV anti-aliased and
  resampled with one scipy affine_transform, max-abs scaling, float16 stack written once) plus
  the BIDS-derivative stack (int16 NIfTI);
* baseline: the obvious implementation with nilearn (``resample_to_img`` of GMV to the ICN
  image, float32 arrays, a float32 ``.npy`` cache and a float32 NIfTI derivative).

Run: ``python benchmarks/preprocess_speed.py [--n-subjects 6]`` (threads are pinned to 1).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core, as the issue asks; set before numpy loads

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402


def ours(icn: str, gmv: str, key: str, cache: Path, out: Path) -> dict[str, float]:
    from vaefusion.derivatives.subject import write_subject_stack
    from vaefusion.inputs.cache import load_stack, read_meta
    from vaefusion.inputs.preprocess import preprocess_subject

    t0 = time.perf_counter()
    npy, meta = preprocess_subject(icn, gmv, key, None, None, cache)
    t1 = time.perf_counter()
    meta = read_meta(npy)
    write_subject_stack(out, meta.subject, None, np.asarray(load_stack(npy)),
                        np.asarray(meta.affine), meta.modalities, meta.sources)
    t2 = time.perf_counter()
    return {"cache": t1 - t0, "derivative": t2 - t1, "total": t2 - t0}


def baseline(icn: str, gmv: str, key: str, cache: Path, out: Path) -> dict[str, float]:
    from nilearn.image import resample_to_img

    t0 = time.perf_counter()
    icn_img = nib.load(icn)
    data = icn_img.get_fdata(dtype=np.float32)
    ref = nib.Nifti1Image(data[..., 0], icn_img.affine)
    gm = resample_to_img(nib.load(gmv), ref, interpolation="continuous",
                         force_resample=True, copy_header=True).get_fdata(dtype=np.float32)
    stack = np.concatenate([np.moveaxis(data, -1, 0), gm[None]], axis=0)
    stack /= np.abs(stack).reshape(len(stack), -1).max(axis=1)[:, None, None, None]
    np.save(cache / f"{key}.npy", stack)
    t1 = time.perf_counter()
    nib.save(nib.Nifti1Image(np.moveaxis(stack, 0, -1), icn_img.affine),
             out / f"{key}_stack.nii.gz")
    t2 = time.perf_counter()
    return {"cache": t1 - t0, "derivative": t2 - t1, "total": t2 - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-subjects", type=int, default=6)
    parser.add_argument("--keep", type=Path, default=None, help="reuse/keep the dataset here")
    args = parser.parse_args()

    from vaefusion.cli.simulate import main as simulate
    from vaefusion.config import Config
    from vaefusion.inputs.discovery import discover

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        ds = root / "ds"
        if not (ds / "participants.tsv").exists():
            t = time.perf_counter()
            assert simulate([str(ds), "--n-subjects", str(args.n_subjects), "--seed", "0"]) == 0
            print(f"simulated {args.n_subjects} subjects in {time.perf_counter() - t:.1f} s")
        subjects = discover(Config(bids_dir=ds, work_dir=Path(tmp) / "work"))
        rows: dict[str, list[dict[str, float]]] = {"ours": [], "baseline": []}
        for s in subjects:
            for name, fn in (("ours", ours), ("baseline", baseline)):
                d = Path(tmp) / name
                (d / "cache").mkdir(parents=True, exist_ok=True)
                (d / "out").mkdir(parents=True, exist_ok=True)
                rows[name].append(fn(s.icn, s.gmv, s.subject, d / "cache", d / "out"))
        shape = nib.load(subjects[0].icn).shape
        print(f"{len(subjects)} subjects, ICN grid {shape}, 1 thread")
        print(f"{'':10}{'cache (s)':>12}{'derivative (s)':>16}{'total (s)':>12}")
        med = {}
        for name, values in rows.items():
            med[name] = {k: statistics.median(v[k] for v in values) for k in values[0]}
            print(f"{name:10}{med[name]['cache']:12.3f}{med[name]['derivative']:16.3f}"
                  f"{med[name]['total']:12.3f}")
        print(f"median per subject: ours {med['ours']['total']:.3f} s (training cache "
              f"{med['ours']['cache']:.3f} s); speed-up vs baseline "
              f"{med['baseline']['total'] / med['ours']['total']:.2f}x total, "
              f"{med['baseline']['cache'] / med['ours']['cache']:.2f}x cache")


if __name__ == "__main__":
    main()
