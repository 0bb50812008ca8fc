"""``--model``: a trained model checked before it is used, without running anything from it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vaefusion.config import Config
from vaefusion.errors import DataError, UsageError, unreadable_input


def check_model(cfg: Config, latent_dims_given: bool = False) -> dict[str, Any]:
    """``--model``: both files present, the weights a safetensors file whose tensors match the
    architecture in model.json, and no conflicting ``--latent-dim``. Returns model.json.

    Only the safetensors header (JSON) is parsed: nothing in the file is unpickled or executed.
    """
    import torch
    from safetensors import safe_open

    from vaefusion.model.checkpoint import META_FILE, WEIGHTS_FILE, read_model_meta
    from vaefusion.model.network import VAE, layout_of

    assert cfg.model is not None
    for name in (META_FILE, WEIGHTS_FILE):  # there but unusable (a dangling link): exit 66
        path = Path(cfg.model) / name
        if os.path.lexists(path) and (bad := unreadable_input(path, "--model")) is not None:
            raise bad
    meta = read_model_meta(cfg.model)  # exit 66 when a file is missing
    weights = Path(cfg.model) / WEIGHTS_FILE
    try:
        with safe_open(str(weights), framework="pt") as fh:
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error type for a malformed header
        raise DataError(
            f"{weights} is not a valid safetensors file ({exc}); it is never unpickled, so copy "
            f"the model folder again from the group run that wrote it."
        ) from None
    try:
        grid = tuple(int(n) for n in meta["grid"])
        latent_dim, width = int(meta["latent_dim"]), float(meta["width"])
    except (KeyError, TypeError, ValueError):
        raise DataError(
            f"{Path(cfg.model) / META_FILE} lacks a valid grid, latent_dim or width; copy the "
            f"model folder again from the group run that wrote it."
        ) from None
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        net = VAE(grid, latent_dim, width, **layout_of(meta))
        expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    if shapes != expected:
        bad = sorted(set(shapes) ^ set(expected)) or sorted(
            k for k in expected if shapes[k] != expected[k])
        raise DataError(
            f"{weights} does not match {META_FILE} (grid {list(grid)}, latent dim {latent_dim}, "
            f"width {width}; first difference: {bad[0]}); copy both files from the same model "
            f"folder."
        )
    if latent_dims_given and list(cfg.latent_dims) != [latent_dim]:
        raise UsageError(
            f"--latent-dim {' '.join(map(str, cfg.latent_dims))} disagrees with --model "
            f"{cfg.model} (latent dim {latent_dim}); drop --latent-dim, as the model decides."
        )
    return meta


def check_model_fits(cfg: Config, icn_header_shape: tuple[int, ...]) -> None:
    """The inputs have the grid and ICN count that the ``--model`` was trained on (exit 65)."""
    from vaefusion.model.checkpoint import read_model_meta
    from vaefusion.model.network import downsampled_grid

    assert cfg.model is not None
    meta = read_model_meta(cfg.model)
    factor = int(meta.get("downsample", 1))
    grid = downsampled_grid(icn_header_shape[:3], factor)
    if tuple(grid) != tuple(int(n) for n in meta["grid"]):
        raise DataError(
            f"--model {cfg.model} was trained on grid {list(meta['grid'])} (downsample "
            f"{factor}) but these ICN maps are {list(icn_header_shape[:3])}, which downsample "
            f"{factor} makes {list(grid)}; use a model trained on inputs of this resolution."
        )
    trained = [m for m in meta.get("modalities") or [] if str(m).startswith("ICN")]
    if trained and len(trained) != icn_header_shape[3]:
        raise DataError(
            f"--model {cfg.model} was trained on {len(trained)} ICN components but these inputs "
            f"have {icn_header_shape[3]}; use a model trained on the same NeuroMark template."
        )
