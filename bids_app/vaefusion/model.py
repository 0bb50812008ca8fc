"""The shared 3D VAE of the seed paper (SPEC section 3), with every shape derived from the grid.

One encoder and one decoder serve all modalities; each volume is an independent sample of shape
``(1, X, Y, Z)``. At the NeuroMark grid (53 x 63 x 52) and the default knobs the network is::

    encoder  Conv3d 1->64->128->256->512 (k3, s2, p1, ReLU)
             53x63x52 -> 27x32x26 -> 14x16x13 -> 7x8x7 -> 4x4x4
             flatten (512*4*4*4) -> Linear -> mu, Linear -> logvar       (latent l = 128)
    decoder  Linear l -> 512*4*4*4, ReLU
             ConvTranspose3d 512->256->128->64->32 (k3, s2, p1, ReLU), output_size = the
             matching encoder shape (4->7->14->27->53 ...; exact, no crop)
             Conv3d 32->16 (k3, s1, p1, ReLU), Conv3d 16->1 (k3, s1, p1, no bias), tanh

The cost knobs of the CLI are ``width`` (channel multiplier, ``max(1, round(c * width))``) and
``downsample`` (integer grid factor, ``ceil(n / F)`` per axis, data reduced by area averaging).

Loss convention (documented choice): the reconstruction term is the negative log-likelihood of a
unit-variance Gaussian, ``0.5 * sum((recon - x)**2)`` over a volume's voxels, dropping the
constant ``0.5 * N * log(2 pi)``; so ``loss = 0.5 * SSE + beta * KL`` is exactly the negative
ELBO (up to that constant) when ``beta == 1``. Volumes are scaled to [-1, 1] in preprocessing,
which makes unit variance a deliberately broad likelihood.

Models are stored without pickle: ``model.safetensors`` (weights) + ``model.json`` (everything
needed to rebuild the network, plus the caller's metadata).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from vaefusion import __version__
from vaefusion.cache import atomic_write_text
from vaefusion.errors import MissingInputError, VaefusionError

Grid = tuple[int, int, int]

#: Paper channel lists (before the ``width`` multiplier).
ENCODER_CHANNELS: tuple[int, ...] = (64, 128, 256, 512)
DECODER_CHANNELS: tuple[int, ...] = (256, 128, 64, 32)
HEAD_CHANNELS: int = 16
KERNEL: int = 3
#: Factor of the reconstruction term: 0.5 * SSE = unit-variance Gaussian NLL (see module doc).
RECON_SCALE: float = 0.5
#: Version of the model.json layout, bumped when it changes incompatibly.
MODEL_FORMAT: int = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


# --------------------------------------------------------------------------- pure shape math
def conv_out(n: int, kernel: int = KERNEL, stride: int = 2, padding: int = 1) -> int:
    """Output length of a convolution along one axis (PyTorch's formula)."""
    return (n + 2 * padding - kernel) // stride + 1


def encoder_shapes(grid: Sequence[int], n_layers: int = len(ENCODER_CHANNELS)) -> list[Grid]:
    """Spatial shapes through the encoder, input grid first.

    ``encoder_shapes((53, 63, 52))`` is ``[(53, 63, 52), (27, 32, 26), (14, 16, 13), (7, 8, 7),
    (4, 4, 4)]``; the decoder walks the same list backwards, so every transposed convolution is
    told its exact output size and nothing is cropped.
    """
    shapes: list[Grid] = [_as_grid(grid)]
    for _ in range(n_layers):
        shapes.append(tuple(conv_out(n) for n in shapes[-1]))  # type: ignore[arg-type]
    return shapes


def downsampled_grid(grid: Sequence[int], factor: int) -> Grid:
    """The grid after ``--downsample factor``: ``ceil(n / factor)`` per axis."""
    if int(factor) != factor or factor < 1:
        raise ValueError(f"downsample factor must be an integer >= 1, got {factor}")
    return tuple(math.ceil(n / int(factor)) for n in _as_grid(grid))  # type: ignore[return-value]


def scaled_channels(channels: int, width: float) -> int:
    """Channel count under the ``--width`` multiplier (never below one)."""
    return max(1, round(channels * width))


def channel_plan(width: float = 1.0) -> dict[str, tuple[int, ...]]:
    """Channels of every layer group for a width multiplier (pure, used by model and FLOPs)."""
    return {
        "encoder": tuple(scaled_channels(c, width) for c in ENCODER_CHANNELS),
        "decoder": tuple(scaled_channels(c, width) for c in DECODER_CHANNELS),
        "head": (scaled_channels(HEAD_CHANNELS, width),),
    }


def _as_grid(grid: Sequence[int]) -> Grid:
    g = tuple(int(n) for n in grid)
    if len(g) != 3 or min(g) < 1:
        raise ValueError(f"a grid is three positive sizes, got {tuple(grid)}")
    return g  # type: ignore[return-value]


def _prod(shape: Sequence[int]) -> int:
    return math.prod(int(n) for n in shape)


# --------------------------------------------------------------------------- data resampling
def downsample_volumes(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Reduce volumes ``(N, C, X, Y, Z)`` to ``downsampled_grid`` by area (box) averaging.

    Area averaging (adaptive average pooling) is the anti-aliased choice for integer factors and
    keeps values inside [-1, 1]; when a size does not divide, the boxes overlap by one voxel.
    ``factor == 1`` returns the input unchanged.
    """
    if factor == 1:
        return x
    size = downsampled_grid(x.shape[-3:], factor)
    return F.adaptive_avg_pool3d(x, size)


def resize_volumes(x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Trilinear resize of ``(N, C, X, Y, Z)`` volumes to ``grid`` (e.g. decoded maps back to
    the full NeuroMark grid after training with ``--downsample``)."""
    grid = _as_grid(grid)
    if tuple(x.shape[-3:]) == grid:
        return x
    return F.interpolate(x, size=grid, mode="trilinear", align_corners=False)


# --------------------------------------------------------------------------- the network
class VAE(nn.Module):
    """The paper's shared 3D convolutional VAE for one input grid.

    ``grid`` is the network's input grid (already downsampled), ``latent_dim`` the size of mu,
    ``width`` the channel multiplier. Inputs are ``(N, 1, X, Y, Z)`` volumes in [-1, 1].
    """

    def __init__(self, grid: Sequence[int] = (53, 63, 52), latent_dim: int = 128,
                 width: float = 1.0) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {latent_dim}")
        self.grid: Grid = _as_grid(grid)
        self.latent_dim = int(latent_dim)
        self.width = float(width)
        self.shapes = encoder_shapes(self.grid)
        plan = channel_plan(width)
        enc, dec, head = plan["encoder"], plan["decoder"], plan["head"][0]
        self.bottleneck: tuple[int, ...] = (enc[-1], *self.shapes[-1])
        flat = _prod(self.bottleneck)

        ins = (1, *enc[:-1])
        self.encoder = nn.ModuleList(
            nn.Conv3d(i, o, KERNEL, stride=2, padding=1) for i, o in zip(ins, enc, strict=True)
        )
        self.fc_mu = nn.Linear(flat, self.latent_dim)
        self.fc_logvar = nn.Linear(flat, self.latent_dim)
        self.fc_decode = nn.Linear(self.latent_dim, flat)
        dec_ins = (enc[-1], *dec[:-1])
        self.decoder = nn.ModuleList(
            nn.ConvTranspose3d(i, o, KERNEL, stride=2, padding=1)
            for i, o in zip(dec_ins, dec, strict=True)
        )
        # Two stride-1 layers end the decoder (SPEC: the paper's single stride-1 layer cannot
        # reach 53x63x52 from 4x4x4 without a crop).
        self.head = nn.Conv3d(dec[-1], head, KERNEL, stride=1, padding=1)
        self.out = nn.Conv3d(head, 1, KERNEL, stride=1, padding=1, bias=False)

    def config(self) -> dict[str, Any]:
        """What is needed to rebuild this network."""
        return {"grid": list(self.grid), "latent_dim": self.latent_dim, "width": self.width}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters ``(mu, logvar)``, each ``(N, latent_dim)``."""
        h = x
        for conv in self.encoder:
            h = F.relu(conv(h))
        h = h.flatten(1)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Volumes ``(N, 1, X, Y, Z)`` in (-1, 1) from latent points ``(N, latent_dim)``."""
        h = F.relu(self.fc_decode(z)).view(z.shape[0], *self.bottleneck)
        # walk the encoder shapes backwards: 4x4x4 -> 7x8x7 -> ... -> the input grid
        targets = self.shapes[-2::-1]
        for deconv, size in zip(self.decoder, targets, strict=True):
            h = F.relu(deconv(h, output_size=size))
        h = F.relu(self.head(h))
        return torch.tanh(self.out(h))

    def forward(self, x: torch.Tensor, sample: bool | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(recon, mu, logvar)``.

        ``sample`` defaults to ``self.training``: training draws ``z = mu + sigma * eps`` (the
        reparameterization trick); evaluation decodes mu, so validation is deterministic.
        """
        mu, logvar = self.encode(x)
        if self.training if sample is None else sample:
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        else:
            z = mu
        return self.decode(z), mu, logvar


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


# --------------------------------------------------------------------------- cost accounting
def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def layer_flops(grid: Sequence[int], width: float = 1.0, latent_dim: int = 128
                ) -> list[tuple[str, int]]:
    """Analytic forward FLOPs per volume for each layer (2 FLOPs per multiply-add).

    A convolution costs ``2 * Cin * Cout * 27 * (output voxels)``; a stride-2 transposed
    convolution scatters every *input* voxel through 27 taps, so it costs
    ``2 * Cin * Cout * 27 * (input voxels)``. Bias adds, ReLU, tanh and the reparameterization
    are O(activations) and left out (< 1 %).
    """
    shapes = encoder_shapes(grid)
    plan = channel_plan(width)
    enc, dec, head = plan["encoder"], plan["decoder"], plan["head"][0]
    k3 = KERNEL**3
    out: list[tuple[str, int]] = []
    ins = (1, *enc[:-1])
    for i, (ci, co) in enumerate(zip(ins, enc, strict=True)):
        out.append((f"encoder.{i}", 2 * ci * co * k3 * _prod(shapes[i + 1])))
    flat = enc[-1] * _prod(shapes[-1])
    out.append(("fc_mu", 2 * flat * latent_dim))
    out.append(("fc_logvar", 2 * flat * latent_dim))
    out.append(("fc_decode", 2 * latent_dim * flat))
    dec_ins = (enc[-1], *dec[:-1])
    for i, (ci, co) in enumerate(zip(dec_ins, dec, strict=True)):
        out.append((f"decoder.{i}", 2 * ci * co * k3 * _prod(shapes[-1 - i])))
    vox = _prod(shapes[0])
    out.append(("head", 2 * dec[-1] * head * k3 * vox))
    out.append(("out", 2 * head * 1 * k3 * vox))
    return out


def flops_per_volume(grid: Sequence[int], width: float = 1.0, latent_dim: int = 128,
                     backward: bool = True) -> int:
    """Analytic FLOPs to train on one volume (forward, plus backward with ``backward``).

    The backward pass of a linear layer costs two forward passes (gradients w.r.t. its input
    and w.r.t. its weights), except the first layer, whose input (the data) needs no gradient.
    At the full grid and default knobs: 12.41 GFLOP forward, 37.14 GFLOP forward + backward;
    identical to ``torch.utils.flop_counter.FlopCounterMode`` (checked in the tests). The
    issue's "about 43 GFLOP" is ~3.5x forward; the exact count is the one above.
    """
    layers = layer_flops(grid, width, latent_dim)
    fwd = sum(f for _, f in layers)
    if not backward:
        return fwd
    return 3 * fwd - layers[0][1]


def activation_count(grid: Sequence[int], width: float = 1.0, latent_dim: int = 128) -> int:
    """Elements of all layer outputs for one volume (what training keeps for the backward pass,
    up to a small factor); about 12.4 million at the full grid and default width."""
    shapes = encoder_shapes(grid)
    plan = channel_plan(width)
    enc, dec, head = plan["encoder"], plan["decoder"], plan["head"][0]
    total = sum(c * _prod(s) for c, s in zip(enc, shapes[1:], strict=True))
    total += 2 * latent_dim + enc[-1] * _prod(shapes[-1])
    total += sum(c * _prod(s) for c, s in zip(dec, shapes[-2::-1], strict=True))
    return total + (head + 1) * _prod(shapes[0])


# --------------------------------------------------------------------------- save / load
def _unwrap(model: nn.Module) -> nn.Module:
    # torch.compile wraps the module; its state dict keys carry an "_orig_mod." prefix
    return getattr(model, "_orig_mod", model)


def save_model(model: nn.Module, directory: Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``directory``; returns ``directory``.

    ``meta`` (JSON-serializable: downsample, modalities, training info ...) is stored next to
    the architecture keys (grid, latent_dim, width), which always win over same-named keys in
    ``meta``. No pickle is involved, so a model can be shared and loaded safely. The JSON is
    written last, so its presence marks a complete model.
    """
    net = _unwrap(model)
    if not isinstance(net, VAE):
        raise TypeError(f"save_model expects a VAE, got {type(net).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    tmp = directory / (WEIGHTS_FILE + ".part")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(directory / WEIGHTS_FILE)
    info: dict[str, Any] = dict(meta or {})
    info.setdefault("downsample", 1)
    info.update(net.config())
    info["format"] = MODEL_FORMAT
    info.setdefault("version", __version__)
    info["n_parameters"] = count_parameters(net)
    atomic_write_text(directory / META_FILE, json.dumps(info, indent=2, sort_keys=True))
    return directory


def read_model_meta(directory: Path) -> dict[str, Any]:
    """The ``model.json`` of a saved model (raises a user-facing error if it is missing)."""
    path = Path(directory) / META_FILE
    if not path.is_file() or not (Path(directory) / WEIGHTS_FILE).is_file():
        raise MissingInputError(
            f"{directory} is not a vaefusion model: it needs {META_FILE} and {WEIGHTS_FILE} "
            f"(as written to group/models/ by a training run)."
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise VaefusionError(
            f"{path} is not valid JSON ({exc}); re-train or re-copy the model."
        ) from None


def load_model(directory: Path, device: torch.device | str = "cpu"
               ) -> tuple[VAE, dict[str, Any]]:
    """Rebuild the VAE from ``model.json``, load ``model.safetensors``; eval mode on ``device``."""
    meta = read_model_meta(directory)
    if int(meta.get("format", MODEL_FORMAT)) > MODEL_FORMAT:
        raise VaefusionError(
            f"{directory}/{META_FILE} has format {meta['format']}, newer than this vaefusion "
            f"({__version__}) reads; upgrade vaefusion."
        )
    model = VAE(meta["grid"], int(meta["latent_dim"]), float(meta["width"]))
    state = load_file(str(Path(directory) / WEIGHTS_FILE), device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise VaefusionError(
            f"{directory}/{WEIGHTS_FILE} does not match its {META_FILE} ({exc})."
        ) from None
    return model.to(device).eval(), meta
