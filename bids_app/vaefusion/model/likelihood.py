"""The terms of the negative ELBO: a Gaussian reconstruction likelihood and the KL to N(0, I).

Every value here is a true negative log-likelihood per volume, constants included::

    -log N(x; recon, sigma^2 I) = 0.5 * N * log(2 pi sigma^2) + SSE / (2 sigma^2)

with ``N`` the voxels of a volume and ``SSE`` the summed squared error, so losses are
comparable across grids, widths and likelihoods. Two likelihoods (``--likelihood``, default
``sigma``):

* ``sigma`` (calibrated decoder, Rybkin et al. 2021, "Simple and effective VAE training with
  calibrated decoders"): one variance shared by every voxel, volume and modality, set to its
  maximum-likelihood value for the batch, ``sigma^2 = SSE / (volumes * N)`` (the batch's mean
  squared error). It adds no parameter (so none grows with the modalities, and FedAvg has
  nothing extra to average). Why: volumes are scaled to [-1, 1] and the residual SD is about
  0.08, so a unit variance weighs reconstruction ~150 times too little against the KL and the
  posterior collapses (for a linear VAE only directions with variance above ``beta * sigma^2``
  survive). A learned log sigma^2 would need thousands of Adam steps at lr 1e-4 to move from 0
  to log(0.08^2); the analytic value is right at every step. Its gradient equals that of the
  objective minimised over sigma (the derivative in sigma vanishes at the optimum), so sigma^2
  is used detached, which also lets a batch be processed in chunks with the same gradient.
* ``unit``: sigma = 1, the loss of earlier versions (``0.5 * SSE`` plus the constant
  ``0.5 * N * log(2 pi)``, which has no gradient): same gradients, for reproducing older runs.

Computed in float32 even under bf16 autocast (sums over ~10^5 voxels lose precision in bf16).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

#: Factor of the squared error in the unit-variance NLL (``0.5 * SSE``).
RECON_SCALE: float = 0.5

#: Floor of the calibrated variance: a perfect reconstruction must not give log(0).
MIN_SIGMA2: float = 1e-6

LOG_2PI: float = math.log(2.0 * math.pi)


class LossTerms(NamedTuple):
    """Batch means over volumes: ``loss = recon + beta * kl`` (the negative ELBO per volume);
    ``sse`` and ``kl_per_volume`` are per volume (``(n,)``, detached) for diagnostics, and
    ``sigma2`` is the variance used (a 0-d tensor; 1 for ``unit``)."""

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    sse: torch.Tensor
    kl_per_volume: torch.Tensor
    sigma2: torch.Tensor


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, sigma^2) || N(0, 1))`` per sample and latent dimension, ``(n, l)``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(N(mu, sigma^2) || N(0, I))`` summed over latent dimensions."""
    return 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1.0 - logvar, dim=1)


def squared_error(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample sum of squared errors over voxels (float32)."""
    return (recon.float() - x.float()).pow(2).flatten(1).sum(dim=1)


def reconstruction_nll(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample unit-variance Gaussian NLL without its constant: ``0.5 * SSE`` over voxels."""
    return RECON_SCALE * squared_error(recon, x)


def calibrated_sigma2(sse_sum: torch.Tensor, n_values: int) -> torch.Tensor:
    """The maximum-likelihood shared variance, detached: the mean squared error over
    ``n_values`` voxels, floored at ``MIN_SIGMA2`` (stays on the device: no host sync)."""
    return (sse_sum.detach().float() / max(int(n_values), 1)).clamp_min(MIN_SIGMA2)


def gaussian_nll(sse: torch.Tensor, n_voxels: int, sigma2: float | torch.Tensor
                 ) -> torch.Tensor:
    """``-log N(x; recon, sigma^2 I)`` per volume from its SSE, constants included."""
    sigma2 = torch.as_tensor(sigma2, dtype=sse.dtype, device=sse.device)
    return 0.5 * n_voxels * (LOG_2PI + torch.log(sigma2)) + sse / (2.0 * sigma2)


def loss_terms(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
               beta: float = 1.0, likelihood: str = "sigma",
               sigma2: float | torch.Tensor | None = None) -> LossTerms:
    """Negative ELBO, mean over the volumes of the batch, with its terms.

    ``likelihood="sigma"`` uses ``sigma2`` when given (a chunk of a larger batch, or
    validation with the training variance), else the batch's own mean squared error.
    ``likelihood="unit"`` is sigma = 1 and ignores ``sigma2``.
    """
    sse = squared_error(recon, x)
    n_voxels = recon[0].numel()
    kl = kl_divergence(mu.float(), logvar.float())
    if likelihood == "unit":
        # written as before (0.5 * SSE), the constant added on top: bit-identical gradients
        s2 = torch.ones((), device=sse.device)
        rec = RECON_SCALE * sse + 0.5 * n_voxels * LOG_2PI
    elif likelihood == "sigma":
        s2 = (calibrated_sigma2(sse.sum(), sse.numel() * n_voxels) if sigma2 is None
              else torch.as_tensor(sigma2, dtype=sse.dtype, device=sse.device).detach())
        rec = gaussian_nll(sse, n_voxels, s2)
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose 'sigma' or 'unit'")
    return LossTerms((rec + beta * kl).mean(), rec.mean(), kl.mean(), sse.detach(),
                     kl.detach(), s2)
