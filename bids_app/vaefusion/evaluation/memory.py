"""Memory the group level needs, estimated from subjects x volumes x grid before any training.

``--mem`` (or, without it, the available RAM) is shared by the ``--nprocs`` units that run at
once. What can stream does so when it does not fit: the VAE's training data
(``Runtime.data_budget_bytes``, :class:`vaefusion.training.data.SubjectBatches`) and the PCA
baselines' subject arrays (:func:`vaefusion.evaluation.baselines.preloaded`). What cannot
stream is checked here: the model, its optimizer and one chunk of activations; the PCA Gram
matrices (``n_modalities x n^2`` float64); ``pca-shared``'s projection matrices. A setting
that cannot fit is refused before any training starts, naming what to change.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from vaefusion.errors import UsageError

LOG = logging.getLogger("vaefusion.memory")

GiB = 2**30
#: A unit's process before its data: Python, torch, numpy, scipy, scikit-learn and nipype
#: imported, and the allocators' slack (measured: ~340 MB after the imports, ~700 MB peak for a
#: whole tiny group run with its figures).
BASE_BYTES = 512 * 2**20
#: Largest subject block the Gram accumulation reads at once (two blocks in memory), as in
#: :func:`vaefusion.evaluation.baselines.modality_grams`.
GRAM_BLOCK_BYTES = 256 * 2**20
#: Extra columns of pca-shared's randomized range finder (baselines.shared_pca_scores).
OVERSAMPLES = 10


@dataclass(frozen=True)
class MemoryNeed:
    """What one unit of a method needs at least (``fixed``) and with its data (``total``)."""

    method: str
    fixed: int  # bytes that cannot stream
    data: int  # bytes of data kept in memory (0 when it streams)
    detail: str

    @property
    def total(self) -> int:
        return BASE_BYTES + self.fixed + self.data


def gb(n: float) -> str:
    """``0.503 GB``, or ``12.5 MB`` below 100 MB."""
    return f"{n / 2**20:.1f} MB" if n < 100 * 2**20 else f"{n / GiB:.3g} GB"


def vae_need(n_volumes: int, batch_volumes: int, grid: Sequence[int], width: float,
             latent_dim: int, data_budget: int, cuda: bool = False,
             full_grid: bool = False) -> MemoryNeed:
    """One VAE fold: model, Adam and gradients (4 copies of the weights, 1 more for the saved
    best model), one chunk of activations kept for the backward pass, and the training data
    when they fit the budget (else one streamed batch; resident data are float16 on the
    ``full_grid``, else float32, as in SubjectBatches). On CUDA those live on the GPU; the
    host keeps one batch."""
    import torch

    from vaefusion.model.flops import activation_count, count_parameters
    from vaefusion.model.network import VAE
    from vaefusion.training.passes import CPU_CHUNK_ACTIVATIONS

    vox = math.prod(grid)
    batch = batch_volumes * vox * 4
    if cuda:
        return MemoryNeed("vae", batch, 0, f"one batch of {batch_volumes} volumes on the host")
    with torch.device("meta"):  # shapes only: no memory is allocated
        params = count_parameters(VAE(tuple(grid), latent_dim, width))
    acts = activation_count(grid, width, latent_dim)
    chunk = max(1, min(batch_volumes, CPU_CHUNK_ACTIVATIONS // acts))
    fixed = 5 * params * 4 + 2 * chunk * acts * 4 + batch
    resident = n_volumes * vox * (2 if full_grid else 4)
    data = resident if resident <= data_budget else 0
    detail = (f"{params / 1e6:.1f} M parameters with Adam, activations of {chunk} volume(s) "
              f"at grid {'x'.join(map(str, grid))}, "
              + (f"{gb(resident)} of resident data" if data else "data streamed"))
    return MemoryNeed("vae", fixed, data, detail)


@dataclass(frozen=True)
class UnitSizes:
    """The sizes one unit of a method works with: ``n_fit`` is a fold's training + validation
    subjects, ``grid`` the analysed one (after ``downsample``)."""

    n_subjects: int
    n_fit: int
    n_modalities: int
    grid: tuple[int, ...]
    batch_subjects: int
    width: float
    latent_dim: int
    data_budget: int
    cuda: bool = False
    downsample: int = 1

    @property
    def n_voxels(self) -> int:
        return math.prod(self.grid)

    def data_bytes(self) -> int:
        """The subjects' arrays in memory when they fit the budget (else 0: they stream)."""
        data = self.n_subjects * self.n_modalities * self.n_voxels * 4
        return data if data <= self.data_budget else 0


def shared_pca_need(method: str, s: UnitSizes) -> MemoryNeed:
    """A randomized PCA of every training volume (``pca-shared``): its fixed matrices, and
    the subjects' arrays when they fit."""
    rank = s.latent_dim + OVERSAMPLES
    # V x rank products (a few live at once) and the samples x rank range, float64
    fixed = 4 * s.n_voxels * rank * 8 + 2 * s.n_fit * s.n_modalities * rank * 8
    detail = f"randomized PCA of {s.n_fit * s.n_modalities} volumes x {s.n_voxels} voxels"
    return MemoryNeed(method, fixed, s.data_bytes(), detail)


def gram_pca_need(method: str, s: UnitSizes) -> MemoryNeed:
    """An exact PCA from the per-modality Gram matrices (``pca-early``, ``pca-late``)."""
    grams = s.n_modalities * s.n_subjects**2 * 8
    blocks = 2 * min(GRAM_BLOCK_BYTES, s.n_subjects * s.n_modalities * s.n_voxels * 8)
    detail = (f"Gram matrices {s.n_modalities} x {s.n_subjects}^2 float64 ({gb(grams)}) "
              f"and two blocks of subjects")
    return MemoryNeed(method, grams + blocks, s.data_bytes(), detail)


class Estimated(Protocol):
    """A method as the memory check sees it (:class:`vaefusion.evaluation.methods.Method`)."""

    name: str

    def memory_need(self, sizes: UnitSizes) -> MemoryNeed: ...

    def memory_fix(self, selected: Sequence[str]) -> str: ...


def group_needs(methods: Sequence[Estimated], sizes: UnitSizes) -> list[MemoryNeed]:
    """The needs of one unit of each method."""
    return [m.memory_need(sizes) for m in methods]


def check_group_memory(cfg, manifest, methods: Sequence[Estimated]) -> list[MemoryNeed]:
    """Log each method's estimate (``methods``: those of ``--methods``); refuse (exit 64) a
    setting whose unit cannot fit in ``--mem`` divided by ``--nprocs``, before any
    training."""
    from vaefusion.evaluation.folds import make_partition
    from vaefusion.inputs.cache import read_meta
    from vaefusion.model.network import downsampled_grid

    assert cfg.mem_gb is not None, "check_group_memory needs a resolved config"
    limit = int(float(cfg.mem_gb) * GiB / max(1, cfg.nprocs))
    runtime = cfg.runtime()
    meta = read_meta(manifest.files[0])
    grid = downsampled_grid(meta.shape, cfg.downsample)
    # the largest fold's training + validation subjects (leave-one-site-out: uneven folds)
    n_fit = max(f.fit.size for f in make_partition(manifest.y(), manifest.cv_groups(), cfg, 0))
    latent = max(cfg.latent_dims)
    needs = group_needs(methods, UnitSizes(
        len(manifest.files), n_fit, len(manifest.modalities), tuple(grid), cfg.batch_subjects,
        cfg.width, latent, runtime.data_budget_bytes, runtime.device == "cuda",
        cfg.downsample))
    share = f"{gb(limit)} per unit (--mem {cfg.mem_gb:g} GB / --nprocs {cfg.nprocs})"
    LOG.info("Memory: %s; %s", ", ".join(f"{d.method} ~{gb(d.total)}" for d in needs), share)
    for method, need in zip(methods, needs, strict=True):
        if BASE_BYTES + need.fixed <= limit:
            continue
        fix = method.memory_fix(cfg.methods)
        raise UsageError(
            f"{need.method} needs about {gb(BASE_BYTES + need.fixed)} per unit for "
            f"{len(manifest.files)} subjects ({need.detail}), more than the {share}; raise "
            f"--mem, lower --nprocs, or {fix}."
        )
    return needs
