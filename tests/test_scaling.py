"""Voxelwise standardisation inside the network (``--scaling voxelwise``, model format 3)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from test_training import make_cache, tiny_config
from vaefusion.cli.generate import main as generate
from vaefusion.config import SCALINGS as CONFIG_SCALINGS
from vaefusion.model.checkpoint import load_model, save_model
from vaefusion.model.network import VAE
from vaefusion.model.objective import SCALINGS, Objective, VoxelwiseScaling
from vaefusion.model.scaling import SD_FLOOR, VoxelScaling
from vaefusion.training import inference, passes
from vaefusion.training.data import SubjectBatches
from vaefusion.training.trainer import Trainer

GRID = (9, 11, 9)
NAMES = ["ICN01", "ICN02", "GMV"]


def fitted(grid=GRID, seed: int = 0) -> VAE:
    """A voxelwise network with made-up statistics (zero SD outside a box 'brain')."""
    torch.manual_seed(seed)
    model = VAE(grid, 4, 0.125, scaling=VoxelwiseScaling(), scaling_modalities=NAMES)
    means = torch.rand(len(NAMES), 1, *grid)
    sds = torch.rand(len(NAMES), 1, *grid) + 0.1
    sds[..., 0, :, :] = 0.0  # one face of the box: never non-zero in training
    means[..., 0, :, :] = 0.0
    model.scaling.fit(means, sds)
    return model.eval()


def test_the_config_and_the_model_name_the_same_scalings():
    assert CONFIG_SCALINGS is SCALINGS and list(SCALINGS) == ["maxabs", "voxelwise"]
    assert tiny_config(scaling="voxelwise").scaling == "voxelwise"


def test_a_silent_decoder_draws_each_modalitys_mean_map():
    model = fitted()
    with torch.no_grad():
        model.out.weight.zero_()
        rows = model.modality_rows(["GMV", "ICN01"])
        drawn = model.decode(torch.randn(2, 4), rows)
    assert torch.equal(drawn, model.scaling.mean[rows])
    assert torch.equal(drawn[..., 0, :, :], torch.zeros_like(drawn[..., 0, :, :]))


def test_standardise_and_restore_are_inverse_inside_the_brain():
    scaling = fitted().scaling
    rows = scaling.rows(["ICN02", "ICN02", "GMV"])
    x = torch.randn(3, 1, *GRID)
    x[..., 0, :, :] = 0.0
    z = scaling.standardise(x, rows)
    assert torch.equal(z[..., 0, :, :], torch.zeros_like(z[..., 0, :, :]))
    assert torch.allclose(scaling.restore(z, rows), x, atol=1e-5)


def test_the_sd_floor_keeps_quiet_voxels_from_exploding():
    scaling = VoxelScaling(["ICN01"], (2, 2, 2))
    sds = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1e-6, 0.0]).view(1, 1, 2, 2, 2)
    scaling.fit(torch.zeros_like(sds), sds)
    inside = (6 * 1.0 + 1e-6) / 7
    assert scaling.sd.flatten()[6].item() == pytest.approx(SD_FLOOR * inside)
    assert scaling.sd.flatten()[7].item() == 0.0  # outside stays 0: restored maps are 0 there


def test_a_voxelwise_network_needs_the_modalities():
    model = fitted()
    with pytest.raises(ValueError, match="modality rows"):
        model(torch.zeros(1, 1, *GRID))
    with pytest.raises(ValueError, match="no training statistics"):
        model.modality_rows(["ICN53"])
    assert VAE(GRID, 4, 0.125).modality_rows(NAMES) is None  # max-abs: none needed


def test_a_voxelwise_model_round_trips_with_its_statistics(tmp_path):
    model = fitted()
    save_model(model, tmp_path / "m", {"modalities": NAMES})
    info = json.loads((tmp_path / "m" / "model.json").read_text())
    assert info["format"] == 3 and info["scaling"] == "voxelwise"
    assert info["scaling_modalities"] == NAMES
    loaded, _ = load_model(tmp_path / "m")
    assert loaded.scaling is not None and loaded.scaling.names == tuple(NAMES)
    assert torch.equal(loaded.scaling.sd, model.scaling.sd)
    x = torch.rand(3, 1, *GRID)
    rows = model.modality_rows(NAMES)
    with torch.no_grad():
        assert torch.equal(model(x, rows=rows)[0], loaded(x, rows=rows)[0])


def test_a_format_2_model_loads_as_maxabs(tmp_path):
    save_model(VAE(GRID, 4, 0.125), tmp_path / "m", {})
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    for key in ("scaling", "scaling_modalities"):  # what a format-2 model.json lacks
        del meta[key]
    meta["format"] = 2
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    model, _ = load_model(tmp_path / "m")
    assert model.scaling is None and model.scaling_name == "maxabs"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> list[Path]:
    return make_cache(tmp_path_factory.mktemp("cache"))


def test_the_trainer_fits_the_folds_training_statistics(cache, tmp_path):
    cfg = tiny_config(epochs=1, scaling="voxelwise")
    trainer = Trainer(cfg, cfg.runtime(), 4, 0, cache[:4], cache[4:], tmp_path / "t")
    stacks = np.stack([np.load(p) for p in cache[:4]]).astype(np.float64)  # training only
    mean, sd = stacks.mean(axis=0), stacks.std(axis=0)
    scaling = trainer.model.scaling
    assert scaling.names == ("ICN01", "ICN02", "GMV")
    assert np.allclose(scaling.mean[:, 0].numpy(), mean, atol=1e-5)
    inside = sd > 0
    assert np.allclose(scaling.sd[:, 0].numpy()[inside], np.maximum(
        sd, SD_FLOOR * np.array([s[s > 0].mean() for s in sd])[:, None, None, None])[inside],
        rtol=1e-4)
    result = trainer.fit()
    info = json.loads((result.best_dir / "model.json").read_text())
    assert info["scaling"] == "voxelwise"
    # embedding a subject passes each volume's modality: the same as encoding it by hand
    mu = inference.embed(result.model, cache[4:5])[0]
    x = torch.from_numpy(np.load(cache[4])).float()[:, None]
    with torch.no_grad():
        by_hand = result.model.encode(x, result.model.modality_rows(list(scaling.names)))[0]
    assert np.allclose(mu, by_hand.numpy(), atol=1e-5)


def test_the_mean_map_scores_subject_r2_zero(cache, tmp_path):
    """The baseline of ``r2_subject`` is what a silent voxelwise decoder draws, so the VAE
    starts at 0 rather than far below it."""
    cfg = tiny_config(epochs=1, scaling="voxelwise")
    trainer = Trainer(cfg, cfg.runtime(), 4, 0, cache[:4], cache[4:], tmp_path / "t")
    with torch.no_grad():
        trainer.model.out.weight.zero_()
    stats = passes.run_pass(trainer.model, SubjectBatches(cache[:4], batch_subjects=2), 0,
                              1.0, torch.device("cpu"), False, None, "t",
                              objective=Objective.named("volume", "voxelwise"),
                              baseline=trainer.baseline, mask=trainer.mask)
    assert stats.r2_subject == pytest.approx(0.0, abs=1e-6)
    assert stats.r2 > 0.3  # the mean maps themselves: each modality's own shape


def test_generate_draws_a_voxelwise_model_as_a_named_modality(tmp_path, capsys):
    model_dir = tmp_path / "vae_L4_seed0_rep0_fold0"
    save_model(fitted(), model_dir, {"downsample": 1, "modalities": NAMES})
    out = tmp_path / "gen"
    assert generate([str(model_dir), str(out), "sample", "--n", "2"]) == 64
    assert "--as-modality" in capsys.readouterr().err
    assert generate([str(model_dir), str(out), "sample", "--n", "2", "--as-modality",
                     "ICN09"]) == 64
    assert generate([str(model_dir), str(out), "sample", "--n", "2", "--as-modality",
                     "GMV"]) == 0
    side = json.loads((out / "desc-sampled_components.json").read_text())
    assert side["DrawnAs"] == ["GMV", "GMV"]
    img = nib.load(out / "desc-sampled_components.nii.gz")
    assert img.shape == (*GRID, 2)
    # a latents table names each point's modality: no option needed
    table = tmp_path / "z.tsv"
    table.write_text("modality\tz000\tz001\tz002\tz003\nICN02\t0\t0\t0\t0\nGMV\t1\t1\t1\t1\n")
    assert generate([str(model_dir), str(out), "decode", "--latents", str(table)]) == 0
    side = json.loads((out / "desc-decoded_components.json").read_text())
    assert side["DrawnAs"] == ["ICN02", "GMV"]
