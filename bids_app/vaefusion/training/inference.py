"""Inference with a trained VAE: posterior means (embedding) and decoding latent points."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaefusion.errors import DataError
from vaefusion.inputs.cache import SubjectMeta, read_meta
from vaefusion.model.checkpoint import load_model
from vaefusion.model.network import VAE
from vaefusion.training.data import SubjectDataset
from vaefusion.training.passes import chunk_volumes

LOG = logging.getLogger("vaefusion.inference")

#: Inference keeps no activations for a backward pass: passes may be this many times larger.
INFER_CHUNK_FACTOR = 4


# --------------------------------------------------------------------------- inference
@torch.inference_mode()
def embed(model: VAE, paths: Sequence[Path], device: torch.device | str | None = None,
          downsample: int = 1, batch_volumes: int | None = None) -> np.ndarray:
    """Posterior means mu, ``(n_subjects, n_modalities, latent_dim)`` float32.

    Eval mode, no sampling, no gradient; volumes go through the network in batches of
    ``batch_volumes`` (default: memory-bounded, see :func:`chunk_volumes`; results do not
    depend on it beyond float rounding). ``downsample`` must be the model's (``meta``).
    """
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    if batch_volumes is None:
        batch_volumes = INFER_CHUNK_FACTOR * chunk_volumes(model.grid, model.width,
                                                           model.latent_dim, device)
    ds = SubjectDataset(list(paths), downsample)
    if tuple(ds.grid) != tuple(model.grid):
        raise DataError(f"cached subjects at grid {ds.grid} (downsample {downsample}) do not "
                        f"match the model's grid {model.grid}.")
    counts = {len(m) for m in ds.modalities}
    if len(counts) != 1:
        raise DataError("subjects have different numbers of modalities; embed them separately.")
    out = np.empty((len(ds), counts.pop(), model.latent_dim), dtype=np.float32)
    for i in range(len(ds)):
        x = ds.load(i)
        rows = model.modality_rows(ds.modalities[i], device)
        mus = [model.encode(x[j:j + batch_volumes].to(device),
                            None if rows is None else rows[j:j + batch_volumes])[0].float().cpu()
               for j in range(0, x.shape[0], batch_volumes)]
        out[i] = torch.cat(mus).numpy()
    return out


@torch.inference_mode()
def decode_latents(model: VAE, z: np.ndarray | torch.Tensor,
                   batch_volumes: int | None = None,
                   modalities: Sequence[str] | None = None) -> np.ndarray:
    """Decode latent points ``(n, latent_dim)`` to volumes ``(n, X, Y, Z)`` float32 at the
    model's grid (see :func:`vaefusion.model.resize_volumes` to go back to the full grid).
    A voxelwise model draws each point as a map of its modality (``modalities``, one per
    point); a max-abs model ignores them."""
    model.eval()
    device = next(model.parameters()).device
    if batch_volumes is None:
        batch_volumes = INFER_CHUNK_FACTOR * chunk_volumes(model.grid, model.width,
                                                           model.latent_dim, device)
    z = torch.as_tensor(np.asarray(z, dtype=np.float32)).reshape(-1, model.latent_dim)
    rows = None if modalities is None else model.modality_rows(list(modalities), device)
    if rows is not None and rows.shape[0] != z.shape[0]:
        raise ValueError(f"{z.shape[0]} latent points but {rows.shape[0]} modalities")
    vols = [model.decode(z[j:j + batch_volumes].to(device),
                         None if rows is None else rows[j:j + batch_volumes]).float().cpu()
            for j in range(0, z.shape[0], batch_volumes)]
    return torch.cat(vols)[:, 0].numpy()


def embed_groups(model, files: list[str], device, downsample: int) -> dict[int, np.ndarray]:
    """Posterior means of every subject, embedding subjects with equal modality counts together.

    Returns ``{subject index: (n_modalities, latent_dim)}``.
    """
    by_count: dict[int, list[int]] = {}
    for i, f in enumerate(files):
        by_count.setdefault(len(read_meta(Path(f)).modalities), []).append(i)
    out: dict[int, np.ndarray] = {}
    for idx in by_count.values():
        mu = embed(model, [Path(files[i]) for i in idx], device, downsample)
        out.update(zip(idx, mu, strict=True))
    return out



@dataclass(frozen=True)
class ModelEmbedding:
    """Subjects embedded with a saved model (``--model``)."""

    meta: dict[str, Any]  # the model's model.json
    latent_dim: int
    subjects: list[SubjectMeta]
    mus: list[np.ndarray]  # per subject, (n_modalities, latent_dim)


def embed_with_model(model_dir: Path, files: Sequence[Path],
                     device: torch.device | str) -> ModelEmbedding:
    """Posterior means of the cached subjects ``files`` under the model saved in ``model_dir``.

    A subject whose modalities are not (a prefix of) those the model was trained on is a
    :class:`DataError`: its rows would be mislabeled.
    """
    model, meta = load_model(model_dir, device)
    trained = meta.get("modalities")
    metas = [read_meta(Path(f)) for f in files]
    for m in metas:
        if trained and m.modalities != trained[:len(m.modalities)]:
            raise DataError(
                f"{m.key} has modalities {m.modalities[:3]}... but the model in {model_dir} was "
                f"trained on {trained[:3]}...; preprocess the same inputs the model saw."
            )
    LOG.info("Embedding %d subject(s) with %s (latent dim %d)", len(metas), model_dir,
             model.latent_dim)
    mus = embed_groups(model, [str(f) for f in files], device, int(meta.get("downsample", 1)))
    return ModelEmbedding(meta=meta, latent_dim=model.latent_dim, subjects=metas,
                          mus=[mus[i] for i in range(len(metas))])
