"""Trained models on disk without pickle: ``model.safetensors`` (weights) + ``model.json``.

``model.json`` holds everything needed to rebuild the network (grid, latent_dim, width) plus the
caller's metadata; it is written last, so its presence marks a complete model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vaefusion import __version__
from vaefusion.disk.io import atomic_write_text, full_disk
from vaefusion.errors import DataError, MissingInputError, VaefusionError
from vaefusion.model.flops import count_parameters
from vaefusion.model.meta_check import check_model_meta
from vaefusion.model.network import MODEL_FORMAT, VAE, layout_of

# MODEL_FORMAT (model.network): the model.json layout, bumped when it changes incompatibly;
# 2: channel floor and leaky decoder head, 3: scaling (maxabs or voxelwise)
__all__ = ["META_FILE", "MODEL_FORMAT", "WEIGHTS_FILE", "load_model", "read_model_meta",
           "save_model"]


WEIGHTS_FILE = "model.safetensors"


META_FILE = "model.json"


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
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(directory / WEIGHTS_FILE)
    except BaseException as exc:  # e.g. a full disk ("os error 28"): nothing half-written
        tmp.unlink(missing_ok=True)
        full = full_disk(exc, directory / WEIGHTS_FILE,
                         sum(t.numel() * t.element_size() for t in tensors.values()))
        if full is not None:
            raise full from exc
        raise
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
        return check_model_meta(json.loads(path.read_text()), path)
    except json.JSONDecodeError as exc:
        raise DataError(
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
    # older formats are rebuilt as they were trained (layout_of)
    model = VAE(meta["grid"], int(meta["latent_dim"]), float(meta["width"]), **layout_of(meta))
    try:  # safetensors parses a JSON header and raw tensors: no pickle, no code is run
        state = load_file(str(Path(directory) / WEIGHTS_FILE), device="cpu")
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # SafetensorError for a malformed file, RuntimeError for shapes
        raise DataError(
            f"{directory}/{WEIGHTS_FILE} is not a safetensors file matching its {META_FILE} "
            f"({type(exc).__name__}: {str(exc)[:200]}); re-copy the model folder."
        ) from None
    return model.to(device).eval(), meta

