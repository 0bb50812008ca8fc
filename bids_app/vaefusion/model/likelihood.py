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

* ``mask``: like ``sigma``, but the squared error and its variance count only the voxels of
  the brain mask (voxels where any training volume is non-zero): the empty box around the
  brain, which any decoder draws perfectly, no longer shrinks the variance.
* ``volume``: one calibrated variance per volume over the mask's voxels, ``sigma_v^2 =
  SSE_v / N_mask``. The reconstruction term becomes ``0.5 N log(SSE_v)`` up to constants, so
  each volume's error counts relative to its own size: a sparse ICN map drawn as zeros (a
  large error relative to its small energy) is pulled towards its shape as hard as the dense
  GMV map, where one shared variance lets the dense volume dominate. With one subject per
  batch each modality appears once, so this is also the per-modality calibrated variance.

KL options (``kl_terms``): ``beta`` (a weight), a linear warm-up of beta over the first
epochs (the trainer's), and free bits (Kingma et al. 2016): each latent dimension's batch-mean
KL below ``free_bits`` nats costs ``free_bits`` (no gradient pushes it further to the prior).
The reported KL is always the true one.

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
    ``sigma2`` is the variance used (a 0-d tensor, per volume ``(n,)`` for ``volume``; 1 for
    ``unit``)."""

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


#: Likelihoods whose squared error counts only the brain mask's voxels.
MASKED: tuple[str, ...] = ("mask", "volume")


def squared_error(recon: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Per-sample sum of squared errors over voxels (float32), inside ``mask`` when given
    (a boolean grid, broadcast over samples)."""
    d = (recon.float() - x.float()).pow(2)
    if mask is not None:
        d = d * mask
    return d.flatten(1).sum(dim=1)


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
               sigma2: float | torch.Tensor | None = None, mask: torch.Tensor | None = None,
               free_bits: float = 0.0) -> LossTerms:
    """Negative ELBO, mean over the volumes of the batch, with its terms.

    ``likelihood="sigma"`` (``"mask"``) uses ``sigma2`` when given (a chunk of a larger
    batch, or validation with the training variance), else the batch's own mean squared error
    (over the mask's voxels). ``"volume"`` gives each volume its own calibrated variance over
    the mask and ignores ``sigma2``. ``"unit"`` is sigma = 1 and ignores ``sigma2``. ``mask``
    (a boolean grid) is needed by ``mask`` and ``volume``. ``free_bits`` > 0 floors each
    latent dimension's batch-mean KL in the objective (``loss``), not in the reported ``kl``.
    """
    masked = likelihood in MASKED
    if masked and mask is None:
        raise ValueError(f"likelihood {likelihood!r} needs the brain mask")
    sse = squared_error(recon, x, mask if masked else None)
    n_voxels = int(mask.sum()) if masked else recon[0].numel()
    kl = kl_divergence(mu.float(), logvar.float())
    if likelihood == "unit":
        # written as before (0.5 * SSE), the constant added on top: bit-identical gradients
        s2 = torch.ones((), device=sse.device)
        rec = RECON_SCALE * sse + 0.5 * n_voxels * LOG_2PI
    elif likelihood in ("sigma", "mask"):
        s2 = (calibrated_sigma2(sse.sum(), sse.numel() * n_voxels) if sigma2 is None
              else torch.as_tensor(sigma2, dtype=sse.dtype, device=sse.device).detach())
        rec = gaussian_nll(sse, n_voxels, s2)
    elif likelihood == "volume":
        s2 = (sse.detach() / max(n_voxels, 1)).clamp_min(MIN_SIGMA2)
        rec = gaussian_nll(sse, n_voxels, s2)
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose 'volume', 'mask', "
                         "'sigma' or 'unit'")
    if free_bits > 0:
        per_dim = kl_per_dim(mu.float(), logvar.float()).mean(0)
        kl_objective = per_dim.clamp_min(float(free_bits)).sum()
        loss = rec.mean() + beta * kl_objective
    else:
        loss = (rec + beta * kl).mean()
    return LossTerms(loss, rec.mean(), kl.mean(), sse.detach(), kl.detach(), s2)
