"""Voxelwise standardisation inside the network (``--scaling voxelwise``, model format 3): the
network layer of :class:`vaefusion.model.objective.VoxelwiseScaling` (the scalings are
registered by name there).

The paper feeds the network max-abs scaled volumes and asks its decoder to draw each map
whole: the modality's mean map and the subject's departure from it. The decoder then spends
most of its capacity, and the latent code most of its information, on which of 54 templates to
draw; a subject's own detail is a small residual on top (``r2_subject`` stays near 0 at
convergence, benchmarks/README.md). The authors' later code (chromatic fusion) standardises
every voxel with training statistics instead.

Here the data keep their max-abs scale (the cache, the losses, the R^2 and every output are in
that space), and the standardisation is a fixed first and last layer of the network:

* the encoder sees ``(x - mean_m) / sd_m``: the subject's departure from modality ``m``'s
  training mean map, voxel by voxel, in units of its training SD;
* the decoder's last convolution is linear (no tanh: a standardised value is not bounded) and
  its output ``y`` becomes ``mean_m + sd_m * y``. A decoder that draws zeros draws the mean
  map, the R^2 baseline, so ``r2_subject`` starts at 0 and all capacity goes to the subject.

``mean_m`` and ``sd_m`` come from one fold's training subjects only, and are stored with the
weights (buffers), so a saved model standardises as it was trained. The network needs each
volume's modality: a row index into :attr:`VoxelScaling.names`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: A voxel's SD is floored at this share of the modality's mean in-mask SD: a voxel that barely
#: varies in the training subjects would otherwise turn tiny differences into huge inputs.
SD_FLOOR: float = 0.05


def floored_sds(sds: torch.Tensor) -> torch.Tensor:
    """Per-modality SD maps (modality first) floored at :data:`SD_FLOOR` of the modality's mean
    in-mask SD; 0 stays 0 (outside that modality's non-zero voxels). The linear twin and the
    ``pca-shared`` baseline standardise with the same rule as the network."""
    floor = torch.zeros_like(sds)
    for i in range(sds.shape[0]):
        inside = sds[i] > 0
        if inside.any():
            floor[i] = SD_FLOOR * sds[i][inside].mean()
    return torch.where(sds > 0, torch.maximum(sds, floor), sds)


class VoxelScaling(nn.Module):
    """Per-modality mean and SD maps (buffers, ``(n_modalities, 1, X, Y, Z)``)."""

    def __init__(self, names: Sequence[str], grid: Sequence[int]) -> None:
        super().__init__()
        self.names: tuple[str, ...] = tuple(names)
        shape = (len(self.names), 1, *(int(n) for n in grid))
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("sd", torch.ones(shape))

    def rows(self, modalities: Sequence[str], device: torch.device | str | None = None
             ) -> torch.Tensor:
        """Row indices of these volumes' modalities; a modality the model was not trained on
        is an error (it has no statistics)."""
        index = {n: i for i, n in enumerate(self.names)}
        unknown = [m for m in modalities if m not in index]
        if unknown:
            raise ValueError(f"modality {unknown[0]} has no training statistics in this model "
                             f"(trained on {', '.join(self.names[:4])} ...)")
        return torch.tensor([index[m] for m in modalities], dtype=torch.long,
                            device=device if device is not None else self.mean.device)

    @torch.no_grad()
    def fit(self, means: torch.Tensor, sds: torch.Tensor) -> None:
        """Set the statistics: ``means`` and ``sds`` ``(n_modalities, 1, X, Y, Z)`` (one
        fold's training subjects). Outside a modality's non-zero voxels the SD stays 0, so
        restored maps are exactly 0 there, as the inputs are."""
        self.mean.copy_(means)
        self.sd.copy_(floored_sds(sds))

    def standardise(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / sd`` per voxel of each volume's modality; 0 where the SD is 0."""
        sd = self.sd[rows].to(x.dtype)
        z = (x - self.mean[rows].to(x.dtype)) / sd.clamp_min(1e-12)
        return torch.where(sd > 0, z, torch.zeros_like(z))

    def restore(self, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``mean + sd * y``: a standardised output back in the data's (max-abs) scale."""
        return self.mean[rows].to(y.dtype) + self.sd[rows].to(y.dtype) * y
