"""Cross-validated evaluation units: one VAE fold, one PCA baseline over all folds.

Each unit reads the group *manifest* (which cached subjects exist, their labels and which of
them are classified), does its work, and returns a JSON-able dict. The nipype group workflow
runs the units as parallel branches and joins their results; nothing here knows nipype.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaefusion.cache import atomic_save_npy, atomic_write_text, read_meta
from vaefusion.config import Config
from vaefusion.errors import DataError

LOG = logging.getLogger("vaefusion.crossval")


@dataclass
class Manifest:
    """The subjects of a group run.

    ``files`` are cache ``.npy`` paths of every subject; ``labels`` are 1 (patient), 0
    (control) or -1 (not classified: another label, no label, or missing modalities);
    ``modalities`` are those of the classified subjects.
    """

    files: list[str]
    keys: list[str]
    labels: list[int]
    modalities: list[str]

    @property
    def classified(self) -> np.ndarray:
        """Indices (into ``files``) of the subjects that take part in classification."""
        return np.flatnonzero(np.asarray(self.labels) >= 0)

    def y(self) -> np.ndarray:
        return np.asarray(self.labels)[self.classified]

    def write(self, path: Path) -> bool:
        """Write unless an identical manifest is there (its timestamp keys nipype's cache)."""
        text = json.dumps(asdict(self), indent=1)
        if path.exists() and path.read_text() == text:
            return False
        atomic_write_text(path, text)
        return True

    @classmethod
    def read(cls, path: Path | str) -> Manifest:
        return cls(**json.loads(Path(path).read_text()))


def build_manifest(files: list[Path], cfg: Config) -> Manifest:
    """Labels from the cache sidecars; the full modality set is the most common one."""
    metas = [read_meta(f) for f in files]
    sets = [tuple(m.modalities) for m in metas]
    full = max(set(sets), key=lambda s: (len(s), sets.count(s)))
    labels = []
    seen: set[str] = set()
    for meta, mods in zip(metas, sets, strict=True):
        if meta.subject in seen:
            # folds are over participants: a second session in another fold would leak
            labels.append(-1)
            LOG.warning("%s is another session of sub-%s: embedded, not classified (pick the "
                        "session to classify with --session-label)", meta.key, meta.subject)
            continue
        if mods != full:
            labels.append(-1)
            LOG.warning("%s has %d of %d modalities: embedded, not classified", meta.key,
                        len(mods), len(full))
        elif meta.label == cfg.positive_label:
            labels.append(1)
            seen.add(meta.subject)
        elif meta.label == cfg.negative_label:
            labels.append(0)
            seen.add(meta.subject)
        else:
            labels.append(-1)
            LOG.info("%s has label %r (not %s/%s): embedded, not classified", meta.key,
                     meta.label, cfg.positive_label, cfg.negative_label)
    n_pos, n_neg = labels.count(1), labels.count(0)
    if n_pos < 2 or n_neg < 2:
        raise DataError(
            f"Only {n_pos} {cfg.positive_label} and {n_neg} {cfg.negative_label} subjects have "
            f"all modalities; classification needs at least 2 of each (check --label-column, "
            f"--positive-label and --negative-label against participants.tsv)."
        )
    return Manifest(files=[str(f) for f in files], keys=[m.key for m in metas], labels=labels,
                    modalities=list(full))


def unit_name(method: str, latent_dim: int, seed: int, fold: int | None = None) -> str:
    """A stable name for a unit's folders: ``vae_L128_seed0_fold3``."""
    name = f"{method}_L{latent_dim}_seed{seed}"
    return name if fold is None else f"{name}_fold{fold}"


def _fold(manifest: Manifest, cfg: Config, seed: int, fold: int):
    from vaefusion.folds import make_folds

    return make_folds(manifest.y(), cfg.folds, seed, cfg.val_fraction)[fold]


def embed_groups(model, files: list[str], device, downsample: int) -> dict[int, np.ndarray]:
    """Posterior means of every subject, embedding subjects with equal modality counts together.

    Returns ``{subject index: (n_modalities, latent_dim)}``.
    """
    from vaefusion.training import embed

    by_count: dict[int, list[int]] = {}
    for i, f in enumerate(files):
        by_count.setdefault(len(read_meta(Path(f)).modalities), []).append(i)
    out: dict[int, np.ndarray] = {}
    for idx in by_count.values():
        mu = embed(model, [Path(files[i]) for i in idx], device, downsample)
        out.update(zip(idx, mu, strict=True))
    return out


def run_vae_fold(cfg: Config, manifest: Manifest, latent_dim: int, seed: int, fold: int,
                 train_root: Path, out_dir: Path) -> dict[str, Any]:
    """Train the fold's VAE on its train subjects (validation for model selection), embed
    every subject with it, and score the SVM on the fold's test subjects.

    The model and the latents are saved under ``out_dir``; training checkpoints live in
    ``train_root`` so that a killed run resumes whatever the workflow engine does.
    """
    from vaefusion.classify import choose_backend, evaluate_fold, modality_importance
    from vaefusion.model import save_model
    from vaefusion.training import clear_checkpoint, train_vae

    cls = manifest.classified
    f = _fold(manifest, cfg, seed, fold)
    files = [Path(p) for p in manifest.files]
    name = unit_name("vae", latent_dim, seed, fold)
    LOG.info("%s: training on %d subjects (validation %d), testing on %d", name, f.train.size,
             f.val.size, f.test.size)
    result = train_vae(cfg, latent_dim, seed, [files[cls[i]] for i in f.train],
                       [files[cls[i]] for i in f.val], train_root / name)
    mus = embed_groups(result.model, manifest.files, result.device, cfg.downsample)
    features = np.stack([mus[i] for i in cls]).reshape(cls.size, -1)
    backend = choose_backend()
    metrics = evaluate_fold(features, manifest.y(), f, backend)
    importance = modality_importance(metrics.weights, len(manifest.modalities), latent_dim)

    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = out_dir / "model"
    save_model(result.model, model_dir, {
        **result.meta, "modalities": manifest.modalities, "fold": fold, "seed": seed,
        "train_subjects": [manifest.keys[cls[i]] for i in f.train],
        "val_subjects": [manifest.keys[cls[i]] for i in f.val],
        "test_subjects": [manifest.keys[cls[i]] for i in f.test],
    })
    latents = out_dir / "latents.npz"
    np.savez(latents, **{manifest.keys[i]: mu for i, mu in mus.items()})
    clear_checkpoint(train_root / name)
    LOG.info("%s: ROC-AUC %.3f (best epoch %d of %d)", name, metrics.roc_auc, result.best_epoch,
             result.epochs_run)
    return {
        "method": "vae", "latent_dim": latent_dim, "seed": seed, "fold": fold,
        "roc_auc": metrics.roc_auc, "n_train": metrics.n_train, "n_test": metrics.n_test,
        "backend": metrics.backend, "available": True,
        "test_subjects": [manifest.keys[cls[i]] for i in f.test],
        "test_labels": manifest.y()[f.test].tolist(),
        "decision": metrics.decision.tolist(),
        "importance": importance.tolist(),
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "best_val_loss": result.best_val_loss, "stopped_early": result.stopped_early,
        "device": str(result.device),
        "history": [asdict(h) for h in result.history],
        "model_dir": str(model_dir), "latents": str(latents),
    }


def gram_cache_path(cache_dir: Path, files: list[Path]) -> Path:
    """Where the Gram matrices of exactly these cached subjects (and versions) are kept.

    The name hashes each file's path, size and mtime, so another selection of subjects, or a
    re-preprocessed subject, never reuses stale Grams.
    """
    digest = hashlib.sha1()
    for f in files:
        st = Path(f).stat()
        digest.update(f"{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return Path(cache_dir) / f"grams-{digest.hexdigest()[:16]}.npy"


def run_pca_baseline(cfg: Config, manifest: Manifest, method: str, latent_dim: int,
                     seed: int, cache_dir: Path | None = None) -> list[dict[str, Any]]:
    """One PCA baseline over all folds of ``seed``; one result dict per fold.

    Not-available (more components than training samples) gives one dict per fold with
    ``available: False`` and ``roc_auc: NaN``: the paper's "X".
    """
    from vaefusion.baselines import (
        NotAvailable,
        brain_mask,
        cache_loader,
        evaluate_pca_baselines,
        modality_grams,
    )
    from vaefusion.cache import load_stack
    from vaefusion.classify import choose_backend
    from vaefusion.folds import make_folds

    cls = manifest.classified
    files = [Path(manifest.files[i]) for i in cls]
    y = manifest.y()
    folds = make_folds(y, cfg.folds, seed, cfg.val_fraction)
    mask = brain_mask(load_stack(p) for p in files)
    load = cache_loader(files, mask)
    grams = None
    gram_cache = gram_cache_path(cache_dir, files) if cache_dir is not None else None
    if method != "pca-shared":
        # the Gram matrices do not depend on fold, seed or latent dim: share them on disk
        if gram_cache is not None and gram_cache.exists():
            grams = np.load(gram_cache)
        else:
            grams = modality_grams(load, len(files))
            if gram_cache is not None:
                atomic_save_npy(gram_cache, grams)
    backend = choose_backend()
    result = evaluate_pca_baselines(method, load, y, folds, latent_dim, backend, grams=grams,
                                    seed=seed)
    rows = []
    for f in folds:
        base = {"method": method, "latent_dim": latent_dim, "seed": seed, "fold": f.index,
                "n_train": int(f.fit.size), "n_test": int(f.test.size), "backend": backend,
                "test_subjects": [manifest.keys[cls[i]] for i in f.test],
                "test_labels": y[f.test].tolist()}
        if isinstance(result, NotAvailable):
            rows.append({**base, "available": False, "roc_auc": float("nan"), "decision": []})
        else:
            m = result[f.index]
            rows.append({**base, "available": True, "roc_auc": m.roc_auc,
                         "decision": m.decision.tolist()})
    if isinstance(result, NotAvailable):
        LOG.info("%s with %d components: not available (%s)", method, latent_dim, result)
    return rows
