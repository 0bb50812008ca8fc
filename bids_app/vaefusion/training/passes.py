"""One pass over a data set: the chunked forward/backward of whole-subject batches, the
calibrated variance of a batch, and the statistics of the pass."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from vaefusion.inputs.cache import read_meta
from vaefusion.model.flops import activation_count
from vaefusion.model.likelihood import calibrated_sigma2, loss_terms, squared_error
from vaefusion.model.network import VAE, volume_size
from vaefusion.model.objective import Objective
from vaefusion.training.data import SubjectBatches
from vaefusion.training.metrics import ModalityMeans, PassAccumulator, PassStats

#: Layer-output elements per forward/backward chunk on CPU (~one full-grid volume). Measured on
#: 2 cores at 53x63x52: CPU time per volume is flat from 1 to 4 volumes per pass while page
#: faults (kernel time) and memory grow with the chunk, so one 54-volume subject is processed
#: as 54 chunks, ~100 MB each instead of ~6 GB at once; tiny grids get the whole batch at once.
CPU_CHUNK_ACTIVATIONS = 16_000_000


#: Fraction of free GPU memory one chunk may use (bytes estimated as 4 x activations x 4 B).
GPU_CHUNK_FRACTION = 0.5


def cached_modalities(paths: Sequence[Path]) -> list[str]:
    return list(read_meta(Path(paths[0])).modalities) if paths else []


def autocast(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam; the fused kernel where this torch has it (CPU since torch 2.4): one pass over the
    22 M parameters instead of several, ~5x faster steps on CPU, same update rule."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=lr)


def chunk_volumes(grid: Sequence[int], width: float, latent_dim: int,
                  device: torch.device) -> int:
    """Volumes per forward/backward pass inside a batch (gradient accumulation).

    A batch stays the whole subjects of ``--batch-subjects`` (one optimizer step, the same
    gradient up to float summation order); the chunk only bounds memory: ~16 M activations on
    CPU, half the free memory on CUDA (where bigger passes are also faster).
    """
    acts = activation_count(grid, width, latent_dim)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, int(GPU_CHUNK_FRACTION * free) // (16 * acts))
    return max(1, CPU_CHUNK_ACTIVATIONS // acts)


def _batch_sigma2(model: VAE, parts: Sequence[torch.Tensor], n_values: int,
                  device: torch.device, bf16: bool, mask: torch.Tensor | None = None,
                  rows: Sequence[torch.Tensor | None] | None = None
                  ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The calibrated variance of a batch processed in several chunks, before any backward.

    A gradient-free pass draws each chunk's reparameterization noise (in the order the
    training pass would) and sums the squared errors; the training pass then decodes the same
    z with this variance, so the gradient is that of the whole batch in one pass.
    """
    sse = torch.zeros((), dtype=torch.float64, device=device)
    noise = []
    with torch.no_grad():
        for part, r in zip(parts, rows or [None] * len(parts), strict=True):
            eps = torch.randn(part.shape[0], model.latent_dim, device=device)
            with autocast(device, bf16):
                recon, _, _ = model(part, eps=eps, rows=r)
            sse += squared_error(recon, part, mask).double().sum()
            noise.append(eps)
    return calibrated_sigma2(sse, n_values), noise


def net_rows(model: torch.nn.Module, modalities: Sequence[str], device: torch.device,
             chunk: int, n_parts: int) -> list[torch.Tensor | None]:
    """The ``rows`` argument of each chunk of a batch whose volumes have these modalities:
    ``None`` for every chunk of a max-abs network (also through a DDP or compile wrapper)."""
    net = getattr(model, "module", getattr(model, "_orig_mod", model))
    rows = net.modality_rows(modalities, device)
    return [None] * n_parts if rows is None else list(rows.split(chunk))


def run_pass(model: VAE, data: SubjectBatches, epoch: int, beta: float, device: torch.device,
               bf16: bool, optimizer: torch.optim.Optimizer | None, desc: str,
               chunk: int | None = None, *, objective: Objective,
               sigma2: float | None = None, baseline: ModalityMeans | None = None,
               mask: torch.Tensor | None = None, free_bits: float = 0.0) -> PassStats:
    """One pass; trains when ``optimizer`` is given. Returns its :class:`PassStats`.

    Each batch is one optimizer step on the mean loss of its volumes, computed in chunks of
    ``chunk`` volumes whose gradients are accumulated (see :func:`chunk_volumes`). With a
    batch-variance likelihood (``objective.likelihood.batch_variance``: ``sigma``, ``mask``)
    training uses each batch's calibrated variance, and ``sigma2`` (validation: the training
    epoch's) fixes it instead. ``baseline`` enables R^2 (and, in evaluation passes, the
    decoder head's dead-channel shares). ``mask`` (the brain mask) is what a masked likelihood
    counts; ``free_bits`` as in ``loss_terms``.
    """
    train = optimizer is not None
    model.train(train)
    if chunk is None:
        chunk = chunk_volumes(model.grid, model.width, model.latent_dim, device)
    # sums stay on the device: one host sync per pass, not per batch
    likelihood = objective.likelihood
    masked = likelihood.masked
    n_voxels = int(mask.sum()) if masked and mask is not None else volume_size(model.grid)
    acc = PassAccumulator(model.latent_dim, n_voxels, beta, device, baseline,
                          box_sse=not masked)
    head: list[torch.Tensor] = []
    hook = (model.head.register_forward_hook(lambda _m, _i, out: head.append(out))
            if not train and baseline is not None else None)
    subjects = data.batch_lists(epoch, shuffle=train)
    mods = data.dataset.modalities
    bar = tqdm(data.epoch(epoch, shuffle=train), total=len(data), desc=desc, leave=False,
               unit="batch", disable=not sys.stderr.isatty())
    with torch.set_grad_enabled(train):
        for x, batch in zip(bar, subjects, strict=True):
            b = x.shape[0]
            names = [m for s in batch for m in mods[s]]
            rows = baseline.index(names) if baseline is not None else None
            parts = x.split(chunk)
            # a voxelwise network standardises each volume by its modality's statistics
            mrows = net_rows(model, names, device, chunk, len(parts))
            s2, noise = sigma2, [None] * len(parts)
            if train and likelihood.batch_variance and len(parts) > 1:
                s2, noise = _batch_sigma2(model, parts, b * n_voxels, device, bf16,
                                          mask if masked else None, mrows)
            if train:
                optimizer.zero_grad(set_to_none=True)
            for i, (part, eps) in enumerate(zip(parts, noise, strict=True)):
                with autocast(device, bf16):
                    recon, mu, logvar = model(part, eps=eps, rows=mrows[i])
                terms = loss_terms(recon, part, mu, logvar, beta, likelihood, s2,
                                   mask if masked else None, free_bits)
                if train:
                    # the chunk's share of the batch mean: accumulated grads = full-batch grads
                    (terms.loss * (part.shape[0] / b)).backward()
                part_rows = None if rows is None else rows[i * chunk:i * chunk + part.shape[0]]
                acc.add(part, recon, mu, logvar, terms, part_rows)
                if head and part_rows is not None:
                    acc.add_head(head.pop(), part_rows)
            if train:
                optimizer.step()
    if hook is not None:
        hook.remove()
    return acc.result()
