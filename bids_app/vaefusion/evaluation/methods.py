"""The methods compared at the group level, registered by name (``--methods``).

Every method follows one protocol on the folds of :mod:`vaefusion.evaluation.folds`: it is fitted
on a fold's unsupervised fit set (the fold's training subjects), embeds every subject, and the
classifier of :mod:`vaefusion.evaluation.classifier` scores the features (the same for every
method). A :class:`Method` says what its features are (:meth:`Method.describe`), how much
memory one unit needs (:meth:`Method.memory_need`) and how it runs: one workflow branch per
fold (``per_fold``: the VAE, a training each) or one per K-fold repeat over all folds (a
:class:`Baseline`, whose :meth:`Baseline.features` fits and embeds).

A new baseline is one module with a :class:`Baseline` subclass plus one registration line
here, by path (``METHODS.register_at("my-method", "vaefusion.evaluation.my_method:MyMethod")``:
the module imports :class:`Baseline` from here, so this module must not import it back): the
CLI choices, the Boutiques enum (checked against them), the memory estimate, the workflow's
nodes and the report read this registry.

The heavy modules (numpy, torch) are imported where a method runs, so that the CLI can list
the names cheaply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from vaefusion.evaluation.memory import MemoryNeed, UnitSizes, gram_pca_need, shared_pca_need
from vaefusion.model.registry import Registry, Variant

if TYPE_CHECKING:
    import numpy as np

    from vaefusion.config import Config, Runtime
    from vaefusion.evaluation.baselines import NotAvailable, SubjectArrays
    from vaefusion.evaluation.classifier import FoldMetrics, Protocol
    from vaefusion.evaluation.folds import Fold
    from vaefusion.evaluation.manifest import Manifest
    from vaefusion.evaluation.results import FoldResult

LOG = logging.getLogger("vaefusion.crossval")

#: One subject's volumes as an (n_modalities, n_voxels) array, by index.
Loader = Callable[[int], "np.ndarray"]


class Method(Variant):
    """A method of the comparison. Class attributes: ``name`` (``--methods``, file names),
    ``per_fold`` (one unit per fold rather than per repeat), ``encoder`` (a trained network
    whose results carry its training record, saved models, latents and the importance of each
    modality's latent features: what the interpretation and the reports read), ``colour``
    (the report's figures)."""

    per_fold: ClassVar[bool] = False
    encoder: ClassVar[bool] = False
    colour: ClassVar[str] = "grey"

    def describe(self, latent_dim: int, n_modalities: int) -> str:
        """Its features, in words."""
        raise NotImplementedError

    def memory_need(self, sizes: UnitSizes) -> MemoryNeed:
        """What one unit needs (``evaluation/memory.py``)."""
        raise NotImplementedError

    def memory_fix(self, selected: Sequence[str]) -> str:
        """What to change when one unit does not fit (``selected``: ``--methods``)."""
        return f"raise --downsample, or leave {self.name} out (--methods)"

    def run_fold(self, cfg: Config, runtime: Runtime, manifest: Manifest, latent_dim: int,
                 seed: int, repeat: int, fold: int, train_root: Path, out_dir: Path,
                 on_epoch_end: Callable[[Any], None] | None = None) -> FoldResult:
        """One fold's unit (a ``per_fold`` method): fit, embed and classify; files under
        ``out_dir``, resumable state under ``train_root``."""
        raise NotImplementedError(f"{self.name} runs one unit per repeat")

    def run_repeat(self, cfg: Config, runtime: Runtime, manifest: Manifest, latent_dim: int,
                   seed: int, repeat: int = 0, cache_dir: Path | None = None
                   ) -> list[FoldResult]:
        """One repeat's unit over all its folds (not ``per_fold``); one result per fold."""
        raise NotImplementedError(f"{self.name} runs one unit per fold")


METHODS: Registry[Method] = Registry("method")


# --------------------------------------------------------------------------- the VAE
class VAEMethod(Method):
    """The shared VAE: trained per fold, embedded by posterior means."""

    name = "vae"
    per_fold = True
    encoder = True
    colour = "#d62728"

    def describe(self, latent_dim: int, n_modalities: int) -> str:
        return (f"the posterior means of the shared VAE: {latent_dim} per modality, "
                f"{latent_dim * n_modalities} in all")

    def memory_need(self, sizes: UnitSizes) -> MemoryNeed:
        from vaefusion.evaluation.memory import vae_need

        s = sizes
        return vae_need(s.n_fit * s.n_modalities, s.batch_subjects * s.n_modalities, s.grid,
                        s.width, s.latent_dim, s.data_budget, s.cuda, s.downsample == 1)

    def memory_fix(self, selected: Sequence[str]) -> str:
        return "lower --width or --batch-subjects, or raise --downsample"

    def run_fold(self, cfg, runtime, manifest, latent_dim, seed, repeat, fold, train_root,
                 out_dir, on_epoch_end=None):
        """Train, embed and classify one fold
        (:func:`~vaefusion.evaluation.crossval.run_vae_fold`)."""
        from vaefusion.evaluation.crossval import run_vae_fold

        return run_vae_fold(cfg, runtime, manifest, latent_dim, seed, repeat, fold,
                            train_root, out_dir, on_epoch_end)


# --------------------------------------------------------------------------- baselines
class Baseline(Method):
    """A method fitted and embedded in one call per fold, on the cached stacks at the VAE's
    grid inside the brain mask (one unit per repeat, over all its folds). ``uses_grams``:
    its features come from the per-modality Gram matrices, which the unit computes once (and
    caches on disk) for all folds."""

    uses_grams: ClassVar[bool] = False

    def limit(self, n_fit: int, n_modalities: int, n_voxels: int) -> int | None:
        """Most features per modality it can have with ``n_fit`` subjects (None: no limit)."""
        return None

    def features(self, load: Loader, n_subjects: int, fit_idx: np.ndarray, latent_dim: int,
                 *, grams: np.ndarray | None = None, seed: int = 0,
                 standardise: bool = False) -> np.ndarray:
        """Fitted on subjects ``fit_idx`` only, the features of all ``n_subjects``
        ``(n_subjects, n_features)``; ``seed`` drives any randomness; ``standardise``: the
        VAE standardises every voxel by its modality's training statistics (a method that is
        the VAE's linear twin does the same)."""
        raise NotImplementedError

    def memory_need(self, sizes: UnitSizes) -> MemoryNeed:
        return MemoryNeed(self.name, 0, sizes.data_bytes(), "the subjects' arrays")

    def evaluate(self, subject_arrays: SubjectArrays, labels: np.ndarray,
                 folds: Sequence[Fold], latent_dim: int, backend: str, *,
                 grams: np.ndarray | None = None, seed: int = 0, svm_c: float | None = None,
                 partition_seed: int = 0, standardise: bool = False,
                 protocol: Protocol | None = None) -> list[FoldMetrics] | NotAvailable:
        """Per-fold SVM metrics, or a :class:`~vaefusion.evaluation.baselines.NotAvailable`
        (returned, not raised) when ``latent_dim`` exceeds :meth:`limit` in any fold.

        ``svm_c``, ``partition_seed`` and ``protocol`` go to the classifier
        (:func:`vaefusion.evaluation.classifier.evaluate_fold`), as for the VAE.
        """
        from vaefusion.evaluation.baselines import NotAvailable, as_loader, modality_grams
        from vaefusion.evaluation.classifier import evaluate_fold
        from vaefusion.evaluation.folds import check_labels

        y = check_labels(labels)
        load = as_loader(subject_arrays, y.size)
        n_mod, n_vox = load(0).shape
        for fold in folds:  # before reading any data: "not available" is decided by sizes alone
            limit = self.limit(fold.train.size, n_mod, n_vox)
            if limit is not None and latent_dim > limit:
                return NotAvailable(self.name, latent_dim, limit)
        if self.uses_grams and grams is None:
            grams = modality_grams(load, y.size)
        metrics = []
        for fold in folds:
            # the unsupervised part on the VAE's subjects (the fold's training subjects, not its
            # validation subjects, which only select the VAE's epoch); the classifier then uses
            # train + validation for every method alike
            features = self.features(load, y.size, fold.train, latent_dim, grams=grams,
                                     seed=seed, standardise=standardise)
            metrics.append(evaluate_fold(features, y, fold, backend, svm_c, partition_seed,
                                         protocol))
        return metrics

    def run_repeat(self, cfg, runtime, manifest, latent_dim, seed, repeat=0, cache_dir=None):
        """All folds of K-fold repeat ``repeat``; one result per fold.

        The data are the VAE's (the cached stacks at ``--downsample``), the folds and the
        classifier protocol too. Not-available (more components than training samples) gives
        one result per fold with ``available=False``, ``roc_auc`` NaN and the reason: the
        paper's "X". ``cache_dir`` keeps the Gram matrices, shared by every such baseline.
        """
        import numpy as np

        from vaefusion.disk.io import atomic_save_npy
        from vaefusion.evaluation.baselines import (
            NotAvailable,
            brain_mask,
            cache_loader,
            load_at_grid,
            modality_grams,
            preloaded,
        )
        from vaefusion.evaluation.classifier import choose_backend
        from vaefusion.evaluation.crossval import (
            classification_protocol,
            gram_cache_path,
            grid_text,
            partition,
        )
        from vaefusion.evaluation.folds import partition_seed
        from vaefusion.evaluation.results import FoldResult
        from vaefusion.training.device import configure_threads

        configure_threads(runtime.threads)
        cls = manifest.classified
        files = [Path(manifest.files[i]) for i in cls]
        y = manifest.y()
        folds = partition(manifest, cfg, repeat)
        grid = grid_text(load_at_grid(files[0], cfg.downsample).shape[1:])
        mask = brain_mask(load_at_grid(p, cfg.downsample) for p in files)
        # nprocs units may hold their data at once: the runtime's budget is already per process
        load = preloaded(cache_loader(files, mask, cfg.downsample), len(files),
                         runtime.data_budget_bytes)
        grams = None
        gram_cache = (gram_cache_path(cache_dir, files, cfg.downsample) if cache_dir is not None
                      else None)
        if self.uses_grams:
            # the Gram matrices do not depend on fold, seed or latent dim: share them on disk
            if gram_cache is not None and gram_cache.exists():
                grams = np.load(gram_cache)
            else:
                grams = modality_grams(load, len(files))
                if gram_cache is not None:
                    atomic_save_npy(gram_cache, grams)
        backend = choose_backend("auto" if runtime.device == "cuda" else "sklearn")
        result = self.evaluate(load, y, folds, latent_dim, backend, grams=grams, seed=seed,
                               svm_c=cfg.svm_c, partition_seed=partition_seed(cfg.cv_seed, repeat),
                               standardise=cfg.objective().scaling.per_modality,
                               protocol=classification_protocol(cfg, manifest, repeat))
        rows = []
        for f in folds:
            m = None if isinstance(result, NotAvailable) else result[f.index]
            rows.append(FoldResult(
                method=self.name, latent_dim=latent_dim, seed=seed, fold=f.index,
                roc_auc=float("nan") if m is None else m.roc_auc, n_train=int(f.fit.size),
                n_test=int(f.test.size), backend=backend, repeat=repeat,
                svm_c=None if m is None else m.c, grid=grid, available=m is not None,
                reason=str(result) if m is None else None,
                test_subjects=[manifest.keys[cls[i]] for i in f.test],
                test_labels=y[f.test].tolist(), decision=[] if m is None else m.decision.tolist(),
                null_auc=[] if m is None else m.null_auc.tolist()))
        if isinstance(result, NotAvailable):
            LOG.info("%s with %d components: not available (%s)", self.name, latent_dim, result)
        return rows


class GramPCA(Baseline):
    """An exact PCA from the subjects' Gram matrices."""

    uses_grams = True

    def memory_need(self, sizes: UnitSizes) -> MemoryNeed:
        return gram_pca_need(self.name, sizes)

    def memory_fix(self, selected: Sequence[str]) -> str:
        gram = [m for m in METHODS if getattr(METHODS.get(m), "uses_grams", False)]
        keep = " ".join(m for m in selected if m not in gram)
        return (f"raise --downsample, or leave {' and '.join(gram)} out "
                f"(--methods {keep or 'vae'})")


class PCAEarly(GramPCA):
    """``pca-early``: a subject's volumes concatenated into one vector; one PCA over subjects."""

    name = "pca-early"
    colour = "#1f77b4"

    def describe(self, latent_dim: int, n_modalities: int) -> str:
        return f"{latent_dim} scores of one PCA of the concatenated volumes"

    def limit(self, n_fit: int, n_modalities: int, n_voxels: int) -> int | None:
        return min(n_fit, n_modalities * n_voxels)

    def features(self, load, n_subjects, fit_idx, latent_dim, *, grams=None, seed=0,
                 standardise=False):
        from vaefusion.evaluation.baselines import gram_pca_scores

        grams = _checked_grams(load, n_subjects, grams)
        return gram_pca_scores(grams.sum(axis=0), fit_idx, latent_dim)


class PCALate(GramPCA):
    """``pca-late``: one PCA per modality over subjects, ``l`` components each."""

    name = "pca-late"
    colour = "#2ca02c"

    def describe(self, latent_dim: int, n_modalities: int) -> str:
        return (f"{latent_dim} scores of one PCA per modality, {latent_dim * n_modalities} "
                f"in all")

    def limit(self, n_fit: int, n_modalities: int, n_voxels: int) -> int | None:
        return min(n_fit, n_voxels)

    def features(self, load, n_subjects, fit_idx, latent_dim, *, grams=None, seed=0,
                 standardise=False):
        import numpy as np

        from vaefusion.evaluation.baselines import gram_pca_scores

        grams = _checked_grams(load, n_subjects, grams)
        return np.concatenate([gram_pca_scores(g, fit_idx, latent_dim) for g in grams], axis=1)


class PCAShared(Baseline):
    """``pca-shared``: one PCA over all volumes of the training subjects as samples, ``l``
    components shared by the modalities (the VAE's linear counterpart), by randomized SVD."""

    name = "pca-shared"
    colour = "#9467bd"

    def describe(self, latent_dim: int, n_modalities: int) -> str:
        return (f"{latent_dim} scores per modality of one PCA shared by the modalities, "
                f"{latent_dim * n_modalities} in all")

    def limit(self, n_fit: int, n_modalities: int, n_voxels: int) -> int | None:
        return min(n_fit * n_modalities, n_voxels)

    def features(self, load, n_subjects, fit_idx, latent_dim, *, grams=None, seed=0,
                 standardise=False):
        # the VAE's linear twin sees what the network sees: with voxelwise scaling, every
        # volume standardised by its modality's training mean and SD maps
        from vaefusion.evaluation.baselines import shared_pca_scores

        return shared_pca_scores(load, n_subjects, fit_idx, latent_dim, seed=seed,
                                 voxelwise=standardise)

    def memory_need(self, sizes: UnitSizes) -> MemoryNeed:
        return shared_pca_need(self.name, sizes)


def _checked_grams(load: Loader, n_subjects: int, grams: np.ndarray | None) -> np.ndarray:
    from vaefusion.evaluation.baselines import modality_grams

    if grams is None:
        grams = modality_grams(load, n_subjects)
    n_mod = load(0).shape[0]
    if grams.shape != (n_mod, n_subjects, n_subjects):
        raise ValueError(f"grams {grams.shape} do not match {n_mod} modalities, {n_subjects}")
    return grams


#: The method every baseline is compared with (evaluation/summary.py).
REFERENCE = VAEMethod.name


def is_encoder(method: str) -> bool:
    """Whether ``method`` is a registered encoder (:attr:`Method.encoder`: the VAE)."""
    return method in METHODS and METHODS.get(method).encoder


def selected_methods(names: Sequence[str]) -> list[Method]:
    """The methods of ``--methods`` (also from a configuration file); an unknown name is a
    usage error."""
    from vaefusion.errors import UsageError

    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise UsageError(f"--methods got {' '.join(bad) or 'nothing'}; choose from "
                         f"{' '.join(METHODS)}.")
    return [METHODS.get(m) for m in names]


# the registration lines: one per method
METHODS.register(VAEMethod)
METHODS.register(PCAEarly)
METHODS.register(PCALate)
METHODS.register(PCAShared)
METHODS.register_at("pca-gmv", "vaefusion.evaluation.gmv_only:PCAGMV")
