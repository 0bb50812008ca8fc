"""Cross-validation folds over subjects: stratified K-fold test sets (or, with
``--cv-groups``, test sets of whole groups such as sites) and a validation split.

Every method (the VAE and the PCA baselines) is evaluated on the same :class:`Fold` list, so
the folds are made once per partition (``--cv-seed`` and the repeat: :func:`partition_seed`),
always by :func:`make_partition`.
A fold's test subjects are never used for fitting anything (VAE weights, early stopping, PCA,
scaler, choice of C or SVM); its validation subjects are used only for the VAE's early
stopping / best checkpoint, and the classifier (C by inner cross-validation included) is then
trained on train + validation (SPEC section 3, "Evaluation").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from vaefusion.config import Config
from vaefusion.errors import DataError, UsageError

#: Fewest subjects in a validation set and in the training set that remains beside it.
MIN_VAL_SUBJECTS = 2


MIN_TRAIN_SUBJECTS = 2


#: A validation set holds at least this many subjects where the fold's training pool allows
#: it (up to a third of the pool): it selects the VAE's epoch and stops its training, and 4
#: subjects (10 % of 40) made that choice a coin toss.
TARGET_VAL_SUBJECTS = 10


def validation_size(pool: int, val_fraction: float) -> int:
    """Subjects in the validation set of a fold whose training pool has ``pool`` subjects:
    ``val_fraction`` of them, but at least :data:`TARGET_VAL_SUBJECTS` (no more than a third
    of the pool) and at least :data:`MIN_VAL_SUBJECTS`."""
    return max(MIN_VAL_SUBJECTS, int(round(val_fraction * pool)),
               min(TARGET_VAL_SUBJECTS, pool // 3))


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
        n_val = validation_size(pool, val_fraction)
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
    # sklearn only needs X for its length; the subject index stands in for the data
    splits = [(pool, test) for pool, test in skf.split(np.zeros((y.size, 1)), y)]
    return _with_validation(y, splits, seed, val_fraction)


def make_group_folds(labels: np.ndarray, groups: np.ndarray, k: int, seed: int,
                     val_fraction: float = 0.1, column: str = "site",
                     repeats: int = 1) -> list[Fold]:
    """``--cv-groups``: K test folds made of whole groups (sites), each with a stratified
    validation split of its training subjects (as :func:`make_folds`).

    With exactly ``k`` groups the partition is leave-one-group-out: fold ``i`` tests the
    ``i``-th group in sorted order, whatever the seed (so ``repeats`` > 1 is refused: every
    repeat would be the same partition). With more groups than ``k``, groups are dealt to
    ``k`` folds by ``StratifiedGroupKFold(k, shuffle=True, random_state=seed)`` (class
    balance as even as whole groups allow; another seed, another partition). Fewer groups than
    ``k``, fewer than 2 groups, or a test fold without both classes (its ROC-AUC would be
    undefined) are refused with DataError before anything is trained; ``column`` names the
    participants.tsv column in the messages.
    """
    y = check_labels(labels)
    g = np.asarray(groups).astype(str)
    if g.shape != y.shape:
        raise ValueError(f"one group per subject: {g.shape} groups for {y.shape} labels")
    if k < 2:
        raise UsageError(f"--folds {k} is too small; use at least 2.")
    names = np.unique(g)
    if names.size < 2:
        raise DataError(
            f"--cv-groups {column}: every classified subject has the same value "
            f"({names[0] if names.size else 'none'}) in participants.tsv column '{column}', so "
            f"no group can be held out; give at least 2 groups or leave --cv-groups out."
        )
    if names.size < k:
        raise DataError(
            f"--cv-groups {column} has {names.size} groups in participants.tsv "
            f"({', '.join(names)}), fewer than --folds {k}; set --folds {names.size} for "
            f"leave-one-{column}-out."
        )
    if names.size == k:
        if repeats > 1:
            raise UsageError(
                f"--cv-repeats {repeats} with --cv-groups {column} and --folds {k} repeats the "
                f"same leave-one-{column}-out partition; use --cv-repeats 1."
            )
        tests = [np.flatnonzero(g == name) for name in names]
    else:
        sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        tests = [test for _, test in sgkf.split(np.zeros((y.size, 1)), y, g)]
    held = [f"{column} {'+'.join(np.unique(g[test]))}" for test in tests]
    for i, test in enumerate(tests):
        counts = np.bincount(y[test], minlength=2)
        if (counts == 0).any():
            raise DataError(
                f"--cv-groups {column}: test fold {i} ({held[i]}) holds "
                f"{counts[1]} patient(s) and {counts[0]} control(s), so its ROC-AUC is "
                f"undefined; add subjects of the missing class to that {column}, merge it with "
                f"another in participants.tsv, or leave --cv-groups out."
            )
    splits = [(np.setdiff1d(np.arange(y.size), test), test) for test in tests]
    return _with_validation(y, splits, seed, val_fraction, held)


def make_partition(labels: np.ndarray, groups: np.ndarray | None, cfg: Config,
                   repeat: int) -> list[Fold]:
    """The folds of repeat ``repeat`` of the run's partition, the one place that chooses:
    :func:`make_group_folds` under ``--cv-groups`` (``groups``: one value per subject), else
    :func:`make_folds`; seeded by :func:`partition_seed` only, never by ``--seed``."""
    seed = partition_seed(cfg.cv_seed, repeat)
    if cfg.cv_groups is None:
        return make_folds(labels, cfg.folds, seed, cfg.val_fraction)
    if groups is None:
        raise ValueError("--cv-groups needs each subject's group")
    return make_group_folds(labels, groups, cfg.folds, seed, cfg.val_fraction, cfg.cv_groups,
                            cfg.cv_repeats)


def describe_partition(k: int, repeats: int, column: str | None = None,
                       n_groups: int = 0) -> str:
    """The partition in words, for summary.json and the report: ``"stratified 10-fold"``,
    ``"leave-one-site-out, 3 folds"`` or ``"site-grouped 5-fold (12 sites)"``, with
    ``", 2 repeats"`` appended where repeated."""
    if column is None:
        text = f"stratified {k}-fold"
    elif n_groups == k:
        text = f"leave-one-{column}-out, {k} folds"
    else:
        text = f"{column}-grouped {k}-fold ({n_groups} {column}s)"
    return text + (f", {repeats} repeats" if repeats > 1 else "")


def _with_validation(y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]], seed: int,
                     val_fraction: float, held: list[str] | None = None) -> list[Fold]:
    """Folds from (training pool, test) index pairs: a stratified validation split is drawn
    from each pool (:func:`_validation_counts`) with a generator seeded by ``seed`` and the
    fold index; DataError when a pool is too small to hold it and still train. ``held``
    names each fold's test groups (``--cv-groups``) for that message."""
    k = len(splits)
    folds: list[Fold] = []
    for i, (pool, test) in enumerate(splits):
        n_val = validation_size(pool.size, val_fraction)
        if pool.size - n_val < MIN_TRAIN_SUBJECTS:
            short = (f"too few to hold out a validation set of {n_val} and still train on "
                     f"{MIN_TRAIN_SUBJECTS}")
            if held is not None:
                raise DataError(
                    f"Holding out {held[i]} (fold {i}) leaves {pool.size} training subjects, "
                    f"{short}; add subjects to the other groups or merge groups in "
                    f"participants.tsv."
                )
            raise DataError(
                f"{y.size} subjects in {k} folds leave {pool.size} training subjects per fold, "
                f"{short}; --folds {k} needs at least "
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
