"""``model.json`` from elsewhere (another lab, an old run) checked before anything is built.

Every field that sizes the network or names its inputs is type- and range-checked, so that a
tampered or foreign file ends with exit 65 and one sentence, never with a crash or a huge
allocation (an absurd ``grid`` would be allocated by the network's constructor).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from vaefusion.errors import DataError
from vaefusion.model.network import DECODER_HEADS, MODEL_FORMAT

#: Largest grid edge and voxel count a model may declare: NeuroMark's 3 mm grid is 53 x 63 x 52
#: (174k voxels), a 1 mm MNI grid 7.1 M; 256^3 leaves room and still fits in memory.
MAX_GRID_EDGE = 512
MAX_GRID_VOXELS = 256**3
MAX_LATENT_DIM = 4096
MAX_WIDTH = 64.0
MAX_DOWNSAMPLE = 16
MAX_CHANNEL_FLOOR = 1024
MAX_MODALITIES = 10_000


def _int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _strings(value: Any) -> bool:
    return (isinstance(value, list) and len(value) <= MAX_MODALITIES
            and all(isinstance(v, str) and 0 < len(v) <= 64 for v in value))


def _grid_problem(grid: Any) -> str | None:
    if not (isinstance(grid, list) and len(grid) == 3
            and all(_int(n, 1, MAX_GRID_EDGE) for n in grid)):
        return (f"grid must be 3 whole numbers from 1 to {MAX_GRID_EDGE}, not "
                f"{str(grid)[:60]}")
    if math.prod(grid) > MAX_GRID_VOXELS:
        return f"grid {grid} has {math.prod(grid):,} voxels, more than {MAX_GRID_VOXELS:,}"
    return None


#: the fix of every problem but a newer format
RECOPY = "copy the model folder again from the group run that wrote it"


def model_meta_problem(meta: Any) -> tuple[str, str] | None:
    """What is wrong with a parsed ``model.json`` (the first problem) and its fix, or None."""
    problem = _problem(meta)
    if problem is None:
        return None
    if problem.startswith("format") and "newer" in problem:
        return problem, "upgrade vaefusion"
    return problem, RECOPY


def _problem(meta: Any) -> str | None:
    if not isinstance(meta, dict):
        return f"it holds a JSON {type(meta).__name__}, not an object"
    fmt = meta.get("format", MODEL_FORMAT)
    if not _int(fmt, 1, 10**6):
        return f"format must be a whole number, not {str(fmt)[:40]!r}"
    if fmt > MODEL_FORMAT:
        return f"format {fmt} is newer than this vaefusion reads (format {MODEL_FORMAT})"
    for key in ("grid", "latent_dim", "width"):
        if key not in meta:
            return f"it lacks {key}"
    if (problem := _grid_problem(meta["grid"])) is not None:
        return problem
    checks: dict[str, tuple[bool, str]] = {
        "latent_dim": (_int(meta["latent_dim"], 1, MAX_LATENT_DIM),
                       f"a whole number from 1 to {MAX_LATENT_DIM}"),
        "width": (isinstance(meta["width"], int | float) and not isinstance(meta["width"], bool)
                  and math.isfinite(meta["width"]) and 0 < meta["width"] <= MAX_WIDTH,
                  f"a number above 0 and at most {MAX_WIDTH:g}"),
        "downsample": (_int(meta.get("downsample", 1), 1, MAX_DOWNSAMPLE),
                       f"a whole number from 1 to {MAX_DOWNSAMPLE}"),
        "channel_floor": (_int(meta.get("channel_floor", 1), 1, MAX_CHANNEL_FLOOR),
                          f"a whole number from 1 to {MAX_CHANNEL_FLOOR}"),
        "decoder_head": (meta.get("decoder_head", "relu") in DECODER_HEADS,
                         f"one of {', '.join(DECODER_HEADS)}"),
        "modalities": (_strings(meta.get("modalities", [])), "a list of modality names"),
        "scaling_modalities": (_strings(meta.get("scaling_modalities", [])),
                               "a list of modality names"),
    }
    for key, (ok, wanted) in checks.items():
        if not ok:
            return f"{key} must be {wanted}, not {str(meta.get(key))[:40]!r}"
    return None


def check_model_meta(meta: Any, path: Path) -> dict[str, Any]:
    """``meta`` (parsed from ``path``) if every field is usable, else exit 65 in one sentence."""
    found = model_meta_problem(meta)
    if found is not None:
        raise DataError(f"{path} cannot be used: {found[0]}; {found[1]}.")
    return meta
