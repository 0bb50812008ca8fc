"""The terms of the negative ELBO: a Gaussian reconstruction likelihood and the KL to N(0, I).

Every value here is a true negative log-likelihood per volume, constants included::

    -log N(x; recon, sigma^2 I) = 0.5 * N * log(2 pi sigma^2) + SSE / (2 sigma^2)

with ``N`` the voxels of a volume and ``SSE`` the summed squared error, so losses are
comparable across grids, widths and likelihoods. The likelihoods are classes registered by
name in :mod:`vaefusion.model.objective` (``--likelihood``); four are registered, and the
default is ``volume``:

* ``volume``: one calibrated variance per volume over the mask's voxels, ``sigma_v^2 =
  SSE_v / N_mask``. The reconstruction term becomes ``0.5 N log(SSE_v)`` up to constants, so
  each volume's error counts relative to its own size: a sparse ICN map drawn as zeros (a
  large error relative to its small energy) is pulled towards its shape as hard as the dense
  GMV map, where one shared variance lets the dense volume dominate. With one subject per
  batch each modality appears once, so this is also the per-modality calibrated variance.
* ``mask``: like ``sigma``, but the squared error and its variance count only the voxels of
  the brain mask (voxels where any training volume is non-zero): the empty box around the
  brain, which any decoder draws perfectly, no longer shrinks the variance.
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

KL options (``kl_terms``): ``beta`` (a weight), a linear warm-up of beta over the first
epochs (the trainer's), and free bits (Kingma et al. 2016): each latent dimension's batch-mean
KL below ``free_bits`` nats costs ``free_bits`` (no gradient pushes it further to the prior).
The reported KL is always the true one.

Computed in float32 even under bf16 autocast (sums over ~10^5 voxels lose precision in bf16).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from vaefusion.model.objective import (  # noqa: F401 (re-exported: the terms' helpers)
    LIKELIHOODS,
    LOG_2PI,
    MIN_SIGMA2,
    RECON_SCALE,
    Likelihood,
    calibrated_sigma2,
    gaussian_nll,
)


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


def loss_terms(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
               beta: float = 1.0, likelihood: Likelihood | str = "sigma",
               sigma2: float | torch.Tensor | None = None, mask: torch.Tensor | None = None,
               free_bits: float = 0.0) -> LossTerms:
    """Negative ELBO, mean over the volumes of the batch, with its terms.

    ``likelihood`` (a :class:`~vaefusion.model.objective.Likelihood`, or a name in its
    registry) chooses the variance: see its ``nll``. ``sigma2`` is a given variance (a chunk
    of a larger batch, or validation with the training variance), which a per-volume or unit
    likelihood ignores. ``mask`` (a boolean grid) is needed by a masked likelihood.
    ``free_bits`` > 0 floors each latent dimension's batch-mean KL in the objective
    (``loss``), not in the reported ``kl``.
    """
    lik = LIKELIHOODS.get(likelihood) if isinstance(likelihood, str) else likelihood
    if lik.masked and mask is None:
        raise ValueError(f"likelihood {lik.name!r} needs the brain mask")
    sse = squared_error(recon, x, mask if lik.masked else None)
    n_voxels = int(mask.sum()) if lik.masked else recon[0].numel()
    kl = kl_divergence(mu.float(), logvar.float())
    rec, s2 = lik.nll(sse, n_voxels, sigma2)
    if free_bits > 0:
        per_dim = kl_per_dim(mu.float(), logvar.float()).mean(0)
        kl_objective = per_dim.clamp_min(float(free_bits)).sum()
        loss = rec.mean() + beta * kl_objective
    else:
        loss = (rec + beta * kl).mean()
    return LossTerms(loss, rec.mean(), kl.mean(), sse.detach(), kl.detach(), s2)
