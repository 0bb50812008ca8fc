"""The decoder likelihoods: true Gaussian NLLs, the calibrated variance, and the unit path."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from vaefusion.config import Config
from vaefusion.errors import UsageError
from vaefusion.model.likelihood import (
    MIN_SIGMA2,
    calibrated_sigma2,
    gaussian_nll,
    kl_divergence,
    kl_per_dim,
    loss_terms,
)
from vaefusion.model.network import VAE


def _batch(seed: int = 0, n: int = 3, grid=(4, 5, 3), latent: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 1, *grid), generator=g) * 2 - 1
    recon = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    mu = torch.randn((n, latent), generator=g)
    logvar = 0.3 * torch.randn((n, latent), generator=g)
    return x, recon, mu, logvar


def _log_prob(x: torch.Tensor, recon: torch.Tensor, sigma2: float) -> torch.Tensor:
    """log N(x; recon, sigma^2 I) per volume, from torch.distributions (float64)."""
    dist = Normal(recon.double(), math.sqrt(sigma2))
    return dist.log_prob(x.double()).flatten(1).sum(1)


def test_sigma_nll_is_the_gaussian_log_likelihood_at_the_batch_mse():
    x, recon, mu, logvar = _batch()
    terms = loss_terms(recon, x, mu, logvar, beta=0.5, likelihood="sigma")
    mse = (recon - x).double().pow(2).mean().item()
    assert terms.sigma2.item() == pytest.approx(mse, rel=1e-6)
    expected = -_log_prob(x, recon, mse)
    kl = kl_divergence(mu, logvar).double()
    assert terms.recon.item() == pytest.approx(expected.mean().item(), rel=1e-5)
    assert terms.loss.item() == pytest.approx((expected + 0.5 * kl).mean().item(), rel=1e-5)
    # at the optimal variance the squared-error term is exactly N/2 per volume
    n = recon[0].numel()
    assert terms.recon.item() == pytest.approx(0.5 * n * (math.log(2 * math.pi * mse) + 1),
                                               rel=1e-5)


def test_sigma_nll_with_a_given_variance_and_unit_nll():
    x, recon, mu, logvar = _batch(1)
    fixed = loss_terms(recon, x, mu, logvar, likelihood="sigma", sigma2=0.02)
    assert fixed.sigma2.item() == pytest.approx(0.02)
    assert fixed.recon.item() == pytest.approx(-_log_prob(x, recon, 0.02).mean().item(),
                                               rel=1e-5)
    unit = loss_terms(recon, x, mu, logvar, likelihood="unit")
    assert unit.sigma2.item() == 1.0
    assert unit.recon.item() == pytest.approx(-_log_prob(x, recon, 1.0).mean().item(), rel=1e-6)
    assert gaussian_nll(unit.sse, recon[0].numel(), 1.0).mean().item() == pytest.approx(
        unit.recon.item(), rel=1e-6)


def test_the_batch_mse_is_the_maximum_likelihood_variance():
    x, recon, _, _ = _batch(2)
    sse = (recon - x).pow(2).flatten(1).sum(1)
    best = calibrated_sigma2(sse.sum(), x.numel()).item()
    nll = [gaussian_nll(sse, x[0].numel(), best * f).sum().item() for f in (0.8, 1.0, 1.25)]
    assert nll[1] < nll[0] and nll[1] < nll[2]
    assert calibrated_sigma2(torch.tensor(0.0), 10).item() == pytest.approx(MIN_SIGMA2)


def test_unit_gradients_are_those_of_half_sse_plus_beta_kl():
    """``unit`` reproduces the loss of earlier versions: the constant adds no gradient."""
    torch.manual_seed(0)
    model = VAE((8, 8, 8), 4, 0.125)
    x = torch.rand(3, 1, 8, 8, 8) * 2 - 1
    grads = []
    for new in (True, False):
        model.zero_grad()
        torch.manual_seed(1)
        recon, mu, logvar = model(x, sample=True)
        if new:
            loss = loss_terms(recon, x, mu, logvar, beta=2.0, likelihood="unit").loss
        else:  # the loss as it was written before --likelihood
            rec = 0.5 * (recon.float() - x.float()).pow(2).flatten(1).sum(dim=1)
            kl = 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1.0 - logvar, dim=1)
            loss = (rec + 2.0 * kl).mean()
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_detached_sigma_gives_the_gradient_of_the_profile_objective():
    """The variance is used detached; at its optimum that is the exact gradient of
    min over sigma of the NLL (the derivative in sigma vanishes)."""
    x, recon, mu, logvar = _batch(3)
    recon = recon.double().requires_grad_(True)
    loss_terms(recon, x.double(), mu, logvar, likelihood="sigma").loss.backward()
    detached = recon.grad.clone()
    recon.grad = None
    sse = (recon - x.double()).pow(2).flatten(1).sum(1)
    s2 = sse.sum() / x.numel()  # not detached
    profile = (0.5 * x[0].numel() * torch.log(2 * math.pi * s2) + sse / (2 * s2)).mean()
    profile.backward()
    torch.testing.assert_close(detached, recon.grad, rtol=1e-5, atol=1e-9)  # float32 SSE


def test_kl_per_dimension_sums_to_the_kl():
    _, _, mu, logvar = _batch(4, latent=5)
    torch.testing.assert_close(kl_per_dim(mu, logvar).sum(1), kl_divergence(mu, logvar))


def test_the_likelihood_adds_no_parameter_and_is_validated():
    # calibrated: no parameter at all, so none grows with the modalities
    assert {n for n, _ in VAE((8, 8, 8), 4, 0.125).named_parameters()
            if "sigma" in n} == set()
    x, recon, mu, logvar = _batch()
    with pytest.raises(ValueError, match="likelihood"):
        loss_terms(recon, x, mu, logvar, likelihood="laplace")
    with pytest.raises(UsageError, match="--likelihood"):
        Config(likelihood="laplace").validate()
    assert Config(likelihood="sigma").method_settings()["likelihood"] == "sigma"
