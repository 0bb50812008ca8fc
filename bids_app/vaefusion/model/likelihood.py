"""The terms of the negative ELBO: Gaussian reconstruction likelihood and KL to N(0, I).

Loss convention (documented choice): the reconstruction term is the negative log-likelihood of a
unit-variance Gaussian, ``0.5 * sum((recon - x)**2)`` over a volume's voxels, dropping the
constant ``0.5 * N * log(2 pi)``; so ``loss = 0.5 * SSE + beta * KL`` is exactly the negative
ELBO (up to that constant) when ``beta == 1``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

#: Factor of the reconstruction term: 0.5 * SSE = unit-variance Gaussian NLL (see module doc).
RECON_SCALE: float = 0.5


class LossTerms(NamedTuple):
    """Batch means over volumes: ``loss = recon + beta * kl``."""

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(N(mu, sigma^2) || N(0, I))`` summed over latent dimensions."""
    return 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1.0 - logvar, dim=1)


def reconstruction_nll(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample unit-variance Gaussian NLL without its constant: ``0.5 * SSE`` over voxels."""
    return RECON_SCALE * (recon.float() - x.float()).pow(2).flatten(1).sum(dim=1)


def loss_terms(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
               beta: float = 1.0) -> LossTerms:
    """Negative ELBO, mean over the volumes of the batch, with its two terms.

    Computed in float32 even under bf16 autocast (sums over ~10^5 voxels lose precision in bf16).
    """
    rec = reconstruction_nll(recon, x)
    kl = kl_divergence(mu.float(), logvar.float())
    return LossTerms((rec + beta * kl).mean(), rec.mean(), kl.mean())

