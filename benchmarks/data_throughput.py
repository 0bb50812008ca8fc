"""Data throughput: naive per-volume NIfTI loading, the resident path and the streamed path.

    python benchmarks/data_throughput.py --quick      # CI: tiny sizes, seconds
    python benchmarks/data_throughput.py              # full grid, RSS at N = 500 and 5,000

Side by side, in one run, on the same synthetic subjects (53 ICN maps + GMV, NeuroMark grid
53x63x52, written as NIfTI derivatives and preprocessed into vaefusion's cache):

* ``naive``: what a straightforward implementation does: one sample per volume, each a
  TorchIO ``ScalarImage`` of the subject's 4D ICN file (the whole ``.nii.gz`` decompressed for
  one volume) or of its GMV file resampled onto the ICN grid (``tio.Resample``), max-abs scaled
  and downsampled, batched 54 volumes at a time by a DataLoader with the same workers;
* ``resident``: :class:`vaefusion.training.data.SubjectBatches` with every volume in memory
  (the one-time load is reported apart);
* ``streamed``: :mod:`vaefusion.bench.stream`: the packed, memory-mapped float16 cache
  (packing reported apart), DataLoader workers, pinned memory on CUDA.

It prints subjects/s and volumes/s for each, ``ratio <streamed / naive volumes/s>``, the
streamed rate against the 1,341 volumes/s the full-size model consumes on one H100 (bf16), and
the peak RSS (the process and its workers) while streaming synthetic packed caches of
``--rss-n`` subjects at ``--downsample 2`` through a whole epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vaefusion.bench.stream import PackedSubjects, pack_cache, stream_batches, write_index
from vaefusion.inputs.preprocess import preprocess_subject
from vaefusion.model.network import downsample_volumes, downsampled_grid
from vaefusion.training.data import SubjectBatches

GRID = (53, 63, 52)
N_ICN = 53
TARGET_VOLUMES_PER_S = 1341.0  # full-size model, bf16, one H100 (benchmarks/README.md)


# --------------------------------------------------------------------------- inputs
def write_niftis(root: Path, n: int, grid: tuple[int, ...], seed: int = 0
                 ) -> list[tuple[Path, Path]]:
    """``n`` subjects: a 4D ICN ``.nii.gz`` (the NeuroMark template maps plus smooth noise, so
    that preprocessing's template checks pass) and a GMV ``.nii.gz`` (the MNI GM template with
    a smooth multiplicative field) on SPM's 1.5 mm grid (so it needs resampling, as SPM output
    does). ``grid`` is the ICN grid the benchmark reads (NeuroMark's 3 mm grid)."""
    from scipy.ndimage import zoom

    from vaefusion.simulate.gm import gm_template
    from vaefusion.simulate.grids import gm_grid, icn_grid
    from vaefusion.simulate.icn import icn_templates

    rng = np.random.default_rng(seed)
    templates, _ = icn_templates(3.0, N_ICN)
    assert templates.shape[1:] == tuple(grid), (templates.shape, grid)
    gm_base, gm_affine, affine = gm_template(1.5), gm_grid(1.5).affine, icn_grid(3.0).affine
    coarse = [max(2, g // 6) for g in grid]

    def smooth(shape: tuple[int, ...]) -> np.ndarray:
        field = zoom(rng.normal(size=coarse), [g / c for g, c in zip(shape, coarse,
                                                                    strict=True)], order=1)
        return field[:shape[0], :shape[1], :shape[2]]

    peak = np.abs(templates).reshape(N_ICN, -1).max(axis=1)
    out = []
    for s in range(n):
        icn = np.stack([templates[c] + 0.3 * peak[c] * smooth(grid) for c in range(N_ICN)], -1)
        gm = gm_base * (1.0 + 0.05 * smooth(gm_base.shape))
        ip, gp = root / f"sub-{s:04d}_icn.nii.gz", root / f"sub-{s:04d}_gm.nii.gz"
        nib.save(nib.Nifti1Image(icn.astype(np.float32), affine), ip)
        nib.save(nib.Nifti1Image(gm.astype(np.float32), gm_affine), gp)
        out.append((ip, gp))
    return out


class NaiveVolumes(Dataset):
    """One item per volume, read from the NIfTI derivatives with TorchIO each time."""

    def __init__(self, subjects: list[tuple[Path, Path]], downsample: int) -> None:
        self.items = [(i, g, k) for i, g in subjects for k in range(N_ICN + 1)]
        self.downsample = downsample

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        import torchio as tio

        icn, gm, k = self.items[index]
        image = tio.ScalarImage(icn)
        if k < N_ICN:
            vol = image.data[k].float()
        else:
            vol = tio.Resample(image)(tio.ScalarImage(gm)).data[0].float()
        vol = vol / vol.abs().max().clamp_min(1e-12)
        return downsample_volumes(vol[None, None], self.downsample)[0]


# --------------------------------------------------------------------------- timing
def consume(batches) -> tuple[int, float]:
    """Volumes delivered and seconds taken by an iterator of batches."""
    t0, n = time.perf_counter(), 0
    for x in batches:
        n += x.shape[0]
    return n, time.perf_counter() - t0


def row(name: str, volumes: int, seconds: float, per_subject: int, note: str = "") -> dict:
    v = volumes / seconds
    return {"path": name, "volumes": volumes, "seconds": round(seconds, 3),
            "subjects_per_s": round(v / per_subject, 3), "volumes_per_s": round(v, 1),
            "note": note}


def side_by_side(scratch: Path, n_naive: int, n_fast: int, downsample: int, workers: int,
                 batch: int, naive_volumes: int = 0) -> list[dict]:
    """The three paths' rows; ``naive_volumes`` > 0 times only that many naive volumes (the
    first ICNs and the GMV of the first subject)."""
    nifti = scratch / "nifti"
    nifti.mkdir(parents=True)
    subjects = write_niftis(nifti, n_naive, GRID)
    cache = scratch / "cache"
    paths = [preprocess_subject(str(i), str(g), f"{s:04d}", None, "HC", cache)[0]
             for s, (i, g) in enumerate(subjects)]
    # more subjects for the fast paths: copies of the preprocessed ones under new names
    for s in range(n_naive, n_fast):
        src = paths[s % n_naive]
        dst = cache / f"sub-{s:04d}.npy"
        shutil.copyfile(src, dst)
        meta = json.loads(src.with_suffix(".json").read_text())
        dst.with_suffix(".json").write_text(json.dumps({**meta, "subject": f"{s:04d}"}))
        paths.append(dst)
    per = N_ICN + 1
    naive = NaiveVolumes(subjects, downsample)
    if naive_volumes:
        naive.items = naive.items[:naive_volumes - 1] + naive.items[N_ICN:N_ICN + 1]
    loader = DataLoader(naive, batch_size=per,
                        num_workers=workers, prefetch_factor=2 if workers else None)
    rows = [row("naive", *consume(loader), per, "TorchIO ScalarImage per volume")]
    t0 = time.perf_counter()
    resident = SubjectBatches(paths, downsample=downsample, batch_subjects=batch, resident=True)
    load = time.perf_counter() - t0
    rows.append(row("resident", *consume(resident.epoch(0)), per, f"load {load:.1f} s once"))
    t0 = time.perf_counter()
    packed = PackedSubjects(pack_cache(paths, downsample, scratch / "packed"))
    pack = time.perf_counter() - t0
    batches = resident.batch_lists(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows.append(row("streamed", *consume(stream_batches(packed, batches, device, workers)),
                    per, f"pack {pack:.1f} s once; {workers} workers"
                    + ("; pinned" if device == "cuda" else "; no CUDA: not pinned")))
    return rows


# --------------------------------------------------------------------------- memory
def synth_pack(folder: Path, n: int, grid: tuple[int, ...], per: int = N_ICN + 1) -> int:
    """A packed cache of ``n`` synthetic subjects (random float16), written in blocks."""
    folder.mkdir(parents=True, exist_ok=True)
    block = np.random.default_rng(0).uniform(-1, 1, (per, *grid)).astype(np.float16)
    with open(folder / "volumes.f16", "wb") as fh:
        for _ in range(n):
            fh.write(block.tobytes())
    write_index(folder, list(range(0, (n + 1) * per, per)), grid,
                [f"sub-{s:05d}" for s in range(n)])
    return (folder / "volumes.f16").stat().st_size


def memory_kib(pid: int) -> tuple[int, int]:
    """``(RSS, PSS)`` KiB of ``pid`` and its children (the DataLoader workers). PSS splits each
    shared page between the processes that map it, so the sum counts what forked workers share
    with their parent once; RSS counts it in every process."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        pids += [int(p) for p in task.read_text().split()]
    rss = pss = 0
    for p in pids:
        try:
            lines = Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    return rss, pss


def rss_child(folder: Path, workers: int, batch: int) -> dict:
    """Stream a whole epoch of a packed cache, sampling the RSS of this process and its
    workers; what ``--_rss-child`` prints."""
    peak, stop, me = [0, 0], threading.Event(), os.getpid()

    def sample() -> None:
        while not stop.is_set():
            peak[:] = [max(a, b) for a, b in zip(peak, memory_kib(me), strict=True)]
            stop.wait(0.02)

    data = PackedSubjects(folder)
    order = np.random.default_rng([0, 0]).permutation(len(data)).tolist()
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]
    before = memory_kib(me)[1]
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    n, seconds = consume(stream_batches(data, batches, "cpu", workers))
    stop.set()
    thread.join()
    return {"subjects": len(data), "volumes": n, "seconds": round(seconds, 2),
            "pss_before_mib": round(before / 1024, 1), "peak_rss_mib": round(peak[0] / 1024, 1),
            "peak_pss_mib": round(peak[1] / 1024, 1)}


def rss_rows(scratch: Path, sizes: list[int], downsample: int, workers: int, batch: int
             ) -> list[dict]:
    grid = tuple(downsampled_grid(GRID, downsample))
    per_subject = (N_ICN + 1) * int(np.prod(grid)) * 2
    rows = []
    for n in sizes:
        free = shutil.disk_usage(scratch).free - 4 * 2**30  # keep 4 GiB for everyone else
        fit = max(1, free // per_subject)
        note = ""
        if n > fit:
            note = f"disk: {n} asked, {fit} fit"
            n = int(fit)
        folder = scratch / f"rss-{n}"
        size = synth_pack(folder, n, grid)
        out = subprocess.run([sys.executable, __file__, "--_rss-child", str(folder),
                              "--workers", str(workers), "--batch-subjects", str(batch)],
                             capture_output=True, text=True, check=True)
        rows.append({**json.loads(out.stdout.strip().splitlines()[-1]),
                     "cache_gib": round(size / 2**30, 2), "note": note})
        shutil.rmtree(folder)
    return rows


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI mode: tiny sizes, seconds")
    ap.add_argument("--downsample", type=int, default=None,
                    help="grid factor of the side-by-side rows (default 1; --quick 4)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-subjects", type=int, default=4)
    ap.add_argument("--naive-subjects", type=int, default=None)
    ap.add_argument("--naive-volumes", type=int, default=None,
                    help="time only this many naive volumes (default: all; --quick 8)")
    ap.add_argument("--subjects", type=int, default=None, help="subjects of the fast paths")
    ap.add_argument("--rss-n", type=int, nargs="*", default=None,
                    help="packed cache sizes (subjects) whose streaming peak RSS is measured")
    ap.add_argument("--scratch", type=Path, default=None, help="where the caches go")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--_rss-child", dest="rss_child", type=Path, default=None,
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child is not None:
        print(json.dumps(rss_child(args.rss_child, args.workers, args.batch_subjects)))
        return 0
    q = args.quick
    ds = args.downsample or (4 if q else 1)
    n_naive = args.naive_subjects or (1 if q else 2)
    n_fast = args.subjects or (8 if q else 64)
    sizes = args.rss_n if args.rss_n is not None else ([20, 200] if q else [500, 5000])
    torch.set_num_threads(1)
    scratch = Path(tempfile.mkdtemp(prefix="vaefusion-data-", dir=args.scratch))
    try:
        naive_volumes = args.naive_volumes if args.naive_volumes is not None else 8 * q
        rows = side_by_side(scratch, n_naive, max(n_fast, n_naive), ds, args.workers,
                            args.batch_subjects, naive_volumes)
        print(f"{'path':9} {'volumes':>8} {'seconds':>8} {'subjects/s':>11} {'volumes/s':>10}"
              f"  note (grid {'x'.join(map(str, downsampled_grid(GRID, ds)))})")
        for r in rows:
            print(f"{r['path']:9} {r['volumes']:8d} {r['seconds']:8.2f} "
                  f"{r['subjects_per_s']:11.2f} {r['volumes_per_s']:10.1f}  {r['note']}")
        by = {r["path"]: r["volumes_per_s"] for r in rows}
        ratio = by["streamed"] / by["naive"]
        print(f"ratio {ratio:.1f}")
        if ds == 1:
            print(f"streamed {by['streamed']:.0f} volumes/s against the {TARGET_VOLUMES_PER_S:.0f}"
                  f" volumes/s the full-size model consumes on one H100: "
                  f"{'faster' if by['streamed'] >= TARGET_VOLUMES_PER_S else 'SLOWER'}")
        mem = rss_rows(scratch, sizes, 2, args.workers, args.batch_subjects)
        print(f"peak memory streaming a whole epoch of a packed cache at --downsample 2 "
              f"(process + {args.workers} workers; PSS counts shared pages once):")
        for r in mem:
            print(f"  N={r['subjects']:6d}  cache {r['cache_gib']:7.2f} GiB  peak PSS "
                  f"{r['peak_pss_mib']:7.1f} MiB (before {r['pss_before_mib']:.1f}), peak RSS "
                  f"{r['peak_rss_mib']:7.1f} MiB  {r['volumes'] / r['seconds']:8.0f} volumes/s"
                  f"  {r['note']}")
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "ratio": ratio, "rss": mem},
                                            indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
