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

The cost knobs of the CLI are ``width`` (channel multiplier, ``max(8, round(c * width))``: no
layer narrower than :data:`CHANNEL_FLOOR` channels, so the knob thins the network but never
cripples it) and ``downsample`` (integer grid factor, ``ceil(n / F)`` per axis, data reduced
by area averaging).

Model format 2 (this version) differs from format 1 in two ways, both stored in
``model.json`` so that format-1 models still load as they were trained:

- ``channel_floor`` 8 (format 1: 1). At width 0.125 format 1 had a 2-channel head and a
  4-channel last transposed convolution.
- ``decoder_head`` ``leaky`` (format 1: ``relu``): the two stride-1 layers at the end use
  LeakyReLU (slope 0.1) instead of ReLU. With ReLU, a head whose units all go silent for a
  modality's code makes the bias-free output convolution give exactly tanh(0) = 0 and no
  gradient reaches the layers that could draw that map (the "zeros plateau"). A leaky head
  always passes a gradient. The paper's channel list and layer order are unchanged.

Format 3 adds ``scaling``: ``maxabs`` (formats 1 and 2, the paper's) or ``voxelwise``, where
the encoder sees each volume standardised voxel by voxel with its modality's training mean and
SD maps and the decoder's linear output is mapped back by them
(:mod:`vaefusion.model.scaling`; ``scaling_modalities`` in ``model.json`` names the rows).
Such a network needs each volume's modality (``rows``) in :meth:`VAE.encode`,
:meth:`VAE.decode` and ``forward``.

Loss (:mod:`vaefusion.model.likelihood`): the negative ELBO per volume, constants included,
``0.5 * N * log(2 pi sigma^2) + SSE / (2 sigma^2) + beta * KL``. The decoder is a Gaussian with
one shared variance (``--likelihood sigma``): sigma^2 is the batch's mean squared error, its
maximum-likelihood value ("calibrated decoders", Rybkin et al. 2021), so the network has no
extra parameter. Why: volumes are scaled
to [-1, 1] and the residual SD is ~0.08, so the unit variance of earlier versions
(``--likelihood unit``, kept to reproduce them) weighs the reconstruction ~150x too little
against the KL and the posterior collapses to the prior. The sigma of the best epoch is stored
in ``model.json`` (``likelihood``, ``sigma``).

Models are stored without pickle: ``model.safetensors`` (weights) + ``model.json`` (everything
needed to rebuild the network, plus the caller's metadata).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vaefusion.model.objective import MaxAbsScaling, Scaling, scaling_of
from vaefusion.model.scaling import VoxelScaling

Grid = tuple[int, int, int]


#: Paper channel lists (before the ``width`` multiplier).
ENCODER_CHANNELS: tuple[int, ...] = (64, 128, 256, 512)


DECODER_CHANNELS: tuple[int, ...] = (256, 128, 64, 32)


HEAD_CHANNELS: int = 16


#: No layer has fewer channels than this under ``--width`` (format 2; format 1 had 1).
CHANNEL_FLOOR: int = 8


#: Activations of the two stride-1 decoder layers: the paper's ReLU or a leaky one.
DECODER_HEADS: tuple[str, ...] = ("leaky", "relu")


#: Negative slope of the leaky decoder head.
LEAKY_SLOPE: float = 0.1


#: The model format this version writes (see the module doc).
MODEL_FORMAT: int = 3


KERNEL: int = 3


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


def scaled_channels(channels: int, width: float, floor: int = CHANNEL_FLOOR) -> int:
    """Channel count under the ``--width`` multiplier, never below ``floor`` (nor above the
    paper's count when that is smaller)."""
    return max(min(floor, channels), round(channels * width), 1)


def channel_plan(width: float = 1.0, floor: int = CHANNEL_FLOOR) -> dict[str, tuple[int, ...]]:
    """Channels of every layer group for a width multiplier (pure, used by model and FLOPs)."""
    return {
        "encoder": tuple(scaled_channels(c, width, floor) for c in ENCODER_CHANNELS),
        "decoder": tuple(scaled_channels(c, width, floor) for c in DECODER_CHANNELS),
        "head": (scaled_channels(HEAD_CHANNELS, width, floor),),
    }


def _as_grid(grid: Sequence[int]) -> Grid:
    g = tuple(int(n) for n in grid)
    if len(g) != 3 or min(g) < 1:
        raise ValueError(f"a grid is three positive sizes, got {tuple(grid)}")
    return g  # type: ignore[return-value]


def volume_size(shape: Sequence[int]) -> int:
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
                 width: float = 1.0, channel_floor: int = CHANNEL_FLOOR,
                 decoder_head: str = "leaky", scaling: Scaling | None = None,
                 scaling_modalities: Sequence[str] | None = None) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {latent_dim}")
        if decoder_head not in DECODER_HEADS:
            raise ValueError(f"decoder_head must be one of {DECODER_HEADS}, got {decoder_head}")
        self.grid: Grid = _as_grid(grid)
        self.latent_dim = int(latent_dim)
        self.width = float(width)
        self.channel_floor = int(channel_floor)
        self.decoder_head = decoder_head
        self.shapes = encoder_shapes(self.grid)
        plan = channel_plan(width, self.channel_floor)
        enc, dec, head = plan["encoder"], plan["decoder"], plan["head"][0]
        self.bottleneck: tuple[int, ...] = (enc[-1], *self.shapes[-1])
        flat = volume_size(self.bottleneck)

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
        # the scaling's kind (model/objective.py); a per-modality one is a layer whose
        # statistics the trainer sets (fit) or the weights bring (the buffers keep the name
        # ``scaling``, as in format 3's files)
        self.scaling_kind: Scaling = scaling if scaling is not None else MaxAbsScaling()
        if self.scaling_kind.per_modality and not scaling_modalities:
            raise ValueError(f"scaling {self.scaling_kind.name!r} needs the modalities")
        self.scaling: VoxelScaling | None = (
            VoxelScaling(scaling_modalities, self.grid) if self.scaling_kind.per_modality
            else None)

    @property
    def scaling_name(self) -> str:
        """The scaling's registered name (``maxabs``, ``voxelwise``)."""
        return self.scaling_kind.name

    def modality_rows(self, modalities: Sequence[str], device: torch.device | str | None = None
                      ) -> torch.Tensor | None:
        """The ``rows`` argument for volumes of these modalities (``None`` for a max-abs
        network, which does not need them)."""
        return None if self.scaling is None else self.scaling.rows(modalities, device)

    def _need_rows(self, rows: torch.Tensor | None) -> torch.Tensor | None:
        if self.scaling is not None and rows is None:
            raise ValueError("this network standardises each modality (scaling voxelwise): "
                             "pass the volumes' modality rows")
        return rows

    def config(self) -> dict[str, Any]:
        """What is needed to rebuild this network."""
        return {"grid": list(self.grid), "latent_dim": self.latent_dim, "width": self.width,
                "channel_floor": self.channel_floor, "decoder_head": self.decoder_head,
                **self.scaling_kind.to_meta(list(self.scaling.names) if self.scaling else []),
                "format": MODEL_FORMAT}

    def head_activation(self, h: torch.Tensor) -> torch.Tensor:
        """The stride-1 layers' activation (ReLU in format 1, leaky in format 2)."""
        if self.decoder_head == "relu":
            return F.relu(h)
        return F.leaky_relu(h, LEAKY_SLOPE)

    def encode(self, x: torch.Tensor, rows: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters ``(mu, logvar)``, each ``(N, latent_dim)``; ``rows`` (the
        volumes' modalities, :meth:`modality_rows`) only for a voxelwise network."""
        rows = self._need_rows(rows)
        h = x if self.scaling is None else self.scaling.standardise(x, rows)
        for conv in self.encoder:
            h = F.relu(conv(h))
        h = h.flatten(1)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Volumes ``(N, 1, X, Y, Z)`` from latent points ``(N, latent_dim)``: in (-1, 1)
        through tanh (max-abs), or the modality's mean + SD times a linear output (voxelwise,
        which needs ``rows``)."""
        rows = self._need_rows(rows)
        h = F.relu(self.fc_decode(z)).view(z.shape[0], *self.bottleneck)
        # walk the encoder shapes backwards: 4x4x4 -> 7x8x7 -> ... -> the input grid
        targets = self.shapes[-2::-1]
        for deconv, size in zip(self.decoder, targets, strict=True):
            h = F.relu(deconv(h, output_size=size))
        h = self.head_activation(self.head(h))
        if self.scaling is None:
            return torch.tanh(self.out(h))
        return self.scaling.restore(self.out(h), rows)

    def forward(self, x: torch.Tensor, sample: bool | None = None,
                eps: torch.Tensor | None = None, rows: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(recon, mu, logvar)``.

        ``sample`` defaults to ``self.training``: training draws ``z = mu + sigma * eps`` (the
        reparameterization trick); evaluation decodes mu, so validation is deterministic.
        ``eps`` (``(N, latent_dim)``) replaces the draw, so that two passes over a batch can
        decode the same z (the calibrated variance of a batch processed in chunks). ``rows``:
        the volumes' modalities, for a voxelwise network.
        """
        mu, logvar = self.encode(x, rows)
        if eps is not None:
            z = mu + torch.exp(0.5 * logvar) * eps
        elif self.training if sample is None else sample:
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        else:
            z = mu
        return self.decode(z, rows), mu, logvar


def layout_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :class:`VAE` beyond grid, latent dim and width, from a
    ``model.json``: keys missing in older formats get the values those formats were trained
    with (format 1: no channel floor, a ReLU head; formats 1-2: max-abs scaling)."""
    mods = meta.get("scaling_modalities") or []
    return {"channel_floor": int(meta.get("channel_floor", 1)),
            "decoder_head": str(meta.get("decoder_head", "relu")),
            "scaling": scaling_of(meta), "scaling_modalities": [str(m) for m in mods]}

