"""Evaluation protocol: folds, SVM backends, ROC-AUC, importance and the PCA baselines."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA

from vaefusion.disk.io import atomic_save_npy
from vaefusion.errors import EXIT_DATA, DataError
from vaefusion.evaluation import classifier as classify
from vaefusion.evaluation import folds
from vaefusion.evaluation.baselines import (
    NotAvailable,
    brain_mask,
    cache_loader,
    gram_pca_scores,
    modality_grams,
    shared_pca_scores,
)
from vaefusion.evaluation.classifier import (
    choose_backend,
    evaluate_fold,
    fit_linear_svm,
    modality_importance,
    roc_auc,
    summarize_importance,
)
from vaefusion.evaluation.folds import make_folds
from vaefusion.evaluation.methods import METHODS


def evaluate_features(x, y, folds, backend):
    """Per-fold metrics of fixed features (what the cross-validation units do per fold)."""
    return [evaluate_fold(np.asarray(x, dtype=float), np.asarray(y), f, backend) for f in folds]


def auc_summary(metrics):
    aucs = np.array([m.roc_auc for m in metrics])
    return float(np.nanmean(aucs)), float(np.nanstd(aucs))



def _labels(n0: int, n1: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.r_[np.zeros(n0, int), np.ones(n1, int)])


def _subjects(n: int, n_mod: int, n_vox: int, seed: int = 0, rank: int = 6) -> list[np.ndarray]:
    """Low-rank-plus-noise volumes (float32, as read from the cache) with a clear spectrum."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, n_vox))
    scale = 2.0 ** -np.arange(rank) * 10
    return [
        ((rng.standard_normal((n_mod, rank)) * scale) @ basis + 0.5
         + 0.05 * rng.standard_normal((n_mod, n_vox))).astype(np.float32)
        for _ in range(n)
    ]


def _align(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``ours`` with each column's sign matched to ``ref`` (PCA signs are arbitrary)."""
    return ours * np.sign((ours * ref).sum(axis=0))


# --------------------------------------------------------------------------------- folds
@pytest.mark.parametrize(
    ("n0", "n1", "k", "seed"),
    [(30, 30, 10, 0), (23, 9, 5, 1), (12, 40, 3, 2), (5, 5, 5, 3), (50, 11, 10, 4)],
)
def test_folds_partition_subjects(n0: int, n1: int, k: int, seed: int) -> None:
    y = _labels(n0, n1, seed)
    folds = make_folds(y, k, seed)
    assert [f.index for f in folds] == list(range(k))
    tested = np.concatenate([f.test for f in folds])
    assert np.array_equal(np.sort(tested), np.arange(y.size))  # each subject tested once
    per_fold = np.array([np.bincount(y[f.test], minlength=2) for f in folds])
    assert (per_fold.max(axis=0) - per_fold.min(axis=0) <= 1).all()  # stratified within 1
    for f in folds:
        assert not set(f.test) & set(f.train)
        assert not set(f.test) & set(f.val)
        assert not set(f.train) & set(f.val)
        union = np.concatenate([f.train, f.val, f.test])
        assert np.array_equal(np.sort(union), np.arange(y.size))
        assert f.val.size >= 2 and f.train.size >= 2
        pool = np.concatenate([f.train, f.val])
        for c in (0, 1):
            if (y[pool] == c).sum() >= 2:  # a class with 2+ training subjects is in both sets
                assert (y[f.val] == c).any() and (y[f.train] == c).any()
        assert np.array_equal(f.fit, np.sort(pool))


def test_validation_is_stratified_and_holds_ten_subjects_where_it_can() -> None:
    y = _labels(60, 40)
    for f in make_folds(y, 10, 7):  # a tenth of 90 is 9: raised to 10
        assert f.val.size == 10
        assert np.array_equal(np.bincount(y[f.val], minlength=2), [6, 4])
    y = _labels(120, 120)
    for f in make_folds(y, 5, 7):  # a tenth of 192 is 19: kept
        assert f.val.size == 19
    # small pools: at most a third of the pool, at least 2
    assert [folds.validation_size(n, 0.1) for n in (4, 9, 27, 36, 54, 300)] == [
        2, 3, 9, 10, 10, 30]


def test_folds_are_reproducible_and_seeded() -> None:
    y = _labels(20, 20)
    a, b, c = make_folds(y, 5, 0), make_folds(y, 5, 0), make_folds(y, 5, 1)
    assert all(np.array_equal(x.test, z.test) and np.array_equal(x.val, z.val)
               for x, z in zip(a, b, strict=True))
    assert any(not np.array_equal(x.test, z.test) for x, z in zip(a, c, strict=True))


def test_too_many_folds_is_a_data_error() -> None:
    y = _labels(20, 4)
    with pytest.raises(DataError) as err:
        make_folds(y, 5, 0)
    assert err.value.code == EXIT_DATA == 65
    # the smaller class is named, and the two ways out
    assert "--folds" in err.value.message and "add patients" in err.value.message
    assert "lower --folds to 4" in err.value.message


def test_too_few_subjects_for_validation_is_a_data_error() -> None:
    with pytest.raises(DataError) as err:
        make_folds(_labels(2, 2), 2, 0)
    assert err.value.code == 65 and "validation" in err.value.message


def test_one_class_is_a_data_error() -> None:
    with pytest.raises(DataError):
        make_folds(np.zeros(20, int), 2, 0)


# --------------------------------------------------------------------------------- backend
def test_sklearn_when_cuml_cannot_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cuml", None)  # makes `import cuml` raise ImportError
    assert choose_backend() == "sklearn"
    assert choose_backend("cuml") == "sklearn"
    rng = np.random.default_rng(0)
    y = _labels(10, 10)
    metrics = evaluate_features(rng.standard_normal((20, 6)), y, make_folds(y, 2, 0),
                                choose_backend())
    assert {m.backend for m in metrics} == {"sklearn"}


def test_sklearn_when_cuml_present_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cuml", types.ModuleType("cuml"))
    monkeypatch.setattr(classify, "_cuda_available", lambda: False)
    assert choose_backend("auto") == "sklearn"
    monkeypatch.setattr(classify, "_cuda_available", lambda: True)
    assert choose_backend("auto") == "cuml"
    assert choose_backend("cpu") == choose_backend("sklearn") == "sklearn"


def test_cuda_probe_asks_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert classify._cuda_available() is False


class _DeviceArray:
    """Stands in for a CuPy array: host data only through ``.get()``."""

    def __init__(self, a: np.ndarray) -> None:
        self._a = np.asarray(a)

    def get(self) -> np.ndarray:
        return self._a


def _fake_cuml(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cuML look-alike built on scikit-learn, to exercise the cuML code path on a CPU."""
    from sklearn import preprocessing, svm

    class Scaler(preprocessing.StandardScaler):
        def transform(self, x, copy=None):
            return _DeviceArray(super().transform(x))

    class SVC(svm.SVC):
        def __init__(self, output_type=None, **kw):
            super().__init__(**kw)
            self.output_type = output_type

        def fit(self, x, y):
            return super().fit(x.get() if isinstance(x, _DeviceArray) else x, y)

        def decision_function(self, x):
            return _DeviceArray(super().decision_function(x.get()))

    pkg = types.ModuleType("cuml")
    pre, svm_mod = types.ModuleType("cuml.preprocessing"), types.ModuleType("cuml.svm")
    pre.StandardScaler, svm_mod.SVC = Scaler, SVC
    pkg.preprocessing, pkg.svm = pre, svm_mod
    for name, mod in (("cuml", pkg), ("cuml.preprocessing", pre), ("cuml.svm", svm_mod)):
        monkeypatch.setitem(sys.modules, name, mod)


def test_cuml_path_matches_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cuml(monkeypatch)
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((40, 8)), _labels(20, 20)
    x[y == 1, 0] += 1.5
    ref = fit_linear_svm(x[:30], y[:30], x[30:], "sklearn")
    gpu = fit_linear_svm(x[:30], y[:30], x[30:], "cuml")
    assert gpu.backend == "cuml" and ref.backend == "sklearn"
    assert isinstance(gpu.decision, np.ndarray) and gpu.weights.shape == (8,)
    np.testing.assert_allclose(gpu.decision, ref.decision, atol=1e-6)
    np.testing.assert_allclose(gpu.weights, ref.weights, atol=1e-6)


# --------------------------------------------------------------------------------- SVM
def test_separable_features_give_auc_one() -> None:
    rng = np.random.default_rng(0)
    y = _labels(25, 25)
    x = rng.standard_normal((50, 10))
    x[:, 3] += 4.0 * (2 * y - 1)
    metrics = evaluate_features(x, y, make_folds(y, 5, 0), "sklearn")
    assert auc_summary(metrics)[0] > 0.99
    for m in metrics:
        assert m.n_train + m.n_test == 50 and m.decision.shape == (m.n_test,)
        assert m.test_indices.shape == (m.n_test,) and m.weights.shape == (10,)
        assert np.argmax(np.abs(m.weights)) == 3 and m.weights[3] > 0  # label 1 is positive


def test_random_labels_give_auc_half_on_average() -> None:
    rng = np.random.default_rng(1)
    aucs = []
    for seed in range(6):
        y = _labels(20, 20, seed)
        x = rng.standard_normal((40, 20))
        aucs += [m.roc_auc for m in evaluate_features(x, y, make_folds(y, 5, seed), "sklearn")]
    assert abs(np.mean(aucs) - 0.5) < 0.08


# --------------------------------------------------------------------------------- C
def _signal(n0: int = 20, n1: int = 20, n_feat: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = _labels(n0, n1, seed)
    x = rng.standard_normal((n0 + n1, n_feat))
    x[:, :3] += 0.8 * (2 * y - 1)[:, None]
    return x, y


def test_select_c_is_a_grid_search_with_inner_stratified_cv() -> None:
    """The same choice as scikit-learn's GridSearchCV over (scaler, SVC) with ROC-AUC on the
    same inner folds (ties: the first, i.e. smallest, C)."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    chosen = set()
    for seed in range(4):
        x, y = _signal(seed=seed, n_feat=40)
        sel = classify.select_c(x, y, "sklearn", seed=seed)
        ref = GridSearchCV(
            make_pipeline(StandardScaler(), SVC(kernel="linear", class_weight="balanced")),
            {"svc__C": list(classify.SVM_C_GRID)}, scoring="roc_auc",
            cv=StratifiedKFold(classify.INNER_FOLDS, shuffle=True, random_state=seed),
        ).fit(x, y)
        assert sel.c == ref.best_params_["svc__C"]
        np.testing.assert_allclose(sel.mean_auc, ref.cv_results_["mean_test_score"])
        assert sel.n_inner_folds == classify.INNER_FOLDS and sel.grid == classify.SVM_C_GRID
        chosen.add(sel.c)
    assert len(chosen) > 1  # the choice follows the data (fixed seeds: deterministic)
    assert classify.SVM_C_GRID[0] == 1e-4 and classify.SVM_C_GRID[-1] == 1e2


def test_select_c_with_a_tiny_class() -> None:
    x, y = _signal(3, 9)
    assert classify.select_c(x, y, "sklearn", 0).n_inner_folds == 3  # the smaller class
    one = classify.select_c(x[:10], np.r_[np.zeros(9, int), 1], "sklearn", 0)
    assert (one.c, one.n_inner_folds) == (classify.FALLBACK_C, 0)


def test_c_selection_never_touches_the_test_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wild or permuted test features leave the chosen C and the weights bit-identical, and no
    SVM (inner or final) is ever fitted on a test subject's row."""
    x, y = _signal(n_feat=12)
    fold = make_folds(y, 4, 0)[1]
    base = evaluate_fold(x, y, fold, "sklearn", partition_seed=3)
    rng = np.random.default_rng(5)
    wild = x.copy()
    wild[fold.test] = 100 * rng.standard_normal((fold.test.size, x.shape[1]))
    permuted = x.copy()
    permuted[fold.test] = x[rng.permutation(fold.test)]
    for other in (wild, permuted):
        res = evaluate_fold(other, y, fold, "sklearn", partition_seed=3)
        assert res.c == base.c
        np.testing.assert_array_equal(res.weights, base.weights)
    assert not np.allclose(evaluate_fold(wild, y, fold, "sklearn", partition_seed=3).decision,
                           base.decision)

    marked = x.copy()
    marked[fold.test, 0] = 1e9  # a value no training row has
    fitted_on: list[np.ndarray] = []
    real_fit = classify.fit_linear_svm

    def spy(x_train, y_train, x_test, backend, c=classify.FALLBACK_C):
        fitted_on.append(np.asarray(x_train))
        return real_fit(x_train, y_train, x_test, backend, c)

    monkeypatch.setitem(classify.CLASSIFIERS, "svm", spy)  # the registry the protocol reads
    res = evaluate_fold(marked, y, fold, "sklearn", partition_seed=3)
    # every C of the grid on every inner split, then the final fit
    assert len(fitted_on) == len(classify.SVM_C_GRID) * classify.INNER_FOLDS + 1
    assert all((rows[:, 0] != 1e9).all() for rows in fitted_on)
    assert fitted_on[-1].shape[0] == fold.fit.size and res.c == base.c


def test_fixed_svm_c_skips_the_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _signal()
    fold = make_folds(y, 4, 0)[0]
    monkeypatch.setattr(classify, "select_c", lambda *a, **k: pytest.fail("C was searched"))
    res = evaluate_fold(x, y, fold, "sklearn", svm_c=0.01)
    ref = fit_linear_svm(x[fold.fit], y[fold.fit], x[fold.test], "sklearn", 0.01)
    assert res.c == 0.01
    np.testing.assert_array_equal(res.weights, ref.weights)


def test_cuml_path_chooses_the_same_c(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _signal(seed=2)
    fold = make_folds(y, 4, 1)[2]
    ref = evaluate_fold(x, y, fold, "sklearn", partition_seed=1)
    _fake_cuml(monkeypatch)
    gpu = evaluate_fold(x, y, fold, "cuml", partition_seed=1)
    assert gpu.backend == "cuml" and gpu.c == ref.c
    np.testing.assert_allclose(gpu.weights, ref.weights, atol=1e-6)


def test_inner_split_depends_on_partition_and_fold_only() -> None:
    seeds = {classify.inner_cv_seed(p, f) for p in range(3) for f in range(4)}
    assert len(seeds) == 12 and classify.inner_cv_seed(1, 2) == classify.inner_cv_seed(1, 2)


def test_partition_seed_keeps_the_old_folds() -> None:
    """--cv-seed 0, repeat 0 is exactly the partition earlier versions made with --seed 0."""
    from vaefusion.evaluation.folds import partition_seed

    y = _labels(23, 17)
    assert partition_seed(0, 0) == 0 and partition_seed(4, 2) == 6
    old, new = make_folds(y, 5, 0), make_folds(y, 5, partition_seed(0, 0))
    assert all(np.array_equal(a.test, b.test) and np.array_equal(a.val, b.val)
               and np.array_equal(a.train, b.train) for a, b in zip(old, new, strict=True))
    other = make_folds(y, 5, partition_seed(0, 1))
    assert any(not np.array_equal(a.test, b.test) for a, b in zip(old, other, strict=True))
    with pytest.raises(ValueError):
        partition_seed(-1, 0)


def test_roc_auc() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_auc_table_over_folds_and_seeds() -> None:
    """Fold AUCs pool every seed; the seed spread is over each seed's mean; NaN is "X"."""
    from vaefusion.evaluation.results import FoldResult
    from vaefusion.evaluation.summary import auc_table

    def res(method: str, seed: int, fold: int, auc: float) -> FoldResult:
        return FoldResult(method=method, latent_dim=8, seed=seed, fold=fold, roc_auc=auc,
                          n_train=10, n_test=5, backend="sklearn", available=not np.isnan(auc))

    rows = auc_table([res("vae", 0, 0, 0.6), res("vae", 0, 1, 0.8), res("vae", 1, 0, 1.0),
                      res("vae", 1, 1, 1.0), res("pca-late", 0, 0, np.nan)])
    late, vae = rows  # sorted by method
    assert vae["roc_auc_mean"] == pytest.approx(0.85)
    assert vae["roc_auc_std"] == pytest.approx(np.std([0.6, 0.8, 1.0, 1.0]))
    assert vae["seed_mean"] == pytest.approx(0.85) and vae["seed_std"] == pytest.approx(0.15)
    assert (vae["n_seeds"], vae["n_folds"], vae["available"]) == (2, 4, True)
    assert np.isnan(late["roc_auc_mean"]) and late["available"] is False


# --------------------------------------------------------------------------------- importance
def test_importance_finds_informative_modality() -> None:
    rng = np.random.default_rng(2)
    n_mod, dim = 4, 5
    y = _labels(30, 30)
    x = rng.standard_normal((60, n_mod, dim))
    x[:, 2, :] += 1.2 * (2 * y - 1)[:, None]  # modality 2 carries the diagnosis
    metrics = evaluate_features(x.reshape(60, -1), y, make_folds(y, 5, 0), "sklearn")
    per_fold = np.stack([modality_importance(m.weights, n_mod, dim) for m in metrics])
    np.testing.assert_allclose(per_fold.sum(axis=1), 1.0)
    assert (per_fold.argmax(axis=1) == 2).all()
    names = ["ICN01", "ICN02", "GMV", "ICN53"]
    summary = summarize_importance(per_fold, names)
    assert [s["modality"] for s in summary][0] == "GMV" and summary[0]["domain"] == "GM"
    assert set(summary[0]) == {"modality", "domain", "mean", "std"}
    means = [s["mean"] for s in summary]
    assert means == sorted(means, reverse=True) and abs(sum(means) - 1) < 1e-9
    assert summary[0]["std"] == pytest.approx(per_fold[:, 2].std())


def test_importance_is_modality_major_and_normalized() -> None:
    w = np.array([1.0, -1.0, 0.0, 0.0, 0.0, 2.0])  # 3 modalities x 2 dims
    np.testing.assert_allclose(modality_importance(w, 3, 2), [0.5, 0.0, 0.5])
    np.testing.assert_allclose(modality_importance(np.zeros(6), 3, 2), [1 / 3] * 3)
    with pytest.raises(ValueError):
        modality_importance(w, 2, 2)


# --------------------------------------------------------------------------------- PCA
def test_gram_pca_early_and_late_match_sklearn() -> None:
    n, n_mod, n_vox, dim = 30, 3, 40, 4
    data = _subjects(n, n_mod, n_vox)
    x = np.stack([d.reshape(-1) for d in data]).astype(np.float64)
    grams = modality_grams(data, n, block_bytes=n_mod * n_vox * 8 * 7)  # several blocks
    np.testing.assert_allclose(grams.sum(axis=0), x @ x.T, rtol=1e-12)
    fit = np.sort(np.random.default_rng(0).permutation(n)[:22])
    ours = gram_pca_scores(grams.sum(axis=0), fit, dim)
    ref = PCA(dim, svd_solver="full").fit(x[fit]).transform(x)  # train and test subjects
    np.testing.assert_allclose(_align(ours, ref), ref, atol=1e-8 * np.abs(ref).max())
    for m in range(n_mod):  # pca-late: one PCA per modality
        xm = x.reshape(n, n_mod, n_vox)[:, m]
        ref_m = PCA(dim, svd_solver="full").fit(xm[fit]).transform(xm)
        ours_m = gram_pca_scores(grams[m], fit, dim)
        np.testing.assert_allclose(_align(ours_m, ref_m), ref_m, atol=1e-8 * np.abs(ref_m).max())


def test_shared_pca_matches_sklearn() -> None:
    n, n_mod, n_vox, dim = 20, 4, 60, 3
    data = _subjects(n, n_mod, n_vox, seed=5)
    fit = np.arange(0, n, 2)
    ours = shared_pca_scores(data, n, fit, dim, seed=0)
    pca = PCA(dim, svd_solver="full").fit(np.concatenate([data[i] for i in fit]))
    ref = np.stack([pca.transform(d.astype(np.float64)) for d in data])  # (n, n_mod, dim)
    ours = ours.reshape(n, n_mod, dim)  # modality-major: subject i, modality m, component j
    for j in range(dim):
        sign = np.sign((ours[..., j] * ref[..., j]).sum())
        np.testing.assert_allclose(sign * ours[..., j], ref[..., j],
                                   atol=1e-4 * np.abs(ref).max())


def test_voxelwise_shared_pca_standardises_with_the_training_statistics() -> None:
    n, n_mod, n_vox, dim = 20, 3, 60, 3
    data = _subjects(n, n_mod, n_vox, seed=6)
    data = [d * np.linspace(0.1, 5.0, n_vox, dtype=np.float32) for d in data]  # unequal SDs
    fit = np.arange(0, n, 2)
    ours = shared_pca_scores(data, n, fit, dim, seed=0, voxelwise=True)
    x = np.stack([data[i] for i in fit]).astype(np.float64)  # (fit, n_mod, V)
    mean, sd = x.mean(0), x.std(0)
    sd = np.maximum(sd, 0.05 * sd.mean(axis=1, keepdims=True))  # the network's floor
    pca = PCA(dim, svd_solver="full").fit(((x - mean) / sd).reshape(-1, n_vox))
    ref = np.stack([pca.transform((d - mean) / sd) for d in data])
    ours = ours.reshape(n, n_mod, dim)
    for j in range(dim):
        sign = np.sign((ours[..., j] * ref[..., j]).sum())
        np.testing.assert_allclose(sign * ours[..., j], ref[..., j],
                                   atol=1e-4 * np.abs(ref).max())


#: the PCA baselines, as registered (vaefusion.evaluation.methods)
PCA_METHODS = ("pca-early", "pca-late", "pca-shared")


def evaluate_pca_baselines(method: str, *args, **kw):
    return METHODS.get(method).evaluate(*args, **kw)


@pytest.mark.parametrize("method", PCA_METHODS)
def test_baselines_not_available_beyond_training_samples(method: str) -> None:
    n, n_mod, n_vox = 12, 3, 50
    data = _subjects(n, n_mod, n_vox)
    y = _labels(6, 6)
    # 8 train + validation subjects per fold; the PCA is fit on the 6 training subjects (the
    # VAE's), 18 training volumes
    folds = make_folds(y, 3, 0)
    assert all(f.train.size == 6 for f in folds)
    calls: list[int] = []

    def load(i: int) -> np.ndarray:
        calls.append(i)
        return data[i]

    limits = {"pca-early": 6, "pca-late": 6, "pca-shared": 18}
    res = evaluate_pca_baselines(method, load, y, folds, limits[method] + 1, "sklearn")
    assert isinstance(res, NotAvailable) and res.limit == limits[method]
    assert "not available" in str(res)
    assert len(calls) == 1  # decided from sizes; no pass over the data
    res = evaluate_pca_baselines(method, load, y, folds, limits[method], "sklearn")
    assert isinstance(res, list) and len(res) == 3
    assert all(m.weights.shape == ((1 if method == "pca-early" else n_mod) * limits[method],)
               for m in res)


@pytest.mark.parametrize("method", PCA_METHODS)
def test_baselines_never_fit_on_test_subjects(method: str) -> None:
    n, n_mod, n_vox, dim = 24, 3, 30, 3
    data = _subjects(n, n_mod, n_vox, seed=2)
    y = _labels(12, 12, 2)
    folds = make_folds(y, 4, 0)
    test = set(folds[0].test)
    # the test subjects of fold 0 replaced by wild data: if any PCA or scaler were fitted on
    # them, the training features and so the SVM weights of fold 0 would change
    noise = np.random.default_rng(9)
    wild = [(100 * noise.standard_normal(d.shape)).astype(np.float32) if i in test else d
            for i, d in enumerate(data)]
    a = evaluate_pca_baselines(method, data, y, folds[:1], dim, "sklearn", seed=1)
    b = evaluate_pca_baselines(method, wild, y, folds[:1], dim, "sklearn", seed=1)
    np.testing.assert_allclose(a[0].weights, b[0].weights, rtol=1e-6, atol=1e-9)
    assert not np.allclose(a[0].decision, b[0].decision)
    assert a[0].n_train == folds[0].fit.size and a[0].n_test == folds[0].test.size


def test_baselines_share_grams_and_classify_planted_effect() -> None:
    n, n_mod, n_vox = 40, 3, 50
    y = _labels(20, 20, 4)
    data = _subjects(n, n_mod, n_vox, seed=4)
    pattern = np.random.default_rng(1).standard_normal(n_vox).astype(np.float32)
    for i in np.flatnonzero(y):
        data[i][1] += 40.0 * pattern  # a patient effect stronger than the shared structure
    folds = make_folds(y, 4, 0)
    grams = modality_grams(data, n)
    for method in PCA_METHODS:
        res = evaluate_pca_baselines(method, data, y, folds, 3, "sklearn", grams=grams)
        assert auc_summary(res)[0] > 0.9, method


def test_brain_mask_and_cache_loader(tmp_path: Path) -> None:
    stacks = [np.zeros((2, 3, 4, 5), np.float16) for _ in range(2)]
    stacks[0][0, 1, 2, 3] = 0.5
    stacks[1][1, 0, 0, 0] = -1.0
    mask = brain_mask(stacks)
    assert mask.shape == (60,) and mask.sum() == 2
    paths = []
    for i, s in enumerate(stacks):
        paths.append(tmp_path / f"sub-{i}.npy")
        atomic_save_npy(paths[-1], s)
    load = cache_loader(paths, mask)
    a = load(1)
    assert a.dtype == np.float32 and a.shape == (2, 2)
    np.testing.assert_array_equal(a, [[0.0, 0.0], [-1.0, 0.0]])
    with pytest.raises(DataError):
        brain_mask([np.zeros((2, 5))])
