"""Which GPU a unit of work trains on: ``--gpus``, resolved once, leased round robin per unit.

``--gpus`` names GPUs the way ``CUDA_VISIBLE_DEVICES`` does: ``all`` (the default), or a
comma-separated list of ordinals or UUIDs (``GPU-...``, ``MIG-...``, a unique prefix is
enough), counted among the GPUs *this process sees*. So with ``CUDA_VISIBLE_DEVICES=4,5,6,7``
(e.g. set by SLURM), ``--gpus 0,1`` means physical GPUs 4 and 5, exactly as CUDA would
number them. Unlike CUDA, which silently truncates the list at the first unknown id, an
unknown id is a usage error.

When several units run at once (MultiProc, or several cluster jobs on one node), each one
takes a *lease* on a GPU before it trains: an exclusive ``flock`` on a slot file under
``WORK_DIR/gpus/<host>/``. A unit takes the GPU with the fewest units on it, ties broken
round robin in start order, so ``--nprocs 8`` on an 8-GPU node puts one fold on each GPU.
The kernel drops a lease when its process ends, killed or not, so a crash never leaves a GPU
marked busy. The unit then calls ``torch.cuda.set_device`` so everything that trains on
``cuda`` (the :class:`~vaefusion.training.trainer.Trainer`) uses its GPU, and its memory
budget is computed from that GPU's free memory, shared by the units that may be on it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import math
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from vaefusion.config import GPU_FRACTION, Runtime
from vaefusion.errors import UsageError

LOG = logging.getLogger("vaefusion.gpus")


# --------------------------------------------------------------------------- resolution
def device_count() -> int:
    """GPUs this process sees (0 without CUDA). Tests replace it to fake a node."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def units_per_gpu(nprocs: int, n_gpus: int) -> int:
    """How many of ``nprocs`` concurrent units may share one GPU."""
    return max(1, math.ceil(max(1, nprocs) / max(1, n_gpus)))


# --------------------------------------------------------------------------- leases
def _host_dir(lease_root: Path) -> Path:
    folder = Path(lease_root) / socket.gethostname()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _next_turn(folder: Path) -> int:
    """A counter shared by the units on this host: the start order (round robin)."""
    path = folder / "turn"
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        text = fh.read().strip()
        turn = int(text) if text.isdigit() else 0
        fh.seek(0)
        fh.truncate()
        fh.write(str(turn + 1))
        fh.flush()
    return turn


@contextmanager
def gpu_lease(gpus: Sequence[int], lease_root: Path) -> Iterator[tuple[int, int]]:
    """Hold one of ``gpus`` while the block runs; yields ``(gpu, slot)``, slot 0 meaning the
    unit has the GPU to itself. The least-held GPU wins, ties broken round robin."""
    if not gpus:
        raise ValueError("gpu_lease needs at least one GPU")
    folder = _host_dir(lease_root)
    start = _next_turn(folder) % len(gpus)
    order = list(gpus[start:]) + list(gpus[:start])
    with ExitStack() as stack:
        slot = 0
        while True:
            for gpu in order:
                fh = stack.enter_context(open(folder / f"gpu{gpu}.slot{slot}.lock", "a"))
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                yield gpu, slot
                return
            slot += 1


@contextmanager
def placed(runtime: Runtime, lease_root: Path, unit: str = "unit",
           log: logging.Logger | None = None) -> Iterator[Runtime]:
    """Run the block on a leased GPU (a no-op on CPU): the current CUDA device is set, and the
    yielded runtime's ``gpu`` and memory budget are that GPU's."""
    if runtime.device != "cuda":
        yield runtime
        return
    log = log or LOG
    count = device_count()
    # a cluster job may see fewer GPUs than the parent resolved: keep those it has
    gpus = [g for g in runtime.gpus if g < count] or list(range(count))
    if not gpus:
        raise UsageError(f"{unit} was to run on a GPU but this host ({socket.gethostname()}) "
                         f"sees none; use --device cpu or run it on a GPU node.")
    with gpu_lease(gpus, lease_root) as (gpu, slot):
        import torch

        torch.cuda.set_device(gpu)
        free, _ = torch.cuda.mem_get_info(gpu)
        share = units_per_gpu(runtime.nprocs, len(gpus))
        budget = int(GPU_FRACTION * free / share)
        log.info("%s: GPU %d (cuda:%d of %s visible%s), %d unit(s) may share it, data budget "
                 "%.1f GiB", unit, gpu, gpu, os.environ.get("CUDA_VISIBLE_DEVICES", "all"),
                 "" if slot == 0 else f", sharing it: slot {slot}", share, budget / 2**30)
        yield dataclasses.replace(runtime, gpu=gpu, data_budget_bytes=budget)
