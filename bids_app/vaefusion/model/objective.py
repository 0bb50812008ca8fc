"""The training objective as objects: a decoder :class:`Likelihood` and a network
:class:`Scaling`, each a class with a name, found through a :class:`Registry`.

A variant is one class plus one registration line (``@LIKELIHOODS.register``, a
:class:`~vaefusion.model.registry.Registry`): its name is
what ``--likelihood`` / ``--scaling`` accept and what ``model.json`` records, its class
attributes say what it needs from the fold's statistics and how the passes treat it. Nothing
outside the registries compares a variant's name (``tests/test_architecture.py`` greps for it).

This module is imported by the configuration and the CLI to list the names, so it does not
load torch: the likelihoods' terms are written with tensor methods only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from vaefusion.model.registry import Registry, Variant

if TYPE_CHECKING:
    import torch

#: Factor of the squared error in the unit-variance NLL (``0.5 * SSE``).
RECON_SCALE: float = 0.5

#: Floor of the calibrated variance: a perfect reconstruction must not give log(0).
MIN_SIGMA2: float = 1e-6

LOG_2PI: float = math.log(2.0 * math.pi)

#: The fold statistics a variant may need (the trainer computes them from the fold's training
#: subjects): the brain mask (voxels where any training volume is non-zero), and each
#: modality's mean and SD maps.
MASK = "mask"
MODALITY_MAPS = "modality_maps"



# --------------------------------------------------------------------------- likelihoods
def calibrated_sigma2(sse_sum: torch.Tensor, n_values: int) -> torch.Tensor:
    """The maximum-likelihood shared variance, detached: the mean squared error over
    ``n_values`` voxels, floored at ``MIN_SIGMA2`` (stays on the device: no host sync)."""
    return (sse_sum.detach().float() / max(int(n_values), 1)).clamp_min(MIN_SIGMA2)


def _as_tensor(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``torch.as_tensor(value, dtype=like.dtype, device=like.device)`` without torch."""
    if not hasattr(value, "to"):  # a Python or NumPy number
        return like.new_tensor(float(value))
    return value.to(dtype=like.dtype, device=like.device)


def gaussian_nll(sse: torch.Tensor, n_voxels: int, sigma2: float | torch.Tensor
                 ) -> torch.Tensor:
    """``-log N(x; recon, sigma^2 I)`` per volume from its SSE, constants included."""
    sigma2 = _as_tensor(sigma2, sse)
    return 0.5 * n_voxels * (LOG_2PI + sigma2.log()) + sse / (2.0 * sigma2)


def fixed_variance(sigma2: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A given variance (a float or a tensor) as a detached tensor of ``like``'s dtype."""
    return _as_tensor(sigma2, like).detach()


class Likelihood(Variant):
    """A decoder likelihood ``x ~ N(decode(z), sigma^2 I)``: how ``sigma^2`` is chosen.

    Class attributes: ``name`` (``--likelihood``, ``model.json``); ``needs`` (fold statistics:
    :data:`MASK` for a likelihood that counts only the brain mask's voxels);
    ``batch_variance`` (one calibrated variance shared by a whole batch, which a batch
    processed in chunks or shards must compute in a gradient-free pass first);
    ``validation_variance`` (validation scores with the training epoch's variance, rather than
    choosing its own); ``collapse_hint`` (the option to try when the posterior collapses, if
    another likelihood is the fix).
    """

    batch_variance: ClassVar[bool] = False
    validation_variance: ClassVar[bool] = True
    collapse_hint: ClassVar[str] = ""

    @property
    def masked(self) -> bool:
        """Whether the squared error counts only the brain mask's voxels."""
        return MASK in self.needs

    def nll(self, sse: torch.Tensor, n_voxels: int, sigma2: float | torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-volume negative log-likelihood from the per-volume ``sse`` over ``n_voxels``,
        and the variance used; ``sigma2`` is a given variance (a chunk of a larger batch, or
        validation with the training variance), if any."""
        raise NotImplementedError

    def to_meta(self, sigma: float) -> dict[str, Any]:
        """The keys this likelihood writes into ``model.json``."""
        return {"likelihood": self.name, "sigma": sigma}


LIKELIHOODS: Registry[Likelihood] = Registry("likelihood")


@LIKELIHOODS.register
class VolumeLikelihood(Likelihood):
    """``volume``: one calibrated variance per volume over the mask's voxels,
    ``sigma_v^2 = SSE_v / N_mask``; it ignores a given variance."""

    name = "volume"
    needs = frozenset({MASK})
    validation_variance = False

    def nll(self, sse, n_voxels, sigma2):
        s2 = (sse.detach() / max(n_voxels, 1)).clamp_min(MIN_SIGMA2)
        return gaussian_nll(sse, n_voxels, s2), s2


@LIKELIHOODS.register
class MaskLikelihood(Likelihood):
    """``mask``: one calibrated variance shared by the batch, over the mask's voxels."""

    name = "mask"
    needs = frozenset({MASK})
    batch_variance = True

    def nll(self, sse, n_voxels, sigma2):
        s2 = (calibrated_sigma2(sse.sum(), sse.numel() * n_voxels) if sigma2 is None
              else fixed_variance(sigma2, sse))
        return gaussian_nll(sse, n_voxels, s2), s2


@LIKELIHOODS.register
class SigmaLikelihood(MaskLikelihood):
    """``sigma``: one calibrated variance shared by the batch, over the whole box."""

    name = "sigma"
    needs = frozenset()


@LIKELIHOODS.register
class UnitLikelihood(Likelihood):
    """``unit``: sigma = 1, the loss of earlier versions; it ignores a given variance."""

    name = "unit"
    collapse_hint = "--likelihood sigma"

    def nll(self, sse, n_voxels, sigma2):
        # written as before (0.5 * SSE), the constant added on top: bit-identical gradients
        return RECON_SCALE * sse + 0.5 * n_voxels * LOG_2PI, sse.new_ones(())


def likelihood_of(meta: Mapping[str, Any]) -> Likelihood:
    """The likelihood a ``model.json`` records."""
    return LIKELIHOODS.get(str(meta["likelihood"]))


# --------------------------------------------------------------------------- scalings
class Scaling(Variant):
    """The network's input and output scaling. ``needs`` (fold statistics): :data:`MODALITY_MAPS`
    for a network that standardises each volume by its modality's training mean and SD maps
    (``vaefusion.model.scaling.VoxelScaling``, a layer of the network)."""

    @property
    def per_modality(self) -> bool:
        """Whether the network holds per-modality statistics (and needs each volume's
        modality)."""
        return MODALITY_MAPS in self.needs

    def to_meta(self, modalities: list[str]) -> dict[str, Any]:
        """The keys this scaling writes into ``model.json`` (``modalities``: the rows of the
        network's statistics, empty when it holds none)."""
        return {"scaling": self.name, "scaling_modalities": list(modalities)}


SCALINGS: Registry[Scaling] = Registry("scaling")


@SCALINGS.register
class MaxAbsScaling(Scaling):
    """``maxabs``: the paper's volumes, each scaled to [-1, 1] by its maximum absolute value
    (in preprocessing); the network adds nothing and ends in tanh."""

    name = "maxabs"


@SCALINGS.register
class VoxelwiseScaling(Scaling):
    """``voxelwise``: each voxel standardised by its modality's training mean and SD inside
    the network (``vaefusion.model.scaling``)."""

    name = "voxelwise"
    needs = frozenset({MODALITY_MAPS})


def scaling_of(meta: Mapping[str, Any]) -> Scaling:
    """The scaling a ``model.json`` records; formats 1 and 2 have none and were max-abs."""
    return SCALINGS.get(str(meta.get("scaling", MaxAbsScaling.name)))


# --------------------------------------------------------------------------- the objective
@dataclass(frozen=True)
class Objective:
    """What a training optimises: the decoder likelihood and the network's scaling."""

    likelihood: Likelihood
    scaling: Scaling

    @classmethod
    def named(cls, likelihood: str, scaling: str) -> Objective:
        """The objective of ``--likelihood`` and ``--scaling`` (names in the registries)."""
        return cls(LIKELIHOODS.get(likelihood), SCALINGS.get(scaling))

    @property
    def needs(self) -> frozenset[str]:
        """Every fold statistic the likelihood and the scaling need."""
        return self.likelihood.needs | self.scaling.needs
