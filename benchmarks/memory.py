"""Peak memory (RSS) of the participant level against the number of subjects.

For each size N, simulates N subjects (53 NeuroMark ICNs + GMV) at a small grid (ICN maps at
9 mm: 18 x 21 x 18 voxels; GMV at 4.5 mm), then runs ``vaefusion BIDS out participant`` in a
fresh Python process (serial plugin, one thread, BIDS validation skipped) and reports that
process's peak resident set size, its wall time and the preprocessed volume per subject. The
memory should stay flat as N grows: subjects are preprocessed one at a time and written to
the cache; nothing holds all of them.

Run: ``python benchmarks/memory.py`` (50, 200 and 2000 subjects; ~2 GB of disk, tens of
minutes on 2 cores) or ``python benchmarks/memory.py --quick`` (20, 50, 100; a few minutes).
``--keep DIR`` keeps the simulated datasets there (and reuses them on the next run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: What the child process runs: the real CLI in-process, then its own peak RSS (kB on Linux).
CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from vaefusion.cli.run import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "seconds": time.perf_counter() - t0,
                  "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "children_max_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def simulate(root: Path, n: int, icn_res: str, gm_res: str) -> Path:
    ds = root / f"sim-{n}"
    if (ds / "participants.tsv").is_file():
        return ds
    shutil.rmtree(ds, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "vaefusion.cli.simulate", str(ds), "--n-subjects",
                    str(n), "--icn-res", icn_res, "--gm-res", gm_res, "-q"], check=True)
    return ds


def measure(ds: Path, work: Path, n: int) -> dict:
    out, wd = work / f"out-{n}", work / f"work-{n}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(wd, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ds), str(out), "participant",
                           "-w", str(wd), "--skip-bids-validation", "--nprocs", "1",
                           "--omp-nthreads", "1"], capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise SystemExit(f"the participant level failed for {n} subjects:\n{proc.stderr[-3000:]}")
    row = json.loads(lines[-1])
    if row["code"] != 0:
        raise SystemExit(f"exit {row['code']} for {n} subjects:\n{proc.stderr[-3000:]}")
    cache = sum(p.stat().st_size for p in (wd / "cache").glob("*.npy"))
    return {"subjects": n, "peak_rss_mb": row["max_rss_kb"] / 1024,
            "seconds": row["seconds"], "cache_mb": cache / 2**20}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="20, 50 and 100 subjects")
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument("--icn-res", default="9", help="ICN voxel size in mm (default 9)")
    p.add_argument("--gm-res", default="4.5", help="GMV voxel size in mm (default 4.5)")
    p.add_argument("--keep", type=Path, default=None, help="keep the datasets in this folder")
    p.add_argument("--json", type=Path, default=None, help="write the rows as JSON")
    args = p.parse_args(argv)
    sizes = args.sizes or ([20, 50, 100] if args.quick else [50, 200, 2000])

    tmp = Path(tempfile.mkdtemp(prefix="vaefusion-memory-"))
    root = args.keep or tmp
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for n in sizes:
            t0 = time.perf_counter()
            ds = simulate(root, n, args.icn_res, args.gm_res)
            sim_s = time.perf_counter() - t0
            row = measure(ds, tmp, n)
            row["simulate_seconds"] = sim_s
            rows.append(row)
            print(f"{n:>6} subjects: peak RSS {row['peak_rss_mb']:7.1f} MB, "
                  f"{row['seconds']:7.1f} s ({row['seconds'] / n:.3f} s/subject), "
                  f"cache {row['cache_mb']:.1f} MB", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average at the end: {load:.1f} on {os.cpu_count()} CPUs")
    print("| subjects | peak RSS (MB) | wall time (s) | s/subject | training cache (MB) |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['subjects']} | {r['peak_rss_mb']:.0f} | {r['seconds']:.1f} | "
              f"{r['seconds'] / r['subjects']:.3f} | {r['cache_mb']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
