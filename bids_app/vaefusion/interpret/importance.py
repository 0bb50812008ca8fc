"""Modality importance (paper Fig. 2): each modality's share of the SVM's |weights|.

Per fold, |w| summed over a modality's latent features and normalised to sum to 1
(``evaluation.classifier.modality_importance``); here the mean and std over the folds (every
seed and repeat) of the first latent dim, ranked, with the NeuroMark names and domains.
"""

from __future__ import annotations

from dataclasses import dataclass

from vaefusion.evaluation.group_summary import ImportanceShare
from vaefusion.evaluation.methods import is_encoder
from vaefusion.evaluation.results import FoldResult
from vaefusion.evaluation.summary import importance_summary
from vaefusion.inputs.reference import GMV_MODALITY, icns

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


def importance_folds(results: list[FoldResult], latent_dim: int) -> int:
    """How many encoder folds at ``latent_dim`` have an importance."""
    return sum(1 for r in results if is_encoder(r.method) and r.latent_dim == latent_dim
               and r.importance is not None)


def ranked(shares: list[ImportanceShare], n_folds: int) -> list[ModalityImportance]:
    """The summary's importance (computed once: :func:`vaefusion.evaluation.summary.
    importance_summary`, most important first) with ranks and NeuroMark names."""
    return [ModalityImportance(rank=k + 1, modality=s.modality, domain=s.domain,
                               name=modality_name(s.modality), mean=s.mean, std=s.std,
                               n_folds=n_folds)
            for k, s in enumerate(shares)]


def rank_importance(results: list[FoldResult], modalities: list[str],
                    latent_dim: int) -> list[ModalityImportance]:
    """The modalities, most important first (ties keep the modality order); empty without
    VAE results. (A run ranks its summary's importance instead: :func:`ranked`.)"""
    shares = [ImportanceShare(**d) for d in importance_summary(results, modalities, latent_dim)]
    return ranked(shares, importance_folds(results, latent_dim))
