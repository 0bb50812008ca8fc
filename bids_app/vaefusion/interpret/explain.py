"""Which trained model the figures, maps and reports explain.

As in the paper, the model of the first fold of the first latent dim and seed (and the first
K-fold repeat); ``--explain-fold`` picks another fold. All latent points compared or decoded
in one figure come from this one model: latents of different folds' models live in
different spaces and must never be mixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaefusion.config import Config
from vaefusion.disk import naming
from vaefusion.evaluation.methods import is_encoder
from vaefusion.evaluation.results import FoldResult


@dataclass(frozen=True)
class ExplainedModel:
    """The explained fold: its result, its model in ``group/models/`` and every subject's
    posterior means under that model, ``{subject key: (n_modalities, latent_dim)}``."""

    result: FoldResult
    model_dir: Path
    latents: dict[str, np.ndarray]

    @property
    def unit(self) -> str:
        """The model's folder name, e.g. ``vae_L8_seed0_rep0_fold0``."""
        return self.model_dir.name

    @property
    def latent_dim(self) -> int:
        return self.result.latent_dim

    def describe(self) -> str:
        """One sentence for the report."""
        r = self.result
        return (f"the VAE of fold {r.fold} (latent dim {r.latent_dim}, seed {r.seed}, repeat "
                f"{getattr(r, 'repeat', 0)}), saved in group/models/{self.unit}")


def select_explained(cfg: Config, results: list[FoldResult]) -> ExplainedModel | None:
    """The VAE result of ``cfg.explain_fold`` at the first latent dim, seed and repeat; None
    when the run trained no VAE."""
    assert cfg.output_dir is not None
    chosen = [r for r in results
              if is_encoder(r.method) and r.latent_dim == cfg.latent_dims[0]
              and r.seed == cfg.seeds[0] and getattr(r, "repeat", 0) == 0
              and r.fold == cfg.explain_fold and r.training is not None]
    if not chosen:
        return None
    r = chosen[0]
    assert r.training is not None
    model = naming.model_dir(naming.group_dir(cfg.output_dir), "vae", r.latent_dim, r.seed,
                             getattr(r, "repeat", 0), r.fold)
    with np.load(r.training.latents) as npz:
        latents = {key: np.asarray(npz[key], dtype=np.float32) for key in npz.files}
    return ExplainedModel(result=r, model_dir=model, latents=latents)
