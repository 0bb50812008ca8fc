"""The VAE's linear twins: what PCA reconstructs of the same validation subjects.

A VAE's reconstruction R^2 means little on its own: on simulated or real maps, much of the
between-subject variation is noise that no small latent can hold. Its linear twins, fitted on
the same training subjects at the same latent size and grid, say what a linear model gets:

- ``pca-shared``: one PCA over every training volume as a sample (the shared VAE's linear
  analogue: one encoder and one decoder for all modalities, ``l`` components). It is given
  what the network is given: with voxelwise scaling it is fitted to the same standardised
  volumes, ``(x - mean_m) / sd_m`` with the network's own training statistics, and its
  reconstruction is restored as ``mean_m + sd_m * z``. So the modality mean maps, which the
  voxelwise network gets for free, are free for its twin too (a twin with one global mean
  would have to spend components on them, and the VAE's lead over it would be an artefact);
- ``pca-late``: one PCA per modality over the training subjects (``min(l, n_train - 1)``
  components each, so ``n x l`` numbers per subject as the VAE's features).

Their R^2 are computed exactly as :mod:`vaefusion.training.metrics` computes the VAE's: per
modality, against the training subjects' mean level and mean map, then averaged over the
modalities. The report warns when the VAE's subject R^2 is below ``pca-shared``'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from vaefusion.model.scaling import VoxelScaling
from vaefusion.training.data import SubjectBatches
from vaefusion.training.metrics import ModalityMeans

LOGGER = logging.getLogger("vaefusion.training")

#: Largest training matrix (values) the twins are computed for; beyond it (full-grid studies
#: of hundreds of subjects) they are skipped with a log line rather than filling memory.
MAX_VALUES = 300_000_000


@dataclass(frozen=True)
class TwinR2:
    """One linear twin's validation R^2: mean over modalities and per modality."""

    r2: float
    r2_subject: float
    r2_modality: tuple[float, ...]
    r2_subject_modality: tuple[float, ...]

    def to_dict(self) -> dict[str, object]:
        return {"r2": self.r2, "r2_subject": self.r2_subject,
                "r2_modality": list(self.r2_modality),
                "r2_subject_modality": list(self.r2_subject_modality)}


def _stack(data: SubjectBatches, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(volumes, voxels)`` float64 on the CPU and each volume's modality row."""
    xs, rows = [], []
    index = {n: i for i, n in enumerate(names)}
    for s, mods in enumerate(data.dataset.modalities):
        xs.append(data.subject_volumes(s).double().flatten(1).cpu())
        rows.extend(index.get(m, len(names)) for m in mods)
    return torch.cat(xs), torch.tensor(rows)


def _scores(x: torch.Tensor, recon: torch.Tensor, rows: torch.Tensor,
            baseline: ModalityMeans) -> TwinR2:
    names = len(baseline.names)
    means = baseline.means.double().flatten(1).cpu()
    levels = means.mean(dim=1, keepdim=True)
    sse = torch.zeros(names + 1, dtype=torch.float64)
    sst_map, sst_level = sse.clone(), sse.clone()
    sse.index_add_(0, rows, (x - recon).pow(2).sum(1))
    sst_map.index_add_(0, rows, (x - means[rows]).pow(2).sum(1))
    sst_level.index_add_(0, rows, (x - levels[rows]).pow(2).sum(1))
    nan = torch.full_like(sse, float("nan"))
    r2_map = torch.where(sst_map > 0, 1 - sse / sst_map.clamp_min(1e-30), nan)[:names]
    r2_level = torch.where(sst_level > 0, 1 - sse / sst_level.clamp_min(1e-30), nan)[:names]
    return TwinR2(float(r2_level.nanmean()), float(r2_map.nanmean()),
                  tuple(r2_level.tolist()), tuple(r2_map.tolist()))


def _pca_basis(x: torch.Tensor, k: int) -> torch.Tensor:
    """The top ``k`` principal directions ``(voxels, k)`` of centred rows ``x``."""
    k = max(1, min(k, x.shape[0] - 1, x.shape[1]))
    if min(x.shape) <= 2000:
        _, _, v = torch.linalg.svd(x, full_matrices=False)
        return v[:k].T
    # randomized SVD (Halko et al.) for large matrices; seeded so the twin is reproducible
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        _, _, v = torch.svd_lowrank(x, q=min(k + 10, min(x.shape)), niter=4)
    finally:
        torch.random.set_rng_state(gen_state)
    return v[:, :k]


def _shared_twin(xt: torch.Tensor, rt: torch.Tensor, xv: torch.Tensor, rv: torch.Tensor,
                 latent_dim: int, scaling: VoxelScaling | None) -> torch.Tensor:
    """``pca-shared``'s reconstruction of the validation volumes ``xv``."""
    if scaling is None:  # max-abs: every volume a sample around one mean over all volumes
        mean = xt.mean(0, keepdim=True)
        basis = _pca_basis(xt - mean, latent_dim)
        return mean + (xv - mean) @ basis @ basis.T
    mean = scaling.mean.detach().double().flatten(1).cpu()
    sd = scaling.sd.detach().double().flatten(1).cpu()

    def standardise(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        # 0 where the SD is 0 (outside the modality's voxels), as the network's input
        return torch.where(sd[rows] > 0, (x - mean[rows]) / sd[rows].clamp_min(1e-12), 0.0)

    zt = standardise(xt, rt)
    centre = zt.mean(0, keepdim=True)
    basis = _pca_basis(zt - centre, latent_dim)
    zv = centre + (standardise(xv, rv) - centre) @ basis @ basis.T
    return mean[rv] + sd[rv] * zv


def linear_twins(train: SubjectBatches, val: SubjectBatches, baseline: ModalityMeans,
                 latent_dim: int, scaling: VoxelScaling | None = None) -> dict[str, TwinR2]:
    """``pca-shared`` and ``pca-late`` validation R^2 (empty when the data are too large).

    ``scaling``: the network's voxelwise statistics (``None`` for max-abs), which
    ``pca-shared`` standardises with as the network does; the modality rows of a model's
    statistics are ``baseline.names``, in that order."""
    n_values = train.n_volumes * int(torch.tensor(train.grid).prod())
    if n_values > MAX_VALUES:
        LOGGER.info("linear twins skipped: %d training values exceed %d", n_values, MAX_VALUES)
        return {}
    names = baseline.names
    xt, rt = _stack(train, names)
    xv, rv = _stack(val, names)
    out: dict[str, TwinR2] = {}
    if scaling is not None and scaling.names != names:
        raise ValueError(f"scaling rows {scaling.names[:3]}... are not {names[:3]}...")
    # a validation modality the training subjects lack (row len(names)) has no statistics:
    # its reconstruction is left at 0, and _scores ignores that row
    known_v = rv < len(names)
    recon = torch.zeros_like(xv)
    recon[known_v] = _shared_twin(xt[rt < len(names)], rt[rt < len(names)], xv[known_v],
                                  rv[known_v], latent_dim, scaling)
    out["pca-shared"] = _scores(xv, recon, rv, baseline)
    # pca-late: one PCA per modality over the training subjects
    recon = torch.zeros_like(xv)
    for m in range(len(names)):
        tr, va = rt == m, rv == m
        if not bool(va.any()) or int(tr.sum()) < 2:
            recon[va] = baseline.means.double().flatten(1).cpu()[m]
            continue
        mm = xt[tr].mean(0, keepdim=True)
        b = _pca_basis(xt[tr] - mm, latent_dim)
        recon[va] = mm + (xv[va] - mm) @ b @ b.T
    out["pca-late"] = _scores(xv, recon, rv, baseline)
    return out
