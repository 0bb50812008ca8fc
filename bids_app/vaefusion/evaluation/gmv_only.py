"""``pca-gmv``: the gray matter alone, the reference row of every comparison.

A fusion method earns its keep only where it beats the best single modality. Gray matter is
measured with far less noise than an ICN map, so a GMV-only classifier is the one to beat: on
the simulator's earlier fusion arm it beat every multimodal baseline. ``pca-gmv`` is one PCA of
the gray-matter volumes over the fold's training subjects, ``l`` components, scored by the same
classifier protocol as every other method (the Gram matrix of the GMV is the last of the
per-modality Gram matrices the PCA baselines share).
"""

from __future__ import annotations

from vaefusion.evaluation.methods import GramPCA


class PCAGMV(GramPCA):
    """One PCA of the GMV volumes alone (the last modality of every cached stack)."""

    name = "pca-gmv"
    colour = "#8c564b"

    def describe(self, latent_dim: int, n_modalities: int) -> str:
        return f"{latent_dim} scores of one PCA of the gray-matter volumes alone"

    def limit(self, n_fit: int, n_modalities: int, n_voxels: int) -> int | None:
        return min(n_fit, n_voxels)

    def features(self, load, n_subjects, fit_idx, latent_dim, *, grams=None, seed=0,
                 standardise=False):
        from vaefusion.evaluation.baselines import gram_pca_scores, modality_grams

        if grams is None:
            grams = modality_grams(load, n_subjects)
        return gram_pca_scores(grams[-1], fit_idx, latent_dim)  # GMV is stacked last
