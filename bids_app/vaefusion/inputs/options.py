"""Checks of the options that name inputs, run before anything is created.

A mistake in an option (a label with path characters, a filter file that is not JSON or names
unknown entities, a missing plugin file, a model that cannot be used) must end the run before
the output dataset or the work dir exists, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vaefusion.config import Config
from vaefusion.errors import DataError, UsageError

#: BIDS labels are alphanumeric; anything else (``../x``, ``a/b``) could escape a folder.
LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")


def check_labels(cfg: Config) -> None:
    """``--participant-label`` and ``--session-label`` values are BIDS labels."""
    for option, values in (("--participant-label", cfg.participant_label),
                           ("--session-label", cfg.session_label)):
        for value in values or []:
            if not LABEL_RE.match(str(value)):
                raise UsageError(
                    f"{option} '{value}' is not a BIDS label (letters and digits only, with or "
                    f"without the sub-/ses- prefix)."
                )


def check_inputs(cfg: Config, latent_dims_given: bool = False) -> None:
    """Every input-naming option, without creating anything (raises a VaefusionError)."""
    from vaefusion.inputs.discovery import check_bids_filters, derivative_dirs, load_bids_filters
    from vaefusion.inputs.participants import read_participants
    from vaefusion.workflows.base import plugin_settings

    check_labels(cfg)
    if cfg.bids_filters:
        check_bids_filters(cfg.bids_filters, "bids_filters")
    else:
        load_bids_filters(cfg.bids_filter_file)
    plugin_settings(cfg)  # a missing or malformed --use-plugin file: exit 64 now, not later
    derivative_dirs(cfg)
    assert cfg.bids_dir is not None
    read_participants(cfg.bids_dir, cfg, warn=False)  # discovery warns, into the log file
    if cfg.model is not None:
        check_model(cfg, latent_dims_given)


def check_model(cfg: Config, latent_dims_given: bool = False) -> dict[str, Any]:
    """``--model``: both files present, the weights a safetensors file whose tensors match the
    architecture in model.json, and no conflicting ``--latent-dim``. Returns model.json.

    Only the safetensors header (JSON) is parsed: nothing in the file is unpickled or executed.
    """
    import torch
    from safetensors import safe_open

    from vaefusion.model.checkpoint import META_FILE, WEIGHTS_FILE, read_model_meta
    from vaefusion.model.network import VAE

    assert cfg.model is not None
    meta = read_model_meta(cfg.model)  # exit 66 when a file is missing
    weights = Path(cfg.model) / WEIGHTS_FILE
    try:
        with safe_open(str(weights), framework="pt") as fh:
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
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
        expected = {k: tuple(v.shape) for k, v in VAE(grid, latent_dim, width).state_dict().items()}
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
