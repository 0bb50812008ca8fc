"""Evaluation protocol (SPEC section 3): folds, linear SVM, ROC-AUC, importance, PCA baselines.

This module is the public entry point; the work is split by topic:

* :mod:`vaefusion.folds`: :func:`make_folds` (stratified K-fold with validation splits).
* :mod:`vaefusion.classify`: :func:`choose_backend` (cuML on a GPU, else scikit-learn),
  :func:`fit_linear_svm`, :func:`roc_auc`, :func:`evaluate_features`,
  :func:`modality_importance`, :func:`summarize_importance`.
* :mod:`vaefusion.baselines`: :func:`evaluate_pca_baselines` (``pca-early``, ``pca-late``,
  ``pca-shared``), :func:`brain_mask`, :func:`cache_loader`, :func:`modality_grams`.

Typical use for one seed and latent dim::

    folds = make_folds(labels, k=10, seed=seed)
    backend = choose_backend("auto")
    vae = evaluate_features(mu.reshape(n_subjects, -1), labels, folds, backend)
    mask = brain_mask(load_stack(p) for p in paths)
    load = cache_loader(paths, mask)
    grams = modality_grams(load, len(paths))          # once, shared by methods and dims
    early = evaluate_pca_baselines("pca-early", load, labels, folds, l, backend, grams=grams)
    if isinstance(early, NotAvailable): ...           # report "not available"
    importance = summarize_importance(
        np.stack([modality_importance(m.weights, n_mod, l) for m in vae]), modality_names)
"""

from __future__ import annotations

from .baselines import (
    PCA_METHODS,
    NotAvailable,
    SubjectArrays,
    brain_mask,
    cache_loader,
    evaluate_pca_baselines,
    gram_pca_scores,
    modality_grams,
    pca_component_limit,
    pca_features,
    shared_pca_scores,
)
from .classify import (
    BACKENDS,
    SVM_C,
    SVM_CLASS_WEIGHT,
    FoldMetrics,
    SVMResult,
    auc_summary,
    choose_backend,
    evaluate_features,
    evaluate_fold,
    fit_linear_svm,
    modality_importance,
    roc_auc,
    summarize_importance,
)
from .folds import Fold, check_labels, make_folds

__all__ = [
    "BACKENDS",
    "PCA_METHODS",
    "SVM_C",
    "SVM_CLASS_WEIGHT",
    "Fold",
    "FoldMetrics",
    "NotAvailable",
    "SVMResult",
    "SubjectArrays",
    "auc_summary",
    "brain_mask",
    "cache_loader",
    "check_labels",
    "choose_backend",
    "evaluate_features",
    "evaluate_fold",
    "evaluate_pca_baselines",
    "fit_linear_svm",
    "gram_pca_scores",
    "make_folds",
    "modality_grams",
    "modality_importance",
    "pca_component_limit",
    "pca_features",
    "roc_auc",
    "shared_pca_scores",
    "summarize_importance",
]
