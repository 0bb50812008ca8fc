"""Cross-validation folds over subjects: stratified K-fold test sets and a validation split.

Every method (the VAE and the PCA baselines) is evaluated on the same :class:`Fold` list, so
the folds are made once per partition (``--cv-seed`` and the repeat: :func:`partition_seed`).
A fold's test subjects are never used for fitting anything (VAE weights, early stopping, PCA,
scaler, choice of C or SVM); its validation subjects are used only for the VAE's early
stopping / best checkpoint, and the classifier (C by inner cross-validation included) is then
trained on train + validation (SPEC section 3, "Evaluation").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold

from vaefusion.errors import DataError, UsageError

#: Fewest subjects in a validation set and in the training set that remains beside it.
MIN_VAL_SUBJECTS = 2


MIN_TRAIN_SUBJECTS = 2


@dataclass(frozen=True, eq=False)  # arrays: compare fields explicitly
class Fold:
    """One cross-validation fold; the arrays hold sorted subject indices (rows of ``labels``)."""

    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @property
    def fit(self) -> np.ndarray:
        """Train + validation subjects: what the classifier is fit on (the unsupervised part of
        every method, VAE and PCA alike, is fit on ``train`` only)."""
        return np.sort(np.concatenate([self.train, self.val]))


def check_labels(labels: np.ndarray) -> np.ndarray:
    """Return ``labels`` as a 1-D int array of 0/1 with both classes present, else DataError."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise DataError(f"Diagnosis labels must be one value per subject, got shape {y.shape}.")
    if y.size and not np.isin(y, (0, 1)).all():
        raise DataError("Diagnosis labels must be 0 (control) or 1 (patient) for every subject.")
    y = y.astype(int)
    counts = np.bincount(y, minlength=2)
    if (counts == 0).any():
        raise DataError(
            f"Classification needs patients and controls, but the selection has {counts[1]} "
            f"patient(s) and {counts[0]} control(s); check --label-column, --positive-label and "
            "--negative-label or add subjects."
        )
    return y


def _validation_counts(pool_counts: np.ndarray, n_val: int) -> np.ndarray:
    """How many validation subjects to draw from each of the two classes of a training pool.

    Proportional to class size (largest remainder), then at least one per class when that
    class has two or more subjects, and never so many that a class vanishes from training.
    The caller guarantees ``n_val <= pool - 2``, so these constraints can always be met.
    """
    quota = n_val * pool_counts / pool_counts.sum()
    take = np.floor(quota).astype(int)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: n_val - int(take.sum())]] += 1
    cap = np.maximum(pool_counts - 1, 0)
    for c in (0, 1):
        other = 1 - c
        if take[c] == 0 and pool_counts[c] >= 2:
            take[c], take[other] = 1, take[other] - 1
        excess = take[c] - cap[c]
        if excess > 0:
            take[c], take[other] = cap[c], take[other] + excess
    return take


def min_subjects_per_class(k: int, val_fraction: float = 0.1) -> int:
    """Fewest subjects per class with which two balanced classes pass :func:`make_folds`.

    For error messages: each test fold takes ``ceil(m / k)`` subjects of each class and the
    rest must hold a validation set and :data:`MIN_TRAIN_SUBJECTS` training subjects.
    """
    m = max(k, 1)
    while True:
        pool = 2 * m - 2 * -(-m // k)
        n_val = max(MIN_VAL_SUBJECTS, int(round(val_fraction * pool)))
        if pool - n_val >= MIN_TRAIN_SUBJECTS:
            return m
        m += 1


def partition_seed(cv_seed: int, repeat: int) -> int:
    """The seed of repeat ``repeat`` of the K-fold: ``cv_seed + repeat``.

    Consecutive integers, so that ``--cv-seed 0 --cv-repeats 1`` gives exactly the folds of
    earlier versions with ``--seed 0``, and repeat ``r`` of ``--cv-seed s`` is the partition
    of ``--cv-seed s + r`` (runs with overlapping ranges share those partitions). The
    partition never depends on ``--seed``, which drives only initialisation and sampling.
    """
    if cv_seed < 0 or repeat < 0:
        raise ValueError(f"cv seed and repeat must be non-negative, got {cv_seed}, {repeat}")
    return int(cv_seed) + int(repeat)


def make_folds(labels: np.ndarray, k: int, seed: int, val_fraction: float = 0.1) -> list[Fold]:
    """Stratified K-fold over subjects, each with a stratified validation split of its training.

    ``StratifiedKFold(k, shuffle=True, random_state=seed)`` gives each subject to exactly one
    test fold. From the remaining subjects of each fold, ``round(val_fraction * n)`` (at least
    2) are drawn per class in proportion (at least one of each class when that class has two or
    more training subjects) as the validation set, with a generator seeded by ``seed`` and the
    fold index, so the folds depend only on the labels, ``k`` and ``seed``. (Not
    ``StratifiedShuffleSplit``: with small or unbalanced groups it can leave a class out of the
    validation set, and it refuses a class with a single training subject.)

    Raises DataError (exit 65) when ``k`` exceeds the smaller class (a test fold would lack
    that class) or when a fold's training subjects are too few to also hold out a validation
    set; UsageError when ``k < 2`` or ``val_fraction`` is not in (0, 1).
    """
    y = check_labels(labels)
    if k < 2:
        raise UsageError(f"--folds {k} is too small; use at least 2.")
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"The validation fraction must be between 0 and 1, got {val_fraction}.")
    counts = np.bincount(y, minlength=2)
    smaller = int(counts.min())
    if k > smaller:
        which = "patients" if counts[1] < counts[0] else "controls"
        fits = [j for j in range(2, smaller + 1) if min_subjects_per_class(j, val_fraction)
                <= smaller]
        raise DataError(
            f"--folds {k} needs at least {min_subjects_per_class(k, val_fraction)} patients and "
            f"as many controls (every test fold holds both), but there are only {smaller} "
            f"{which}; add {which}"
            + (f" or lower --folds to {max(fits)}." if fits else
               f" (2 folds, the fewest, need {min_subjects_per_class(2, val_fraction)} of each).")
        )
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    folds: list[Fold] = []
    # sklearn only needs X for its length; the subject index stands in for the data
    for i, (pool, test) in enumerate(skf.split(np.zeros((y.size, 1)), y)):
        n_val = max(MIN_VAL_SUBJECTS, int(round(val_fraction * pool.size)))
        if pool.size - n_val < MIN_TRAIN_SUBJECTS:
            raise DataError(
                f"{y.size} subjects in {k} folds leave {pool.size} training subjects per fold, "
                f"too few to hold out a validation set of {n_val} and still train on "
                f"{MIN_TRAIN_SUBJECTS}; --folds {k} needs at least "
                f"{min_subjects_per_class(k, val_fraction)} patients and as many controls, so "
                f"add subjects"
                + (" or lower --folds." if k > 2 else " (2 folds is the fewest).")
            )
        pool_y = y[pool]
        take = _validation_counts(np.bincount(pool_y, minlength=2), n_val)
        # a distinct, reproducible stream per (seed, fold)
        rng = np.random.default_rng([seed, i])
        val_parts = [
            rng.choice(pool[pool_y == c], size=int(take[c]), replace=False) for c in (0, 1)
        ]
        val = np.sort(np.concatenate(val_parts)).astype(int)
        train = np.setdiff1d(pool, val).astype(int)
        folds.append(Fold(index=i, train=train, val=val, test=np.sort(test).astype(int)))
    return folds

