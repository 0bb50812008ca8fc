"""One training across GPUs and nodes: DistributedDataParallel, started by ``torchrun``.

Every rank holds the same model, optimizer and data index; ``--batch-subjects`` is the
*global* batch. Each epoch's subject order is the single-process order (a pure function of
``(seed, epoch)``, :func:`vaefusion.training.data.epoch_order`); each batch is cut into
``world`` contiguous shards, one per rank. So that a run on W ranks optimises the same
objective as one process with the same global batch:

* every rank draws the reparameterization noise of the *whole* batch, chunk by chunk as one
  process would (the ranks share the seed, so their RNG streams are equal), and uses its
  shard's rows;
* the calibrated variance is the global batch's: each rank sums its squared errors in a
  gradient-free pass, one ``all_reduce`` adds them, and every rank trains with the same
  ``sigma^2``;
* each rank's loss is weighted by its share of the batch's volumes (times W, which DDP's
  gradient average divides out), so the averaged gradient is the gradient of the global mean;
  a rank with an empty shard (a short last batch) still joins the all-reduce with a zero loss;
* the metrics (loss, R^2, active units, KL per dimension, sigma) are sums reduced across ranks
  before the per-volume means are taken, so every rank sees the same numbers, takes the same
  early-stopping decisions and reports what one process would.

Rank 0 alone writes the best model and the resumable checkpoint (``OUT/last/``); every rank
resumes from it, so ``OUT`` must be on a file system all nodes see. NCCL carries the
collectives on GPUs (one per rank, ``cuda:LOCAL_RANK``), gloo on CPUs. A collective that
waits longer than ``timeout_s`` for a rank fails instead of hanging; a rank that dies makes
the others fail at their next collective and torchrun ends the job
(:func:`peer_failure` turns that into one clear message).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from vaefusion.config import Config, Runtime
from vaefusion.errors import VaefusionError
from vaefusion.model.likelihood import calibrated_sigma2, loss_terms, squared_error
from vaefusion.model.network import volume_size
from vaefusion.model.objective import Likelihood, Objective
from vaefusion.training.data import SubjectBatches
from vaefusion.training.metrics import ModalityMeans, PassAccumulator, PassStats
from vaefusion.training.passes import autocast
from vaefusion.training.trainer import EpochStats, Trainer

LOGGER = logging.getLogger("vaefusion.distributed")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""

    rank: int
    world: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class RankFailure(VaefusionError):
    """Another rank stopped (died, was killed, or timed out) during a collective."""


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> tuple[DistContext, str]:
    """Join the process group torchrun set up; returns the context and the device to train on
    (``cuda`` with this rank's GPU current, or ``cpu``). NCCL on CUDA, gloo on CPU."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"timeout": timedelta(seconds=timeout_s)}
        if use_cuda:
            kwargs["device_id"] = torch.device("cuda", local)
        dist.init_process_group(backend, rank=rank, world_size=world, **kwargs)
    return DistContext(rank, world, local, backend), "cuda" if use_cuda else "cpu"


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """``[start, stop)`` of rank's contiguous share of ``n`` items (sizes differ by <= 1)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def chunk_sizes(n: int, chunk: int) -> list[int]:
    """Sizes of ``x.split(chunk)`` for ``n`` rows (how one process draws a batch's noise)."""
    return [min(chunk, n - i) for i in range(0, n, chunk)]


def batch_noise(n: int, chunk: int, latent_dim: int, device: torch.device) -> torch.Tensor:
    """The reparameterization noise one process would draw for a batch of ``n`` volumes."""
    return torch.cat([torch.randn(k, latent_dim, device=device) for k in chunk_sizes(n, chunk)])


def reduce_sums(acc: PassAccumulator) -> None:
    """Add up a pass accumulator across ranks: every tensor it holds is a sum, and so is its
    volume count ``n``."""
    for value in vars(acc).values():
        if isinstance(value, torch.Tensor):
            dist.all_reduce(value)
    device = next((v.device for v in vars(acc).values() if isinstance(v, torch.Tensor)),
                  torch.device("cpu"))
    n = torch.tensor(float(acc.n), dtype=torch.float64, device=device)
    dist.all_reduce(n)
    acc.n = int(n.item())


def split_subjects(paths: Sequence[Path], val_fraction: float, seed: int
                   ) -> tuple[list[Path], list[Path]]:
    """A seeded split of the cached subjects into training and validation (at least one each
    when there are two or more subjects)."""
    order = np.random.default_rng([seed, 17]).permutation(len(paths))
    n_val = min(len(paths) - 1, max(1, round(val_fraction * len(paths)))) if len(paths) > 1 else 0
    val = sorted(int(i) for i in order[:n_val])
    train = sorted(int(i) for i in order[n_val:])
    return [Path(paths[i]) for i in train], [Path(paths[i]) for i in val]


class DistributedTrainer(Trainer):
    """A :class:`Trainer` whose passes are sharded over the ranks of a process group."""

    def __init__(self, ctx: DistContext, cfg: Config, runtime: Runtime, latent_dim: int,
                 seed: int, train_paths: Sequence[Path], val_paths: Sequence[Path],
                 out_dir: Path, log: logging.Logger | None = None) -> None:
        self.ctx = ctx
        super().__init__(cfg, runtime, latent_dim, seed, train_paths, val_paths, out_dir, log)
        ids = [torch.cuda.current_device()] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        if ctx.world > cfg.batch_subjects:
            self.log.warning("--batch-subjects %d (the global batch) is smaller than the %d "
                             "ranks: some ranks idle in every step; raise it to at least %d.",
                             cfg.batch_subjects, ctx.world, ctx.world)

    def _pass(self, data: SubjectBatches, epoch: int,
              optimizer: torch.optim.Optimizer | None, desc: str, **kw: Any) -> PassStats:
        return sharded_pass(self, data, epoch, optimizer, **kw)

    def _save_best(self, stats: EpochStats) -> None:
        if self.ctx.is_main:
            super()._save_best(stats)
        dist.barrier()

    def save_state(self) -> Path:
        if self.ctx.is_main:
            super().save_state()
        dist.barrier()
        return self.checkpoint_path


def _shards(data: SubjectBatches, batches: list[list[int]], ctx: DistContext
            ) -> list[tuple[list[int], int, int]]:
    """Per batch: this rank's subjects, the offset of its first volume in the batch, and the
    batch's volumes."""
    mods = data.dataset.modalities
    out = []
    for batch in batches:
        start, stop = shard_range(len(batch), ctx.rank, ctx.world)
        offset = sum(len(mods[s]) for s in batch[:start])
        out.append((batch[start:stop], offset, sum(len(mods[s]) for s in batch)))
    return out


def sharded_pass(tr: DistributedTrainer, data: SubjectBatches, epoch: int,
                 optimizer: torch.optim.Optimizer | None, *, objective: Objective,
                 sigma2: float | None = None, baseline: ModalityMeans | None = None,
                 beta: float | None = None, mask: torch.Tensor | None = None,
                 free_bits: float = 0.0) -> PassStats:
    """One pass over this rank's shards; trains when ``optimizer`` is given (see the module
    doc); returns the statistics reduced over all ranks."""
    model, train = tr.model, optimizer is not None
    model.train(train)
    beta = tr.cfg.beta if beta is None else beta
    likelihood = objective.likelihood
    masked = likelihood.masked
    lik = _Lik(likelihood, mask if masked else None, beta, free_bits,
               int(mask.sum()) if masked and mask is not None else volume_size(model.grid))
    acc = PassAccumulator(model.latent_dim, lik.n_voxels, beta, tr.device, baseline,
                          box_sse=not masked)
    shards = _shards(data, data.batch_lists(epoch, shuffle=train), tr.ctx)
    loads: Iterator[torch.Tensor] = data.load_batches([s for s, _, _ in shards if s], epoch)
    mods = data.dataset.modalities
    with torch.set_grad_enabled(train):
        for mine, offset, n_batch in shards:
            x = next(loads) if mine else None
            names = [m for s in mine for m in mods[s]]
            rows = baseline.index(names) if baseline is not None and mine else None
            # a voxelwise network's rows (None for max-abs)
            net = model.modality_rows(names, tr.device) if mine else None
            if train:
                _train_step(tr, x, rows, net, offset, n_batch, lik, acc)
            elif x is not None:
                for i, part in enumerate(x.split(tr.chunk)):
                    with autocast(tr.device, tr.bf16):
                        recon, mu, logvar = model(part, rows=_rows(net, i, tr.chunk, part))
                    terms = loss_terms(recon, part, mu, logvar, beta, likelihood, sigma2,
                                       lik.mask, free_bits)
                    acc.add(part, recon, mu, logvar, terms, _rows(rows, i, tr.chunk, part))
    reduce_sums(acc)
    return acc.result()


class _Lik(NamedTuple):
    """The objective's settings of one pass (the trainer's ``_pass`` keywords)."""

    likelihood: Likelihood
    mask: torch.Tensor | None
    beta: float
    free_bits: float
    n_voxels: int


def _rows(rows: torch.Tensor | None, i: int, chunk: int, part: torch.Tensor
          ) -> torch.Tensor | None:
    return None if rows is None else rows[i * chunk:i * chunk + part.shape[0]]


def _train_step(tr: DistributedTrainer, x: torch.Tensor | None, rows: torch.Tensor | None,
                net: torch.Tensor | None, offset: int, n_batch: int, lik: _Lik,
                acc: PassAccumulator) -> None:
    """One optimizer step on this rank's shard of a batch of ``n_batch`` volumes (``rows``:
    the R^2 baseline's, ``net``: a voxelwise network's modality rows)."""
    model, device, chunk = tr.model, tr.device, tr.chunk
    n = 0 if x is None else x.shape[0]
    eps = batch_noise(n_batch, chunk, model.latent_dim, device)[offset:offset + n]
    parts = [] if x is None else list(zip(x.split(chunk), eps.split(chunk), strict=True))
    s2 = None
    if lik.likelihood.batch_variance:  # the global batch's variance, before any backward
        sse = torch.zeros((), dtype=torch.float64, device=device)
        with torch.no_grad():
            for i, (part, e) in enumerate(parts):
                with autocast(device, tr.bf16):
                    recon, _, _ = model(part, eps=e, rows=_rows(net, i, chunk, part))
                sse += squared_error(recon, part, lik.mask).double().sum()
        dist.all_reduce(sse)
        s2 = calibrated_sigma2(sse, n_batch * lik.n_voxels)
    tr.optimizer.zero_grad(set_to_none=True)
    if not parts:  # an empty shard still joins DDP's gradient all-reduce, with zeros
        dummy = torch.zeros((1, 1, *model.grid), device=device)
        first = None if model.scaling is None else torch.zeros(1, dtype=torch.long,
                                                                 device=device)
        recon, mu, logvar = tr.ddp(dummy, eps=torch.zeros(1, model.latent_dim, device=device),
                                   rows=first)
        (0.0 * (recon.sum() + mu.sum() + logvar.sum())).backward()
    for i, (part, e) in enumerate(parts):
        last = i == len(parts) - 1
        with (nullcontext() if last else tr.ddp.no_sync()):
            with autocast(device, tr.bf16):
                recon, mu, logvar = tr.ddp(part, eps=e, rows=_rows(net, i, chunk, part))
            terms = loss_terms(recon, part, mu, logvar, lik.beta, lik.likelihood, s2, lik.mask,
                               lik.free_bits)
            # this chunk's share of the global mean, times W (DDP averages over the W ranks)
            (terms.loss * (part.shape[0] * tr.ctx.world / n_batch)).backward()
        acc.add(part, recon, mu, logvar, terms, _rows(rows, i, chunk, part))
    tr.optimizer.step()


def peer_failure(exc: BaseException, ctx: DistContext, checkpoint: Path) -> RankFailure | None:
    """The clear error for a collective that failed because another rank stopped (or timed
    out); None for any other exception."""
    text = f"{type(exc).__name__}: {exc}"
    markers = ("Connection closed", "Connection reset", "Broken pipe", "timed out", "Timeout",
               "NCCL", "gloo", "ProcessGroup", "peer")
    if not isinstance(exc, (dist.DistError, RuntimeError)) or not any(m in text for m in markers):
        return None
    gist = text.splitlines()[0][:200]
    return RankFailure(f"rank {ctx.rank} of {ctx.world}: another rank stopped or stopped "
                       f"answering during training ({gist}); the job ends here. See the "
                       f"failed rank's log (torchrun names it), then rerun the same command: "
                       f"training resumes from {checkpoint}.", 1)
