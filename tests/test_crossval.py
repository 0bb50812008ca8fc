"""The group manifest: who is classified, and no participant in two folds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vaefusion.config import Config
from vaefusion.evaluation.manifest import build_manifest
from vaefusion.evaluation.results import FoldResult, VAETraining
from vaefusion.inputs.cache import SubjectMeta, write_subject


def _write(cache, subject, session, label, n_mod=3):
    meta = SubjectMeta(subject=subject, session=session,
                       modalities=[f"ICN{i:02d}" for i in range(1, n_mod)] + ["GMV"],
                       affine=np.eye(4).tolist(), shape=[4, 4, 4], label=label)
    return write_subject(cache, np.ones((n_mod, 4, 4, 4), np.float32), meta)


def test_manifest_classifies_one_session_per_participant_and_full_modalities(tmp_path, caplog):
    files = [
        _write(tmp_path, "01", "1", "SZ"), _write(tmp_path, "01", "2", "SZ"),
        _write(tmp_path, "02", "1", "HC"), _write(tmp_path, "03", "1", "SZ"),
        _write(tmp_path, "04", "1", "HC"), _write(tmp_path, "05", "1", "other"),
        _write(tmp_path, "06", "1", "HC", n_mod=2),
    ]
    manifest = build_manifest(files, Config())
    assert manifest.labels == [1, -1, 0, 1, 0, -1, -1]
    assert manifest.keys[1] == "sub-01_ses-2"
    assert "another session of sub-01" in caplog.text
    assert "embedded, not classified" in caplog.text
    assert manifest.modalities == ["ICN01", "ICN02", "GMV"]
    assert list(manifest.classified) == [0, 2, 3, 4]


def _write_random(cache, subject, label, seed, shape=(9, 11, 10), n_mod=3):
    """A subject with random in-brain values in a box (zeros outside, like a masked map)."""
    data = np.zeros((n_mod, *shape), np.float32)
    data[:, 1:-1, 2:-2, 1:-2] = np.random.default_rng(seed).uniform(
        -1, 1, (n_mod, shape[0] - 2, shape[1] - 4, shape[2] - 3))
    meta = SubjectMeta(subject=subject, session=None,
                       modalities=[f"ICN{i:02d}" for i in range(1, n_mod)] + ["GMV"],
                       affine=np.eye(4).tolist(), shape=list(shape), label=label)
    return write_subject(cache, data, meta)


def test_pca_baselines_see_the_vae_grid(tmp_path):
    """The arrays the PCA baselines analyse are the VAE data loader's, value for value."""
    import torch

    from vaefusion.evaluation.baselines import analysis_grid, cache_loader, load_at_grid
    from vaefusion.training.data import SubjectDataset

    files = [_write_random(tmp_path, f"{i:02d}", "SZ", i) for i in range(1, 4)]
    for factor in (1, 2, 3):
        ds = SubjectDataset(files, downsample=factor)
        grid = analysis_grid((9, 11, 10), factor)
        assert grid == "x".join(map(str, ds.grid))
        for i, f in enumerate(files):
            ours = load_at_grid(f, factor)
            assert ours.shape[1:] == ds.grid
            torch.testing.assert_close(torch.from_numpy(ours), ds.load(i).squeeze(1),
                                       rtol=0, atol=0)
        flat = cache_loader(files, downsample=factor)(1)
        assert flat.shape == (3, int(np.prod(ds.grid)))
    assert analysis_grid((53, 63, 52), 4) == "14x16x13"


def test_pca_unit_records_grid_c_and_repeat(tmp_path):
    """A baseline's repeat unit: the grid after --downsample, the partition of --cv-seed + repeat
    (never --seed), a C per fold from the grid, and the Gram cache keyed by the grid."""
    from vaefusion.config import Runtime
    from vaefusion.evaluation.classifier import SVM_C_GRID
    from vaefusion.evaluation.crossval import gram_cache_path, partition
    from vaefusion.evaluation.folds import make_folds
    from vaefusion.evaluation.methods import METHODS

    files = [_write_random(tmp_path / "cache", f"{i:02d}", "SZ" if i % 2 else "HC", i)
             for i in range(1, 13)]
    manifest = build_manifest(files, Config())
    cfg = Config(folds=3, downsample=2, cv_seed=4)
    runtime = Runtime(device="cpu", threads=1, data_budget_bytes=2**30)
    assert all(np.array_equal(a.test, b.test) for a, b in zip(
        partition(manifest, cfg, 1), make_folds(manifest.y(), 3, 5), strict=True))
    rows = {}
    for seed, repeat in ((0, 0), (7, 0), (0, 1)):
        rows[seed, repeat] = METHODS.get("pca-late").run_repeat(cfg, runtime, manifest, 2, seed,
                                                                repeat, tmp_path / "pca")
    for (_, repeat), rs in rows.items():
        assert [(r.repeat, r.fold) for r in rs] == [(repeat, f) for f in range(3)]
        assert {r.grid for r in rs} == {"5x6x5"} and all(r.svm_c in SVM_C_GRID for r in rs)
    # pca-late has no random part: another --seed gives the same folds and results
    assert [r.test_subjects for r in rows[0, 0]] == [r.test_subjects for r in rows[7, 0]]
    assert [r.roc_auc for r in rows[0, 0]] == [r.roc_auc for r in rows[7, 0]]
    assert [r.test_subjects for r in rows[0, 0]] != [r.test_subjects for r in rows[0, 1]]
    key = gram_cache_path(tmp_path / "pca", files, 2)
    assert key.exists() and key != gram_cache_path(tmp_path / "pca", files, 1)


def test_gram_cache_is_keyed_by_the_exact_subjects(tmp_path):
    import os

    from vaefusion.evaluation.crossval import gram_cache_path

    files = [_write(tmp_path, f"{i:02d}", None, "SZ") for i in range(1, 4)]
    key = gram_cache_path(tmp_path / "pca", files)
    assert gram_cache_path(tmp_path / "pca", files) == key
    assert gram_cache_path(tmp_path / "pca", files[:2]) != key  # another selection
    st = files[0].stat()
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # re-preprocessed
    assert gram_cache_path(tmp_path / "pca", files) != key


def test_fold_results_cross_json_unchanged():
    """What a unit returns is what the join reads back: typed, NaN and nested record kept."""
    vae = FoldResult(method="vae", latent_dim=4, seed=1, fold=2, roc_auc=0.75, n_train=10,
                     n_test=4, backend="sklearn", repeat=3, svm_c=0.01, grid="14x16x13",
                     test_subjects=["sub-01", "sub-02_ses-1"],
                     test_labels=[1, 0], decision=[0.5, -0.25], importance=[0.6, 0.4],
                     training=VAETraining(best_epoch=3, epochs_run=5, best_val_loss=1.5,
                                          stopped_early=True, device="cpu", model_dir="m",
                                          latents="l.npz", history=[{"epoch": 1, "loss": 2.0}]))
    back = FoldResult.from_dict(json.loads(json.dumps(vae.to_dict())))
    assert back == vae and isinstance(back.training, VAETraining)
    missing = FoldResult(method="pca-late", latent_dim=64, seed=0, fold=0, roc_auc=math.nan,
                         n_train=5, n_test=2, backend="sklearn", available=False,
                         reason="at most 4 components")
    back = FoldResult.from_dict(json.loads(json.dumps(missing.to_dict())))
    assert math.isnan(back.roc_auc) and back.training is None and back.reason == missing.reason
    with pytest.raises(TypeError):
        FoldResult.from_dict({**vae.to_dict(), "auc": 1.0})  # a typo is not silently dropped
