"""The resumable checkpoint of a training on disk: written atomically, read back without
pickle, and the signature of the settings a resumed run must share."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from vaefusion.config import Config
from vaefusion.disk.io import full_disk

LOGGER = logging.getLogger("vaefusion.training")


CHECKPOINT = "checkpoint.pt"

def training_signature(cfg: Config, latent_dim: int, seed: int, train: Sequence[Path],
               val: Sequence[Path]) -> dict[str, Any]:
    """Settings a resumed run must share with the run it continues (epochs may grow)."""
    return {
        "latent_dim": int(latent_dim), "seed": int(seed), "width": float(cfg.width),
        "downsample": int(cfg.downsample), "lr": float(cfg.lr), "beta": float(cfg.beta),
        "batch_subjects": int(cfg.batch_subjects), "augment": bool(cfg.augment),
        "likelihood": str(cfg.likelihood), "kl_warmup": int(cfg.kl_warmup),
        "free_bits": float(cfg.free_bits), "decoder_head": str(cfg.decoder_head),
        "selection": str(cfg.selection),
        "train": [Path(p).stem for p in train], "val": [Path(p).stem for p in val],
    }


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic write (temp file + rename) so a kill never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.part")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException as exc:  # e.g. a full disk: no half-written file stays behind
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp)):
            exc.filename = str(path)
        # torch reports a full disk as a RuntimeError ("unexpected pos"): say what it is
        full = full_disk(exc, path, _nbytes(state))
        if full is not None:
            raise full from exc
        raise


def _nbytes(state: Any) -> int:
    """Bytes of the tensors in a nested state dict (what a checkpoint takes on disk)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, Mapping):
        return sum(_nbytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_nbytes(v) for v in state)
    return 0


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt checkpoint costs a restart, not the run
        LOGGER.warning("ignoring unreadable checkpoint %s (%s); starting over", path, exc)
        return None


def clear_checkpoint(out_dir: Path) -> None:
    """Remove the resumable checkpoint of a finished run (the best model stays)."""
    shutil.rmtree(Path(out_dir) / "last", ignore_errors=True)
