"""Training throughput of the shared VAE: a naive loop against vaefusion's loop, side by side.

    python benchmarks/train_throughput.py --quick     # CI: < 60 s on 2 CPU cores
    python benchmarks/train_throughput.py             # more steps, whole 54-volume subjects

Rows: training volumes/s for the tiny configuration (``--downsample 4 --width 0.125``) and the
default architecture (53x63x52, width 1), for

* ``naive``: a first-draft fp32 eager loop: one volume per optimizer step, each subject read
  from the cache (``np.load``) when its turn comes;
* ``vaefusion``: the production loop (:func:`vaefusion.training.trainer.run_pass` on
  :class:`vaefusion.loader.SubjectBatches`): one optimizer step (fused Adam) per whole subject,
  its volumes pushed through in memory-bounded chunks (all 54 at once on the tiny grid, one at
  a time at full size, where bigger passes only add page faults on CPU), data resident in
  memory, torch threads set to the machine's cores;

with the analytic training FLOPs per volume (:func:`vaefusion.model.flops_per_volume`), the
achieved GFLOP/s and their fraction of the machine's measured peak (a large fp32
``torch.matmul`` timed in the same run). Timings take the best of repeats: on a shared machine
the minimum is the least disturbed estimate. GPU fp32/bf16 rows run only where CUDA is present.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vaefusion.inputs.cache import SubjectMeta, write_subject
from vaefusion.model.flops import flops_per_volume
from vaefusion.model.likelihood import loss_terms
from vaefusion.model.network import VAE, downsample_volumes, downsampled_grid
from vaefusion.model.objective import Objective
from vaefusion.training.data import SubjectBatches
from vaefusion.training.device import set_seed
from vaefusion.training.speed import apply_switches
from vaefusion.training.trainer import make_optimizer, run_pass

FULL_GRID = (53, 63, 52)
#: The speed switches timed with --switches (CUDA graphs only where CUDA is).
SWITCHES = ("channels_last", "compile")
LATENT = 128
#: --quick must end within 60 s on 2 cores: the full-size rows (~5 s on an idle machine) are
#: skipped when a busy machine has already used this much of the budget.
QUICK_FULL_SIZE_DEADLINE_S = 30.0


def best_time(fn: Callable[[], None], repeats: int, sync: Callable[[], None] = lambda: None
              ) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of the fastest of ``repeats`` calls, after one untimed warm-up.

    ``cpu`` is this process's CPU time (all threads) in that call: on a machine shared with
    other jobs it shows the work done, while the wall time also shows the waiting.
    """
    fn()
    sync()
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        best = min(best, (time.perf_counter() - w0, time.process_time() - c0))
    return best


def matmul_peak(n: int, repeats: int, device: torch.device, dtype: torch.dtype) -> float:
    """Measured GFLOP/s of an ``n x n`` matmul (the practical peak of this machine)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    wall, _ = best_time(lambda: torch.matmul(a, b), repeats, sync)
    return 2 * n**3 / wall / 1e9


def make_cache(root: Path, n_subjects: int, n_mod: int, seed: int = 0) -> list[Path]:
    """Synthetic subjects on the full grid in the real cache format (float16 .npy + JSON)."""
    rng = np.random.default_rng(seed)
    paths = []
    for s in range(n_subjects):
        stack = np.tanh(rng.normal(0, 0.5, (n_mod, *FULL_GRID))).astype(np.float32)
        meta = SubjectMeta(f"{s:02d}", None, [f"M{m:02d}" for m in range(n_mod)],
                           np.eye(4).tolist(), list(FULL_GRID))
        paths.append(write_subject(root, stack, meta))
    return paths


def naive_epoch(model: VAE, opt: torch.optim.Optimizer, paths: list[Path], downsample: int,
                max_volumes: int | None) -> int:
    """One volume per step, data read from disk per subject, fp32 eager. Returns volumes."""
    model.train()
    n = 0
    for p in paths:
        stack = np.load(p)
        for j in range(stack.shape[0]):
            if max_volumes is not None and n >= max_volumes:
                return n
            x = torch.from_numpy(stack[j:j + 1].astype(np.float32)).unsqueeze(0)
            x = downsample_volumes(x, downsample)
            recon, mu, logvar = model(x)
            loss = loss_terms(recon, x, mu, logvar).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += 1
    return n


def bench_config(name: str, paths: list[Path], downsample: int, width: float, repeats: int,
                 naive_volumes: int | None, device: torch.device, bf16: bool = False,
                 switches: dict[str, bool] | None = None) -> list[dict]:
    """Naive and vaefusion rows for one configuration; with ``switches`` (the speed switches
    of :func:`vaefusion.training.speed.apply_switches`) only the vaefusion row, so switched."""
    grid = downsampled_grid(FULL_GRID, downsample)
    flops = flops_per_volume(grid, width, LATENT)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    if device.type == "cpu" and switches is None:
        set_seed(0)
        model = VAE(grid, LATENT, width)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        counted = [0]

        def naive() -> None:
            counted[0] = naive_epoch(model, opt, paths, downsample, naive_volumes)

        wall, cpu = best_time(naive, repeats)
        rows.append({"config": name, "loop": "naive (1 volume/step, from disk)",
                     "device": "cpu fp32", "volumes_per_s": counted[0] / wall,
                     "cpu_s_per_volume": cpu / counted[0], "flops": flops})
    set_seed(0)
    model = VAE(grid, LATENT, width).to(device)
    on = {k: v for k, v in (switches or {}).items() if v}
    if on:
        apply_switches(model, device, channels_last=bool(on.get("channels_last")),
                       compile=bool(on.get("compile")), cuda_graphs=bool(on.get("cuda_graphs")))
    opt = make_optimizer(model, 1e-4)
    data = SubjectBatches(paths, device=device, downsample=downsample, batch_subjects=1,
                          resident=True)

    def ours() -> None:
        run_pass(model, data, 0, 1.0, device, bf16, opt, name,
                   objective=Objective.named("sigma", "maxabs"))

    wall, cpu = best_time(ours, repeats, sync)
    label = "vaefusion (whole subjects, resident)" + "".join(f" + {k}" for k in on)
    rows.append({"config": name, "loop": label,
                 "device": f"{device.type} {'bf16' if bf16 else 'fp32'}",
                 "volumes_per_s": data.n_volumes / wall,
                 "cpu_s_per_volume": cpu / data.n_volumes, "flops": flops})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI mode: a few steps, < 60 s")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch intra-op threads for the vaefusion loop (default: all cores)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument("--switches", action="store_true",
                    help="also time the speed switches (channels_last_3d, torch.compile; on "
                    "CUDA also CUDA graphs) on the production loop")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    q = args.quick
    cpu = torch.device("cpu")
    t_start = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, mode {'quick' if q else 'full'}, "
          f"load average {os.getloadavg()[0]:.2f} (timings are only comparable when it is low)")
    peak = matmul_peak(2048 if q else 4096, 3 if q else 5, cpu, torch.float32)
    print(f"measured fp32 matmul peak: {peak:.1f} GFLOP/s")

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        # tiny: 2 (quick) or 6 subjects x 54 volumes (53 ICNs + GMV), the whole set per timed epoch
        tiny_paths = make_cache(Path(tmp) / "tiny", 2 if q else 6, 54)
        rows += bench_config("tiny (downsample 4, width 0.125)", tiny_paths, 4, 0.125,
                             repeats=3, naive_volumes=54 if q else None, device=cpu)
        # default: quick mode times one 2-volume subject (a step of 54 full volumes takes
        # ~15 s on 2 cores); full mode times one real 54-volume subject
        full_paths = make_cache(Path(tmp) / "full", 1, 2 if q else 54)
        if q and time.perf_counter() - t_start > QUICK_FULL_SIZE_DEADLINE_S:
            print("default-size rows skipped: the machine is too busy for the quick budget.")
        else:
            rows += bench_config("default (53x63x52, width 1)", full_paths, 1, 1.0,
                                 repeats=2, naive_volumes=1 if q else 8, device=cpu)
        if args.switches:
            for sw in SWITCHES:
                rows += bench_config("tiny (downsample 4, width 0.125)", tiny_paths, 4, 0.125,
                                     repeats=3, naive_volumes=None, device=cpu,
                                     switches={sw: True})
        if torch.cuda.is_available():
            gpu = torch.device("cuda")
            gpu_peak = matmul_peak(8192, 5, gpu, torch.float32)
            print(f"measured CUDA fp32 matmul peak: {gpu_peak:.1f} GFLOP/s")
            for bf16 in (False, True):
                rows += bench_config("default (53x63x52, width 1)", full_paths * 4, 1, 1.0,
                                     repeats=3, naive_volumes=None, device=gpu, bf16=bf16)
            for sw in (SWITCHES + ("cuda_graphs",)) if args.switches else ():
                rows += bench_config("default (53x63x52, width 1)", full_paths * 4, 1, 1.0,
                                     repeats=3, naive_volumes=None, device=gpu, bf16=True,
                                     switches={sw: True})
        else:
            print("GPU fp32 / bf16 rows skipped: CUDA is not available on this machine.")
    # measured again at the end: on a shared machine the higher of the two is nearer the truth
    peak = max(peak, matmul_peak(2048 if q else 4096, 3 if q else 5, cpu, torch.float32))
    print(f"measured fp32 matmul peak (best of start and end): {peak:.1f} GFLOP/s")

    print()
    print("| configuration | loop | device | volumes/s | CPU s/volume | GFLOP/volume (fwd+bwd) "
          "| GFLOP/s | % of matmul peak |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        gflops = r["volumes_per_s"] * r["flops"] / 1e9
        r["gflop_per_s"] = gflops
        r["fraction_of_peak"] = gflops / peak if r["device"].startswith("cpu") else None
        frac = f"{100 * r['fraction_of_peak']:.0f} %" if r["fraction_of_peak"] else "n/a"
        print(f"| {r['config']} | {r['loop']} | {r['device']} | {r['volumes_per_s']:.2f} | "
              f"{r['cpu_s_per_volume']:.4f} | {r['flops'] / 1e9:.3f} | {gflops:.1f} | {frac} |")
    print()
    for cfg in dict.fromkeys(r["config"] for r in rows):
        naive = [r for r in rows if r["config"] == cfg and r["loop"].startswith("naive")]
        ours = [r for r in rows if r["config"] == cfg and r["loop"].startswith("vaefusion")
                and r["device"] == "cpu fp32"]
        if naive and ours:
            wall = ours[0]["volumes_per_s"] / naive[0]["volumes_per_s"]
            cpu = naive[0]["cpu_s_per_volume"] / ours[0]["cpu_s_per_volume"]
            print(f"speed-up {cfg}: {wall:.2f}x wall, {cpu:.2f}x CPU time "
                  f"(vaefusion / naive, CPU fp32)")
    print(f"total time: {time.perf_counter() - t_start:.1f} s, "
          f"load average {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"matmul_peak_gflops": peak, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
