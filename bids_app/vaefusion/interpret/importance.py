"""Modality importance (paper Fig. 2): each modality's share of the SVM's |weights|.

Per fold, |w| summed over a modality's latent features and normalised to sum to 1
(``evaluation.classifier.modality_importance``); here the mean and std over the folds (every
seed and repeat) of the first latent dim, ranked, with the NeuroMark names and domains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaefusion.evaluation.methods import is_encoder
from vaefusion.evaluation.results import FoldResult
from vaefusion.inputs.reference import GMV_MODALITY, icns, modality_domain

#: How many modalities the importance figure shows (paper Fig. 2).
TOP_FIGURE = 10


@dataclass(frozen=True)
class ModalityImportance:
    """One modality's rank (1 = most important), share mean and std over folds."""

    rank: int
    modality: str
    domain: str
    name: str  # NeuroMark label, e.g. "Caudate"
    mean: float
    std: float
    n_folds: int

    @property
    def label(self) -> str:
        """``ICN02 Subthalamus/hypothalamus (SC)``: how figures and tables name it."""
        return f"{self.modality} {self.name} ({self.domain})"


def modality_name(modality: str) -> str:
    """The NeuroMark label of an ICN modality, "gray-matter volume" for GMV, else itself."""
    if modality == GMV_MODALITY:
        return "gray-matter volume"
    if modality.startswith("ICN") and modality[3:].isdigit():
        idx = int(modality[3:])
        table = icns()
        if 1 <= idx <= len(table):
            return table[idx - 1].label
    return modality


def importance_matrix(results: list[FoldResult], n_modalities: int,
                      latent_dim: int) -> np.ndarray:
    """``(n_folds, n_modalities)``: every VAE fold's importance at ``latent_dim``."""
    rows = [r.importance for r in results
            if is_encoder(r.method) and r.latent_dim == latent_dim and r.importance is not None]
    mat = np.asarray(rows, dtype=np.float64).reshape(len(rows), n_modalities)
    return mat


def rank_importance(results: list[FoldResult], modalities: list[str],
                    latent_dim: int) -> list[ModalityImportance]:
    """The modalities, most important first (ties keep the modality order); empty without
    VAE results."""
    mat = importance_matrix(results, len(modalities), latent_dim)
    if mat.shape[0] == 0:
        return []
    mean, std = mat.mean(axis=0), mat.std(axis=0)
    order = np.argsort(-mean, kind="stable")
    return [ModalityImportance(rank=k + 1, modality=modalities[i],
                               domain=modality_domain(modalities[i]),
                               name=modality_name(modalities[i]), mean=float(mean[i]),
                               std=float(std[i]), n_folds=int(mat.shape[0]))
            for k, i in enumerate(order)]
