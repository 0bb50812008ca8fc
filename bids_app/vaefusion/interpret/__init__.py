"""Interpretation of a trained group run: what the model learned, as numbers and volumes.

``importance`` ranks the modalities by the SVM's weights (paper Fig. 2), ``maps`` decodes the
latent group centres and compares them with the input-space difference (Fig. 3),
``latent_space`` lays every subject's per-modality posterior means out with t-SNE (Fig. 1),
``generate`` decodes, interpolates and samples latent points, and ``explain`` picks the model
that the figures explain. Nothing here draws or knows nipype or the CLI: ``reports/`` draws.
"""
