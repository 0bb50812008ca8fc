"""Cross-validated evaluation units: one VAE fold (a baseline's unit over all folds of a repeat
is :meth:`vaefusion.evaluation.methods.Baseline.run`), the folds and the Gram cache's path.

Each unit reads the group *manifest* (which cached subjects exist, their labels and which of
them are classified), does its work, and returns typed :class:`FoldResult` objects. The nipype
group workflow runs the units as parallel branches and joins their results; nothing here knows
nipype.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from vaefusion.config import Config, Runtime
from vaefusion.disk import naming
from vaefusion.disk.io import atomic_save_npz
from vaefusion.evaluation.classifier import Protocol
from vaefusion.evaluation.manifest import Manifest
from vaefusion.evaluation.results import FoldResult, VAETraining
from vaefusion.training.inference import embed_groups

LOG = logging.getLogger("vaefusion.crossval")


def partition(manifest: Manifest, cfg: Config, repeat: int):
    """The folds of K-fold repeat ``repeat``: seeded by ``--cv-seed`` and the repeat only, so
    every method and every ``--seed`` is evaluated on the same partition; with ``--cv-groups``
    the test folds are whole groups of that column (:func:`make_group_folds`)."""
    from vaefusion.evaluation.folds import make_partition

    return make_partition(manifest.y(), manifest.cv_groups(), cfg, repeat)


def classification_protocol(cfg: Config, manifest: Manifest, repeat: int) -> Protocol:
    """The classifier and the permutation null of repeat ``repeat``: the same for every
    method and fold (the permutations are seeded by the partition's seed)."""
    from vaefusion.evaluation.classifier import permuted_labels
    from vaefusion.evaluation.folds import partition_seed

    seed = int(np.random.SeedSequence([partition_seed(cfg.cv_seed, repeat), 2])
               .generate_state(1)[0])
    return Protocol(cfg.classifier, permuted_labels(manifest.y(), cfg.permutations, seed))


def grid_text(grid) -> str:
    return "x".join(str(int(n)) for n in grid)


def run_vae_fold(cfg: Config, runtime: Runtime, manifest: Manifest, latent_dim: int,
                 seed: int, repeat: int, fold: int, train_root: Path,
                 out_dir: Path, on_epoch_end: Callable[[Any], None] | None = None
                 ) -> FoldResult:
    """Train the fold's VAE on its train subjects (validation for model selection), embed
    every subject with it, and score the SVM on the fold's test subjects.

    ``seed`` drives the VAE's initialisation and data order; ``repeat`` and ``fold`` pick the
    fold of the partition (:func:`partition`). The model and the latents are saved under
    ``out_dir``; training checkpoints live in ``train_root`` so that a killed run resumes
    whatever the workflow engine does. ``on_epoch_end`` goes to the trainer (progress).
    """
    from vaefusion.evaluation.classifier import choose_backend, evaluate_fold, modality_importance
    from vaefusion.evaluation.folds import partition_seed
    from vaefusion.model.checkpoint import save_model
    from vaefusion.training.trainer import clear_checkpoint, train_vae

    cls = manifest.classified
    f = partition(manifest, cfg, repeat)[fold]
    files = [Path(p) for p in manifest.files]
    name = naming.unit_name("vae", latent_dim, seed, repeat, fold)
    LOG.info("%s: training on %d subjects (validation %d), testing on %d", name, f.train.size,
             f.val.size, f.test.size)
    result = train_vae(cfg, runtime, latent_dim, seed, [files[cls[i]] for i in f.train],
                       [files[cls[i]] for i in f.val], train_root / name,
                       on_epoch_end=on_epoch_end)
    mus = embed_groups(result.model, manifest.files, result.device, cfg.downsample)
    features = np.stack([mus[i] for i in cls]).reshape(cls.size, -1)
    backend = choose_backend("auto" if runtime.device == "cuda" else "sklearn")
    metrics = evaluate_fold(features, manifest.y(), f, backend, cfg.svm_c,
                            partition_seed(cfg.cv_seed, repeat),
                            classification_protocol(cfg, manifest, repeat))
    importance = modality_importance(metrics.weights, len(manifest.modalities), latent_dim)

    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = out_dir / naming.UNIT_MODEL
    save_model(result.model, model_dir, {
        **result.meta, "modalities": manifest.modalities, "fold": fold, "seed": seed,
        "repeat": repeat, "cv_seed": cfg.cv_seed,
        # the input grid, so that decoded volumes can be placed (vaefusion-generate, maps)
        **input_grid(files[0]),
        "train_subjects": [manifest.keys[cls[i]] for i in f.train],
        "val_subjects": [manifest.keys[cls[i]] for i in f.val],
        "test_subjects": [manifest.keys[cls[i]] for i in f.test],
    })
    latents = out_dir / naming.UNIT_LATENTS
    atomic_save_npz(latents, **{manifest.keys[i]: mu for i, mu in mus.items()})
    clear_checkpoint(train_root / name)
    LOG.info("%s: ROC-AUC %.3f (C %g; best epoch %d of %d)", name, metrics.roc_auc, metrics.c,
             result.best_epoch, result.epochs_run)
    training = VAETraining(
        best_epoch=result.best_epoch, epochs_run=result.epochs_run,
        best_val_loss=result.best_val_loss, stopped_early=result.stopped_early,
        device=str(result.device), model_dir=str(model_dir), latents=str(latents),
        history=[asdict(h) for h in result.history], likelihood=result.likelihood,
        sigma=result.sigma, active_units=result.active_units,
        kl_per_volume=result.kl_per_volume, recon_r2=result.recon_r2,
        recon_r2_subject=result.recon_r2_subject, **_learning(result))
    return FoldResult(
        method="vae", latent_dim=latent_dim, seed=seed, fold=fold, roc_auc=metrics.roc_auc,
        n_train=metrics.n_train, n_test=metrics.n_test, backend=metrics.backend, repeat=repeat,
        svm_c=metrics.c, grid=grid_text(result.model.grid),
        test_subjects=[manifest.keys[cls[i]] for i in f.test],
        test_labels=manifest.y()[f.test].tolist(), decision=metrics.decision.tolist(),
        null_auc=metrics.null_auc.tolist(),
        importance=importance.tolist(), training=training)


def input_grid(cache_file: Path) -> dict[str, list]:
    """``input_affine`` and ``input_shape`` of the cached inputs, for ``model.json``."""
    from vaefusion.inputs.cache import read_meta

    meta = read_meta(cache_file)
    return {"input_affine": meta.affine, "input_shape": meta.shape}


def gram_cache_path(cache_dir: Path, files: list[Path], downsample: int = 1) -> Path:
    """Where the Gram matrices of exactly these cached subjects (and versions) are kept.

    The name hashes the grid factor and each file's path, size and mtime, so another grid,
    another selection of subjects, or a re-preprocessed subject, never reuses stale Grams.
    """
    digest = hashlib.sha1(f"downsample={int(downsample)}\n".encode())
    for f in files:
        st = Path(f).stat()
        digest.update(f"{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return naming.gram_cache(cache_dir, digest.hexdigest()[:16])


def _learning(result) -> dict:
    """The kept epoch's subject-level learning figures (see training/metrics.py, twin.py)."""
    best = result.best
    if best is None:
        return {}
    r2 = dict(zip(result.modalities, best.val_r2_modality, strict=False))
    finite = [v for v in r2.values() if math.isfinite(v)]
    twins = result.twins
    return {"within_units": best.val_within_units,
            "min_modality_r2": min(finite) if finite else None,
            "undrawn": [m for m, v in r2.items() if math.isfinite(v) and v <= 0],
            "twin_r2_subject": twins.get("pca-shared", {}).get("r2_subject"),
            "late_r2_subject": twins.get("pca-late", {}).get("r2_subject")}
