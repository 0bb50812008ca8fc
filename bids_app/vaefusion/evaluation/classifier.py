"""Linear classification (the paper's SVM, or an L1 logistic regression), ROC-AUC per fold,
its label-permutation null, and modality importance from the classifier's weights.

The classifier (SPEC section 3), the same for every method: standardize the features of the
fold's train + validation subjects, choose C by inner cross-validation on those subjects only,
fit a linear SVM, score the test subjects with its decision function.

Design choices:

* ``SVC(kernel="linear", C, class_weight="balanced")``. The kernel (dual) SVC, not
  ``LinearSVC``: cuML's ``SVC`` solves the very same problem (hinge loss, L2 penalty,
  unpenalized intercept), so the GPU and CPU paths agree within solver tolerance, whereas
  liblinear's ``LinearSVC`` uses the squared hinge and penalizes the intercept. With a few
  hundred subjects and thousands of features (n_modalities x l) the dual is also the cheap side
  (an n x n kernel).
* C is chosen per fold (our protocol; the paper does not say how C was set) by stratified
  inner K-fold (:data:`INNER_FOLDS`, fewer when a class is smaller) over the fold's train +
  validation subjects, on the log grid :data:`SVM_C_GRID` (1e-4 ... 1e2), maximizing the mean
  inner ROC-AUC. A fixed C (the paper-less default of 1 is a hard margin on a few hundred
  standardized features and a few dozen subjects, but a soft one on 8 PCA features) would
  give the methods different regimes. Ties go to the smallest C: below some C every SVM is the
  (balanced) class-mean direction and ranks the subjects alike. The inner split is seeded by
  the partition and the fold, so every method of a fold sees the same inner folds, on either
  backend. The test subjects are never part of it. ``--svm-c`` fixes C instead.
* ``class_weight="balanced"``: patient/control groups are rarely the same size; balancing keeps
  the hyperplane (and so the weight-based modality importance) from favouring the larger
  group. ROC-AUC itself is threshold-free.
* Weights are reported in the standardized feature space (``coef_`` of the SVM), i.e. the
  importance of a feature is independent of its raw scale.
* ``--classifier logistic-l1``: an L1-penalised logistic regression (liblinear, balanced class
  weights, standardized features) with C chosen by the same inner cross-validation and grid.
  A dense L2 SVM on several hundred features from a few dozen subjects spreads its weight over
  every feature; the L1 penalty keeps a few, the better choice when the signal sits in a few
  modalities. Pre-registered beside the paper's SVM: both are applied to every method alike.
  It runs on scikit-learn on either backend (a small problem next to the encoders).
* The permutation null (``--permutations P``): the fold's classifier, at the C chosen on the
  true labels, is refitted on ``P`` label permutations (the same permutations in every fold and
  for every method) and scores the test subjects against the permuted labels. The AUC of each
  permutation, averaged like the real one, is its null distribution; the p value is
  ``(1 + #{null >= observed}) / (1 + P)``. Keeping C fixed leaves out the variability of its
  selection, which makes the p value slightly optimistic; refitting C for every permutation
  would cost ``len(grid) x inner folds`` times more.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from vaefusion.evaluation.folds import Fold
from vaefusion.inputs.reference import modality_domain

LOG = logging.getLogger("vaefusion.evaluation")


BACKENDS: tuple[str, ...] = ("sklearn", "cuml")


#: The log grid C is chosen from by inner cross-validation.
SVM_C_GRID: tuple[float, ...] = tuple(float(10.0**e) for e in range(-4, 3))


#: Inner stratified folds for choosing C (fewer when the smaller class has fewer subjects).
INNER_FOLDS = 5


#: C when no inner cross-validation is possible (a class with a single training subject):
#: the libraries' default.
FALLBACK_C = 1.0


SVM_CLASS_WEIGHT = "balanced"


# --------------------------------------------------------------------------------- backend
def _cuml_importable() -> bool:
    """True when cuML imports (it can be installed yet fail to load without CUDA libraries)."""
    try:
        importlib.import_module("cuml")
    except Exception:  # ImportError, but also CUDA/driver errors raised at import time
        return False
    return True


def _cuda_available() -> bool:
    """True when a CUDA device is usable, asked of torch first and cupy second."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        pass
    try:
        cupy = importlib.import_module("cupy")
        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:
        return False


def choose_backend(prefer: str = "auto") -> str:
    """The classifier backend to use: ``"cuml"`` or ``"sklearn"``.

    ``prefer`` is ``"auto"`` (cuML when it imports and CUDA is available), ``"cuml"``/``"cuda"``
    (the same, with a warning when it falls back), or ``"sklearn"``/``"cpu"``. The result is
    what actually runs; callers record it next to the metrics.
    """
    if prefer in ("sklearn", "cpu"):
        return "sklearn"
    if prefer not in ("auto", "cuml", "cuda"):
        raise ValueError(f"unknown classifier backend {prefer!r}; use auto, cuml or sklearn")
    if _cuml_importable() and _cuda_available():
        return "cuml"
    if prefer != "auto":
        LOG.warning("cuML or a CUDA device is not available; classifying with scikit-learn.")
    return "sklearn"


# --------------------------------------------------------------------------------- SVM
@dataclass(eq=False)
class SVMResult:
    """A fitted linear SVM's test scores and its weights on the standardized features."""

    decision: np.ndarray  # (n_test,) decision function; > 0 leans to label 1 (patient)
    weights: np.ndarray  # (n_features,) coef_ in the standardized feature space
    backend: str


def _to_numpy(a: object) -> np.ndarray:
    """A host NumPy array from NumPy, CuPy (``.get()``) or cuDF-like (``.to_numpy()``) output."""
    if hasattr(a, "get") and not isinstance(a, np.ndarray):
        a = a.get()
    elif hasattr(a, "to_numpy"):
        a = a.to_numpy()
    return np.asarray(a, dtype=np.float64)


def _fit_sklearn(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, c: float):
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    scaler = StandardScaler().fit(x_train)
    svm = SVC(kernel="linear", C=c, class_weight=SVM_CLASS_WEIGHT)
    svm.fit(scaler.transform(x_train), y_train)
    return svm.decision_function(scaler.transform(x_test)), svm.coef_


def _fit_cuml(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, c: float):
    # imported here: cuML is an optional GPU extra and absent from CPU installs and CI
    from cuml.preprocessing import StandardScaler
    from cuml.svm import SVC

    # float64 like the sklearn path; the scaler's output (CuPy or NumPy, depending on the cuML
    # version) goes straight into the SVM, whose outputs are requested as NumPy
    x_train = np.ascontiguousarray(x_train, dtype=np.float64)
    x_test = np.ascontiguousarray(x_test, dtype=np.float64)
    scaler = StandardScaler().fit(x_train)
    # cuML's SVC encodes classes_[1] (label 1) as +1, like sklearn, so the sign conventions
    # of decision_function and coef_ match the sklearn path
    svm = SVC(kernel="linear", C=c, class_weight=SVM_CLASS_WEIGHT, output_type="numpy")
    svm.fit(scaler.transform(x_train), y_train.astype(np.float64))
    return svm.decision_function(scaler.transform(x_test)), svm.coef_


def fit_linear_svm(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, backend: str,
    c: float = FALLBACK_C,
) -> SVMResult:
    """StandardScaler + linear SVM (penalty ``c``) fitted on ``x_train``; decision scores for
    ``x_test``.

    ``y_train`` is 0/1 with both classes present. ``backend`` is ``"sklearn"`` or ``"cuml"``
    (see :func:`choose_backend`); the scaler is fitted on the training rows only.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown classifier backend {backend!r}; use one of {BACKENDS}")
    x_train = np.asarray(x_train, dtype=np.float64)
    x_test = np.asarray(x_test, dtype=np.float64)
    y_train = np.asarray(y_train).astype(int)
    fit = _fit_cuml if backend == "cuml" else _fit_sklearn
    decision, coef = fit(x_train, y_train, x_test, float(c))
    return SVMResult(
        decision=_to_numpy(decision).reshape(-1),
        weights=_to_numpy(coef).reshape(-1),
        backend=backend,
    )


def fit_l1_logistic(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, backend: str,
    c: float = FALLBACK_C,
) -> SVMResult:
    """StandardScaler + L1 logistic regression (penalty ``1 / c``, balanced classes), fitted on
    ``x_train``; decision scores (log-odds) for ``x_test``. Always scikit-learn: ``backend``
    is recorded as ``"sklearn"``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x_train = np.asarray(x_train, dtype=np.float64)
    scaler = StandardScaler().fit(x_train)
    # l1_ratio=1 is the pure L1 penalty (scikit-learn >= 1.8 spells it so, not penalty="l1")
    model = LogisticRegression(l1_ratio=1.0, solver="liblinear", C=float(c),
                               class_weight=SVM_CLASS_WEIGHT, max_iter=1000)
    model.fit(scaler.transform(x_train), np.asarray(y_train).astype(int))
    decision = model.decision_function(scaler.transform(np.asarray(x_test, dtype=np.float64)))
    return SVMResult(decision=np.asarray(decision, dtype=np.float64).reshape(-1),
                     weights=np.asarray(model.coef_, dtype=np.float64).reshape(-1),
                     backend="sklearn")


#: The classifiers by name (``--classifier``): each fits on training rows and scores test rows.
CLASSIFIERS = {"svm": fit_linear_svm, "logistic-l1": fit_l1_logistic}


@dataclass(frozen=True)
class Protocol:
    """What every method's classification shares besides the folds: the classifier's name
    (a key of :data:`CLASSIFIERS`) and the permuted label vectors of the null, ``(P, n)``
    (``None``: no permutation null)."""

    classifier: str = "svm"
    null_labels: np.ndarray | None = None


def permuted_labels(labels: np.ndarray, n_permutations: int, seed: int) -> np.ndarray | None:
    """``(n_permutations, n)`` permutations of ``labels`` (``None`` for 0), one seed for every
    fold and method, so that each permutation is one relabelling of the whole sample."""
    if n_permutations <= 0:
        return None
    rng = np.random.default_rng(seed)
    y = np.asarray(labels).astype(int)
    return np.stack([rng.permutation(y) for _ in range(n_permutations)])


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for 0/1 labels ``y``; NaN if ``y`` has one class."""
    y = np.asarray(y).astype(int)
    if np.unique(y).size < 2:
        return float("nan")
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


# --------------------------------------------------------------------------------- C
@dataclass(eq=False)
class CSelection:
    """The C chosen by inner cross-validation, and the mean inner ROC-AUC of every C tried."""

    c: float
    grid: tuple[float, ...]
    mean_auc: np.ndarray  # (len(grid),); empty when no inner CV was possible
    n_inner_folds: int  # 0: too few subjects, C is FALLBACK_C


def inner_cv_seed(partition_seed: int, fold: int) -> int:
    """The seed of a fold's inner split: one per (partition, fold), shared by every method."""
    return int(np.random.SeedSequence([partition_seed, fold, 1]).generate_state(1)[0])


def select_c(x: np.ndarray, y: np.ndarray, backend: str, seed: int,
             grid: Sequence[float] = SVM_C_GRID, n_folds: int = INNER_FOLDS,
             classifier: str = "svm") -> CSelection:
    """Choose C for subjects ``x`` (features) and ``y`` (0/1) by stratified inner K-fold.

    Every C of ``grid`` is fitted on each inner training split (scaler included) and scored
    by ROC-AUC on its inner test split; the C with the highest mean wins, ties going to the
    smallest C. ``x`` and ``y`` must hold only the outer fold's train + validation subjects.
    """
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y).astype(int)
    grid = tuple(float(c) for c in grid)
    k = min(n_folds, int(np.bincount(y, minlength=2).min()))
    if k < 2:
        LOG.warning("A class has a single training subject; C cannot be chosen by inner "
                    "cross-validation and is %g.", FALLBACK_C)
        return CSelection(FALLBACK_C, grid, np.empty(0), 0)
    splits = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y))
    fit = CLASSIFIERS[classifier]
    aucs = np.array([[roc_auc(y[te], fit(x[tr], y[tr], x[te], backend, c).decision)
                      for tr, te in splits] for c in grid])
    mean = aucs.mean(axis=1)
    best = int(np.flatnonzero(mean >= mean.max() - 1e-12)[0])  # the grid ascends
    return CSelection(grid[best], grid, mean, k)


# --------------------------------------------------------------------------------- folds
@dataclass(eq=False)
class FoldMetrics:
    """The classifier's result on one fold."""

    fold: int
    roc_auc: float
    n_train: int  # subjects the SVM was fitted on (train + validation)
    n_test: int
    test_indices: np.ndarray  # (n_test,) subject indices, aligned with ``decision``
    decision: np.ndarray  # (n_test,) SVM decision scores of the test subjects
    weights: np.ndarray  # (n_features,) SVM weights on the standardized features
    backend: str
    c: float  # the SVM's C: chosen by inner cross-validation, or fixed (--svm-c)
    null_auc: np.ndarray  # (P,) test AUC of each label permutation (empty: no null)


def null_aucs(x_fit: np.ndarray, x_test: np.ndarray, fold: Fold, null_labels: np.ndarray,
              backend: str, c: float, classifier: str = "svm") -> np.ndarray:
    """The fold's test AUC under each permuted label vector (rows of ``null_labels``), the
    classifier refitted at ``c`` on the permuted training labels."""
    fit = CLASSIFIERS[classifier]
    out = np.full(null_labels.shape[0], np.nan)
    for p, yp in enumerate(np.asarray(null_labels).astype(int)):
        y_fit = yp[fold.fit]
        if np.unique(y_fit).size < 2:  # a permutation can leave one class out of training
            continue
        out[p] = roc_auc(yp[fold.test], fit(x_fit, y_fit, x_test, backend, c).decision)
    return out


def evaluate_fold(
    features: np.ndarray, labels: np.ndarray, fold: Fold, backend: str,
    svm_c: float | None = None, partition_seed: int = 0, protocol: Protocol | None = None,
) -> FoldMetrics:
    """Choose C (unless ``svm_c`` fixes it), fit on the fold's train + validation subjects,
    score its test subjects; with ``protocol``, its classifier and permutation null.

    ``partition_seed`` made the folds (:func:`vaefusion.evaluation.folds.partition_seed`);
    with the fold index it seeds the inner split, so every method of a fold uses the same one.
    """
    protocol = protocol or Protocol()
    y = np.asarray(labels).astype(int)
    fit_idx, test_idx = fold.fit, fold.test
    x_fit = np.asarray(features[fit_idx], dtype=np.float64)
    x_test = np.asarray(features[test_idx], dtype=np.float64)
    c = svm_c if svm_c is not None else select_c(
        x_fit, y[fit_idx], backend, inner_cv_seed(partition_seed, fold.index),
        classifier=protocol.classifier).c
    res = CLASSIFIERS[protocol.classifier](x_fit, y[fit_idx], x_test, backend, c)
    null = (np.empty(0) if protocol.null_labels is None else
            null_aucs(x_fit, x_test, fold, protocol.null_labels, backend, c,
                      protocol.classifier))
    return FoldMetrics(
        fold=fold.index,
        roc_auc=roc_auc(y[test_idx], res.decision),
        n_train=int(fit_idx.size),
        n_test=int(test_idx.size),
        test_indices=test_idx.copy(),
        decision=res.decision,
        weights=res.weights,
        backend=res.backend,
        c=float(c),
        null_auc=null,
    )


# --------------------------------------------------------------------------------- importance
def modality_importance(weights: np.ndarray, n_modalities: int, latent_dim: int) -> np.ndarray:
    """|SVM weight| summed over each modality's ``latent_dim`` features, normalized to sum 1.

    Features are modality-major: feature ``m * latent_dim + j`` is dimension ``j`` of modality
    ``m``. All-zero weights (a classifier that learned nothing) give equal shares.
    """
    w = np.abs(np.asarray(weights, dtype=np.float64).reshape(-1))
    if w.size != n_modalities * latent_dim:
        raise ValueError(f"{w.size} weights are not {n_modalities} modalities x {latent_dim}")
    per_modality = w.reshape(n_modalities, latent_dim).sum(axis=1)
    total = per_modality.sum()
    if total <= 0 or not np.isfinite(total):
        return np.full(n_modalities, 1.0 / n_modalities)
    return per_modality / total


def summarize_importance(
    per_fold: np.ndarray, modality_names: Sequence[str]
) -> list[dict[str, object]]:
    """Mean and std (ddof=0) over folds of each modality's importance, most important first.

    ``per_fold`` is (n_folds, n_modalities). Each entry is ``{"modality", "domain", "mean",
    "std"}`` with the NeuroMark domain of the modality; ties keep the modality order.
    """
    imp = np.atleast_2d(np.asarray(per_fold, dtype=np.float64))
    if imp.shape[1] != len(modality_names):
        raise ValueError(f"{imp.shape[1]} importances for {len(modality_names)} modalities")
    mean, std = imp.mean(axis=0), imp.std(axis=0)
    order = np.argsort(-mean, kind="stable")
    return [
        {
            "modality": modality_names[i],
            "domain": modality_domain(modality_names[i]),
            "mean": float(mean[i]),
            "std": float(std[i]),
        }
        for i in order
    ]

