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
                     n_test=4, backend="sklearn", test_subjects=["sub-01", "sub-02_ses-1"],
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
