"""Latent structure (paper Fig. 1): a 2D t-SNE of every subject's per-modality posterior mean.

N subjects x n modalities points from the explained model. The backend is cuML on a CUDA
device when it is installed, else openTSNE when installed, else scikit-learn; all are seeded.
The perplexity is clipped below the number of points, so that a tiny run still works.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaefusion.disk import naming
from vaefusion.disk.io import write_tsv
from vaefusion.inputs.reference import modality_domain

LOG = logging.getLogger("vaefusion.interpret")

#: t-SNE's customary perplexity, used whenever there are enough points.
PERPLEXITY = 30.0
TSNE_COLUMNS = ["participant_id", "modality", "domain", "x", "y"]
#: Below this many points t-SNE runs on one thread (see :func:`tsne`).
SMALL = 5000


@dataclass(frozen=True)
class LatentMap:
    """The 2D layout: one row per (subject, modality)."""

    participant_id: list[str]
    modality: list[str]
    xy: np.ndarray  # (n_points, 2)
    backend: str
    perplexity: float

    @property
    def domain(self) -> list[str]:
        return [modality_domain(m) for m in self.modality]

    def rows(self) -> list[dict]:
        return [{"participant_id": p, "modality": m, "domain": d, "x": float(x), "y": float(y)}
                for p, m, d, (x, y) in zip(self.participant_id, self.modality, self.domain,
                                           self.xy, strict=True)]


def tsne_backend(device: str) -> str:
    """``cuml`` (CUDA and cuML installed), ``opentsne`` (installed) or ``sklearn``."""
    if device == "cuda":
        try:
            import cuml  # noqa: F401
            return "cuml"
        except ImportError:
            pass
    try:
        import openTSNE  # noqa: F401
        return "opentsne"
    except ImportError:
        return "sklearn"


def perplexity_for(n_points: int) -> float:
    """30, or less than the number of points (every backend needs perplexity < n)."""
    return float(max(1.0, min(PERPLEXITY, round((n_points - 1) / 3.0, 1))))


def tsne(points: np.ndarray, seed: int, device: str = "cpu", threads: int = 1
         ) -> tuple[np.ndarray, str, float]:
    """2D t-SNE of ``(n, d)`` points: ``(xy, backend, perplexity)``.

    The CPU backends run with at most ``threads`` OpenMP/BLAS threads, and one below
    ``SMALL`` points: their busy-waiting threads slow a small t-SNE by orders of magnitude
    on a machine whose cores are taken (80 points: 0.3 s on one thread, a minute on two).
    """
    from threadpoolctl import threadpool_limits

    x = np.asarray(points, dtype=np.float32)
    with threadpool_limits(limits=1 if x.shape[0] < SMALL else max(1, threads)):
        return _tsne(x, seed, device, max(1, threads))


def _tsne(x: np.ndarray, seed: int, device: str, threads: int
          ) -> tuple[np.ndarray, str, float]:
    perplexity = perplexity_for(x.shape[0])
    backend = tsne_backend(device)
    if x.shape[0] < 3:  # nothing to lay out: keep the first two coordinates
        xy = np.zeros((x.shape[0], 2), dtype=np.float32)
        xy[:, : min(2, x.shape[1])] = x[:, :2]
        return xy, "none", perplexity
    if backend == "cuml":
        try:
            from cuml.manifold import TSNE as CuTSNE

            xy = CuTSNE(n_components=2, perplexity=perplexity, random_state=seed,
                        output_type="numpy").fit_transform(x)
            return np.asarray(xy, dtype=np.float32), backend, perplexity
        except Exception as exc:  # cuML refuses some small or degenerate inputs
            LOG.warning("cuML t-SNE failed (%s); using scikit-learn", exc)
            backend = "sklearn"
    if backend == "opentsne":
        from openTSNE import TSNE as OpenTSNE

        emb = OpenTSNE(n_components=2, perplexity=perplexity, random_state=seed,
                       n_jobs=1 if x.shape[0] < SMALL else threads).fit(x)
        return np.asarray(emb, dtype=np.float32), backend, perplexity
    from sklearn.manifold import TSNE

    init = "pca" if min(x.shape) >= 2 else "random"
    xy = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init=init,
              learning_rate="auto").fit_transform(x)
    return np.asarray(xy, dtype=np.float32), "sklearn", perplexity


def latent_tsne(latents: dict[str, np.ndarray], modalities: dict[str, list[str]], seed: int,
                device: str = "cpu", threads: int = 1) -> LatentMap:
    """t-SNE of every subject's per-modality means (``latents[key]``: ``(n_mod, l)``; the
    modality names of each subject in ``modalities[key]``)."""
    keys = sorted(latents)
    pids = [k for k in keys for _ in range(len(latents[k]))]
    mods = [m for k in keys for m in modalities[k][: len(latents[k])]]
    points = np.concatenate([latents[k] for k in keys])
    xy, backend, perplexity = tsne(points, seed, device, threads)
    return LatentMap(participant_id=pids, modality=mods, xy=xy, backend=backend,
                     perplexity=perplexity)


def write_tsne(group: Path, layout: LatentMap) -> Path:
    """``group/tsne.tsv``: participant_id, modality, domain, x, y."""
    return write_tsv(Path(group) / naming.TSNE, layout.rows(), TSNE_COLUMNS)
