"""The VAE architecture of SPEC section 3: layers, shapes, parameters, FLOPs, loss, storage."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vaefusion.errors import MissingInputError
from vaefusion.model.checkpoint import load_model, save_model
from vaefusion.model.flops import count_parameters, flops_per_volume
from vaefusion.model.likelihood import kl_divergence, loss_terms
from vaefusion.model.network import (
    VAE,
    channel_plan,
    downsample_volumes,
    downsampled_grid,
    encoder_shapes,
    resize_volumes,
)

FULL = (53, 63, 52)


def test_encoder_shapes_full_grid():
    assert encoder_shapes(FULL) == [FULL, (27, 32, 26), (14, 16, 13), (7, 8, 7), (4, 4, 4)]


def test_layer_list_matches_the_paper():
    m = VAE(FULL, 128, 1.0)
    enc = [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in m.encoder]
    assert all(isinstance(c, nn.Conv3d) for c in m.encoder)
    assert enc == [(i, o, (3, 3, 3), (2, 2, 2), (1, 1, 1))
                   for i, o in [(1, 64), (64, 128), (128, 256), (256, 512)]]
    assert (m.fc_mu.in_features, m.fc_mu.out_features) == (512 * 4 * 4 * 4, 128)
    assert (m.fc_logvar.in_features, m.fc_logvar.out_features) == (512 * 64, 128)
    assert (m.fc_decode.in_features, m.fc_decode.out_features) == (128, 512 * 64)
    assert all(isinstance(c, nn.ConvTranspose3d) for c in m.decoder)
    dec = [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in m.decoder]
    assert dec == [(i, o, (3, 3, 3), (2, 2, 2), (1, 1, 1))
                   for i, o in [(512, 256), (256, 128), (128, 64), (64, 32)]]
    assert (m.head.in_channels, m.head.out_channels, m.head.stride) == (32, 16, (1, 1, 1))
    assert m.head.bias is not None
    assert (m.out.in_channels, m.out.out_channels, m.out.stride) == (16, 1, (1, 1, 1))
    assert m.out.bias is None  # the last layer has no bias (SPEC)


def _conv_params(cin: int, cout: int, bias: bool = True) -> int:
    return cin * cout * 27 + (cout if bias else 0)


def test_parameter_count_at_defaults_is_analytic():
    enc = [(1, 64), (64, 128), (128, 256), (256, 512)]
    dec = [(512, 256), (256, 128), (128, 64), (64, 32)]
    flat, latent = 512 * 4 * 4 * 4, 128
    expected = (
        sum(_conv_params(i, o) for i, o in enc)
        + 2 * (flat * latent + latent)  # mu and logvar heads
        + latent * flat + flat  # decoder Linear
        + sum(_conv_params(i, o) for i, o in dec)  # ConvTranspose3d has the same count
        + _conv_params(32, 16) + _conv_params(16, 1, bias=False)
    )
    assert count_parameters(VAE()) == expected == 21_978_400


def test_full_grid_forward_is_exact():
    torch.manual_seed(0)
    m = VAE(FULL).eval()
    x = torch.rand(1, 1, *FULL) * 2 - 1
    with torch.no_grad():
        recon, mu, logvar = m(x)
    assert recon.shape == (1, 1, 53, 63, 52)  # no crop anywhere
    assert mu.shape == logvar.shape == (1, 128)
    assert recon.abs().max() < 1  # tanh


@pytest.mark.parametrize("grid", [(16, 18, 16), (14, 16, 13), (5, 7, 9), (1, 2, 3), (33, 8, 20)])
def test_decoder_returns_the_input_grid(grid):
    m = VAE(grid, 4, 0.125)
    x = torch.zeros(2, 1, *grid)
    recon, mu, _ = m(x)
    assert recon.shape == (2, 1, *grid)
    assert mu.shape == (2, 4)
    assert m.decode(torch.zeros(3, 4)).shape == (3, 1, *grid)


def test_width_and_downsample_knobs():
    # format 2: no layer under 8 channels (format 1 had a 2-channel head at width 0.125)
    assert channel_plan(0.125) == {"encoder": (8, 16, 32, 64), "decoder": (32, 16, 8, 8),
                                   "head": (8,)}
    assert channel_plan(0.001)["encoder"] == (8, 8, 8, 8)
    assert channel_plan(0.125, floor=1) == {"encoder": (8, 16, 32, 64),
                                            "decoder": (32, 16, 8, 4), "head": (2,)}
    assert channel_plan(1.0) == {"encoder": (64, 128, 256, 512),  # the paper's, unchanged
                                 "decoder": (256, 128, 64, 32), "head": (16,)}
    assert downsampled_grid(FULL, 1) == FULL
    assert downsampled_grid(FULL, 2) == (27, 32, 26)
    assert downsampled_grid(FULL, 4) == (14, 16, 13)
    with pytest.raises(ValueError):
        downsampled_grid(FULL, 0)
    grid = downsampled_grid(FULL, 4)
    m = VAE(grid, 16, 0.125)
    assert [c.out_channels for c in m.encoder] == [8, 16, 32, 64]
    assert m.shapes == encoder_shapes((14, 16, 13))
    assert m.bottleneck == (64, 1, 1, 1)


def test_downsample_is_area_average():
    x = torch.ones(2, 1, *FULL) * 0.5
    y = downsample_volumes(x, 4)
    assert y.shape == (2, 1, 14, 16, 13)
    assert torch.allclose(y, torch.full_like(y, 0.5))
    assert downsample_volumes(x, 1) is x
    z = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    assert downsample_volumes(z, 2).item() == pytest.approx(3.5)
    assert resize_volumes(y, FULL).shape == (2, 1, *FULL)


def test_flops_match_torch_flop_counter():
    grid, width, latent = (16, 18, 16), 0.25, 8
    m = VAE(grid, latent, width)
    x = torch.zeros(2, 1, *grid)
    with FlopCounterMode(display=False) as fwd:
        m(x, sample=False)
    assert fwd.get_total_flops() == 2 * flops_per_volume(grid, width, latent, backward=False)
    with FlopCounterMode(display=False) as both:
        recon, mu, logvar = m(x, sample=True)  # sampling: logvar gets a gradient too
        loss_terms(recon, x, mu, logvar).loss.backward()
    assert both.get_total_flops() == 2 * flops_per_volume(grid, width, latent)
    # the full default model: ~12.4 GFLOP forward, ~37 GFLOP forward + backward per volume
    assert flops_per_volume(FULL, backward=False) == pytest.approx(12.41e9, rel=1e-3)
    assert flops_per_volume(FULL) == pytest.approx(37.14e9, rel=1e-3)


def test_unit_loss_is_half_sse_plus_constant_plus_beta_kl():
    x = torch.zeros(2, 1, 2, 2, 2)
    recon = torch.ones(2, 1, 2, 2, 2) * 0.5
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.zeros(2, 2)
    terms = loss_terms(recon, x, mu, logvar, beta=2.0, likelihood="unit")
    const = 0.5 * 8 * math.log(2 * math.pi)  # the Gaussian's normaliser over 8 voxels
    assert terms.recon.item() == pytest.approx(0.5 * 8 * 0.25 + const)
    assert terms.kl.item() == pytest.approx((0.5 + 0.0) / 2)  # mean over the two volumes
    assert terms.loss.item() == pytest.approx(1.0 + const + 2.0 * 0.25)
    # KL(N(0, sigma^2) || N(0, 1)) for sigma^2 = e: 0.5 * (e - 1 - 1)
    kl = kl_divergence(torch.zeros(1, 1), torch.ones(1, 1))
    assert kl.item() == pytest.approx(0.5 * (math.e - 2))


def test_sampling_only_in_training_mode():
    torch.manual_seed(0)
    m = VAE((8, 8, 8), 4, 0.125)
    x = torch.rand(1, 1, 8, 8, 8)
    m.eval()
    a, _, _ = m(x)
    b, _, _ = m(x)
    assert torch.equal(a, b)
    m.train()
    c, _, _ = m(x)
    assert not torch.equal(a, c)


def test_save_load_roundtrip_without_pickle(tmp_path):
    torch.manual_seed(1)
    m = VAE((14, 16, 13), 16, 0.125).eval()
    meta = {"downsample": 4, "modalities": ["ICN01", "GMV"], "training": {"seed": 1}}
    save_model(m, tmp_path / "best", meta)
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["model.json",
                                                                     "model.safetensors"]
    info = json.loads((tmp_path / "best" / "model.json").read_text())
    assert info["grid"] == [14, 16, 13] and info["latent_dim"] == 16 and info["width"] == 0.125
    assert info["downsample"] == 4 and info["modalities"] == ["ICN01", "GMV"]
    assert "version" in info and info["n_parameters"] == count_parameters(m)
    # safetensors: an 8-byte header length then a JSON header, never a pickle stream
    raw = (tmp_path / "best" / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8:8 + n])["fc_mu.weight"]["shape"] == [16, 64]
    loaded, meta2 = load_model(tmp_path / "best", "cpu")
    assert not loaded.training and meta2["training"] == {"seed": 1}
    x = torch.rand(3, 1, 14, 16, 13)
    with torch.no_grad():
        assert torch.equal(m(x)[0], loaded(x)[0])
    with pytest.raises(MissingInputError):
        load_model(tmp_path / "nothing")


def test_format_1_models_load_as_they_were_trained(tmp_path):
    from vaefusion.model.checkpoint import load_model, save_model

    old = VAE((8, 9, 8), 4, 0.125, channel_floor=1, decoder_head="relu")
    save_model(old, tmp_path / "m", {})
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["format"] == 3 and meta["channel_floor"] == 1 and meta["scaling"] == "maxabs"
    for key in ("channel_floor", "decoder_head"):  # what a format-1 model.json lacks
        del meta[key]
    meta["format"] = 1
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    model, _ = load_model(tmp_path / "m")
    assert model.head.out_channels == 2 and model.decoder_head == "relu"
    x = torch.zeros(1, 1, 8, 9, 8)
    assert torch.equal(model.decode(torch.ones(1, 4)), old.eval().decode(torch.ones(1, 4)))
    assert model(x)[0].shape == x.shape


def test_leaky_head_passes_a_gradient_where_relu_is_silent():
    torch.manual_seed(0)
    for head, expect_grad in (("relu", False), ("leaky", True)):
        m = VAE((8, 9, 8), 4, 0.125, decoder_head=head)
        with torch.no_grad():  # silence the head: every pre-activation negative
            m.head.weight.zero_()
            m.head.bias.fill_(-1.0)
        out = m.decode(torch.randn(2, 4))
        out.pow(2).sum().backward()
        assert (m.out.weight.grad.abs().sum() > 0) == expect_grad, head
