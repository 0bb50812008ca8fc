"""The objective's options and the metrics that show subject-level learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from test_training import GRID, make_cache, tiny_config  # noqa: F401  (fixtures' helpers)
from vaefusion.model.likelihood import loss_terms
from vaefusion.model.scaling import VoxelScaling
from vaefusion.training import trainer
from vaefusion.training.data import SubjectBatches
from vaefusion.training.metrics import (
    ModalityMeans,
    PassAccumulator,
    modality_means,
    modality_sds,
)
from vaefusion.training.twin import linear_twins


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("cache"), n_subjects=8)


def test_per_volume_variance_weighs_each_volume_by_its_own_error():
    torch.manual_seed(0)
    x = torch.zeros(2, 1, 4, 4, 4)
    x[0, 0, 1:3, 1:3, 1:3] = 1.0  # a sparse map ...
    x[1] = 0.5  # ... and a dense one
    recon = torch.zeros_like(x, requires_grad=True)
    mask = torch.ones(1, 4, 4, 4, dtype=torch.bool)
    mu = logvar = torch.zeros(2, 3)
    shared = loss_terms(recon, x, mu, logvar, likelihood="sigma")
    (g_shared,) = torch.autograd.grad(shared.loss, recon)
    per_volume = loss_terms(recon, x, mu, logvar, likelihood="volume", mask=mask)
    (g_volume,) = torch.autograd.grad(per_volume.loss, recon)
    # shared variance: the dense volume's voxels pull as hard as the sparse map's per unit
    # error; per volume: the sparse map's few voxels pull harder (its error is small overall)
    ratio_shared = g_shared[0].abs().max() / g_shared[1].abs().max()
    ratio_volume = g_volume[0].abs().max() / g_volume[1].abs().max()
    # each volume's pull is divided by its own squared error: 8 (sparse) against 16 (dense)
    assert ratio_volume == pytest.approx(ratio_shared * 16 / 8)
    assert per_volume.sigma2.shape == (2,)
    with pytest.raises(ValueError, match="mask"):
        loss_terms(recon, x, mu, logvar, likelihood="volume")


def test_masked_likelihood_ignores_voxels_outside_the_mask():
    x = torch.rand(3, 1, 4, 4, 4)
    recon = torch.rand(3, 1, 4, 4, 4)
    mask = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    mask[:, :2] = True
    mu = logvar = torch.zeros(3, 2)
    a = loss_terms(recon, x, mu, logvar, likelihood="mask", mask=mask)
    recon2 = recon.clone()
    recon2[:, :, 2:] = 5.0  # outside the mask
    b = loss_terms(recon2, x, mu, logvar, likelihood="mask", mask=mask)
    assert torch.equal(a.loss, b.loss)


def test_free_bits_floor_the_objective_not_the_reported_kl():
    x = recon = torch.zeros(2, 1, 2, 2, 2)
    mu, logvar = torch.zeros(2, 4), torch.zeros(2, 4)  # KL exactly 0
    plain = loss_terms(recon, x, mu, logvar, likelihood="unit")
    fb = loss_terms(recon, x, mu, logvar, likelihood="unit", free_bits=0.5)
    assert fb.kl.item() == 0.0 and fb.loss.item() == pytest.approx(plain.loss.item() + 2.0)


def test_within_modality_units_ignore_modality_identity():
    names = ("ICN01", "GMV")
    means = torch.zeros(3, 1, 2, 2, 2)
    acc = PassAccumulator(2, 8, 1.0, torch.device("cpu"), ModalityMeans(names, means))
    x = torch.zeros(4, 1, 2, 2, 2)
    rows = torch.tensor([0, 1, 0, 1])
    # unit 0 tells the modalities apart only; unit 1 varies across subjects within a modality
    mu = torch.tensor([[-1.0, 0.5], [1.0, -0.5], [-1.0, -0.5], [1.0, 0.5]])
    terms = loss_terms(x, x, mu, torch.zeros(4, 2), likelihood="unit")
    acc.add(x, x, mu, torch.zeros(4, 2), terms, rows)
    stats = acc.result()
    assert stats.active_units == 2 and stats.within_units == 1


def test_linear_twins_score_like_the_metrics(cache):
    train = SubjectBatches(cache[:6], batch_subjects=1)
    val = SubjectBatches(cache[6:], batch_subjects=1)
    base = modality_means(train)
    twins = linear_twins(train, val, base, latent_dim=4)
    assert set(twins) == {"pca-shared", "pca-late"}
    for t in twins.values():
        assert len(t.r2_subject_modality) == 3
        assert t.r2 > t.r2_subject or math.isclose(t.r2, t.r2_subject)
    # a PCA with as many components as training samples per modality reproduces what its
    # subspace holds; with 1 component it explains less of the training-fold variation
    late1 = linear_twins(train, val, base, latent_dim=1)["pca-late"]
    assert late1.r2_subject <= twins["pca-late"].r2_subject + 1e-9


def _volumes(data: SubjectBatches, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    xs = [data.subject_volumes(s).double().flatten(1).numpy()
          for s in range(len(data.dataset.modalities))]
    rows = [names.index(m) for mods in data.dataset.modalities for m in mods]
    return np.concatenate(xs), np.array(rows)


def test_the_voxelwise_twin_is_fitted_to_the_networks_standardised_volumes(cache):
    train = SubjectBatches(cache[:6], batch_subjects=1)
    val = SubjectBatches(cache[6:], batch_subjects=1)
    base = modality_means(train)
    scaling = VoxelScaling(base.names, train.grid)
    scaling.fit(base.means[:-1], modality_sds(train, base))
    fair = linear_twins(train, val, base, latent_dim=2, scaling=scaling)["pca-shared"]
    # the same twin by hand: standardise with the network's statistics, PCA, restore
    xt, rt = _volumes(train, base.names)
    xv, rv = _volumes(val, base.names)
    mean = scaling.mean.double().flatten(1).numpy()
    sd = scaling.sd.double().flatten(1).numpy()

    def z(x: np.ndarray, r: np.ndarray) -> np.ndarray:
        return np.where(sd[r] > 0, (x - mean[r]) / np.where(sd[r] > 0, sd[r], 1.0), 0.0)

    pca = PCA(2, svd_solver="full").fit(z(xt, rt))
    recon = mean[rv] + sd[rv] * pca.inverse_transform(pca.transform(z(xv, rv)))
    r2 = [1 - ((xv - recon)[rv == m] ** 2).sum() / ((xv - mean[m])[rv == m] ** 2).sum()
          for m in range(len(base.names))]
    assert fair.r2_subject == pytest.approx(float(np.mean(r2)), abs=1e-6)
    global_mean = linear_twins(train, val, base, latent_dim=2)["pca-shared"]
    assert fair.r2_subject != pytest.approx(global_mean.r2_subject, abs=1e-6)


def test_trainer_records_learning_and_selects_on_subject_r2(cache, tmp_path):
    cfg = tiny_config(epochs=3, likelihood="volume", kl_warmup=2)
    tr = trainer.Trainer(cfg, cfg.runtime(), 4, 0, cache[:6], cache[6:], tmp_path)
    assert tr.beta_at(0) == pytest.approx(0.5) and tr.beta_at(5) == pytest.approx(1.0)
    result = tr.fit()
    best = result.best
    assert best is not None and len(best.val_r2_modality) == 3
    assert len(best.val_dead_head) == 3 and all(0 <= v <= 1 for v in best.val_dead_head)
    assert result.best_epoch == max(result.history, key=lambda h: h.val_r2_subject).epoch
    assert set(result.twins) == {"pca-shared", "pca-late"}
    assert result.model.decoder_head == "leaky" and result.model.head.out_channels >= 8
