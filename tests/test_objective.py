"""The objective as objects (issue 23): likelihoods and scalings are classes registered by name,
max-abs is a class like voxelwise, ``model.json`` records and restores them, and a new
likelihood is one class plus one registration line, which then trains end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from test_training import make_cache, tiny_config
from vaefusion.cli.parser import build_parser
from vaefusion.config import LIKELIHOODS as CONFIG_LIKELIHOODS
from vaefusion.model.likelihood import loss_terms
from vaefusion.model.network import VAE, layout_of
from vaefusion.model.objective import (
    LIKELIHOODS,
    MASK,
    MODALITY_MAPS,
    SCALINGS,
    Likelihood,
    MaxAbsScaling,
    Objective,
    gaussian_nll,
    likelihood_of,
    scaling_of,
)
from vaefusion.training.trainer import Trainer


class FixedLikelihood(Likelihood):
    """The toy: one fixed variance, 0.1^2, for every voxel (none of the four registered)."""

    name = "toy-fixed"

    def nll(self, sse, n_voxels, sigma2):
        s2 = sse.new_tensor(0.01)
        return gaussian_nll(sse, n_voxels, s2), s2


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def toy_likelihood():
    with LIKELIHOODS.registered(FixedLikelihood) as likelihood:  # the one registration line
        yield likelihood


def test_the_registries_name_every_variant_and_the_config_reads_them():
    assert list(LIKELIHOODS) == ["volume", "mask", "sigma", "unit"]
    assert list(SCALINGS) == ["maxabs", "voxelwise"]
    assert CONFIG_LIKELIHOODS is LIKELIHOODS
    assert {n for n in LIKELIHOODS if MASK in LIKELIHOODS.get(n).needs} == {"volume", "mask"}
    assert [n for n in SCALINGS if MODALITY_MAPS in SCALINGS.get(n).needs] == ["voxelwise"]
    objective = tiny_config(likelihood="mask", scaling="voxelwise").objective()
    assert objective == Objective.named("mask", "voxelwise")
    assert objective.needs == {MASK, MODALITY_MAPS}
    with pytest.raises(ValueError, match="unknown likelihood 'laplace'"):
        LIKELIHOODS.get("laplace")
    with pytest.raises(ValueError, match="registered already"):
        LIKELIHOODS.register(type(LIKELIHOODS.get("sigma")))


def test_max_abs_is_a_class_and_old_model_json_reads_as_it():
    """Formats 1 and 2 have no ``scaling`` key: they read as the max-abs class."""
    assert isinstance(scaling_of({}), MaxAbsScaling)
    assert scaling_of({"scaling": "voxelwise"}) == SCALINGS.get("voxelwise")
    net = VAE((8, 9, 8), 2, 0.125, **layout_of({"grid": [8, 9, 8], "format": 2}))
    assert net.scaling is None and net.config()["scaling"] == "maxabs"
    assert net.config()["scaling_modalities"] == []
    voxelwise = VAE((8, 9, 8), 2, 0.125, **layout_of(
        {"scaling": "voxelwise", "scaling_modalities": ["ICN01", "GMV"]}))
    assert voxelwise.scaling.names == ("ICN01", "GMV")
    with pytest.raises(ValueError, match="needs the modalities"):
        VAE((8, 9, 8), 2, 0.125, scaling=SCALINGS.get("voxelwise"))
    assert likelihood_of({"likelihood": "unit", "sigma": 1.0}) == LIKELIHOODS.get("unit")
    assert LIKELIHOODS.get("sigma").to_meta(0.5) == {"likelihood": "sigma", "sigma": 0.5}


def test_a_toy_likelihood_is_one_class_and_one_registration_line(toy_likelihood, cache,
                                                                 tmp_path):
    # the option accepts it (the parser's choices are the registry)
    args = build_parser().parse_args(["bids", "out", "group", "--likelihood", "toy-fixed"])
    assert args.likelihood == "toy-fixed"
    # its terms are what its nll says
    torch.manual_seed(0)
    x, recon = torch.rand(3, 1, 4, 5, 3), torch.rand(3, 1, 4, 5, 3)
    mu, logvar = torch.zeros(3, 2), torch.zeros(3, 2)
    terms = loss_terms(recon, x, mu, logvar, likelihood=toy_likelihood)
    sse = (recon - x).pow(2).flatten(1).sum(1)
    want = 0.5 * 60 * (math.log(2 * math.pi * 0.01)) + sse / 0.02
    torch.testing.assert_close(terms.recon, want.mean())
    # and it trains end to end: the trainer, the passes and model.json take it as it is
    cfg = tiny_config(epochs=1, likelihood="toy-fixed")
    trainer = Trainer(cfg, cfg.runtime(), 2, 0, cache[:4], cache[4:], tmp_path / "t")
    result = trainer.fit()
    assert math.isfinite(result.best_val_loss) and result.likelihood == "toy-fixed"
    meta = json.loads((trainer.best_dir / "model.json").read_text())
    assert meta["likelihood"] == "toy-fixed"
    assert meta["sigma"] == pytest.approx(0.1, rel=1e-6)
