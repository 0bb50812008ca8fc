"""The group summary as a type: :class:`GroupSummary`, built once from the typed results by
:func:`summarize_group` and serialised in one place (:meth:`GroupSummary.to_dict`, the bytes of
``group/summary.json``; :meth:`GroupSummary.from_dict` reads the file back).

The headline numbers use the first ``--latent-dim`` value (the primary setting) and average
over the folds of every repeat and seed, with the 95% CI of the corrected resampled t and the
paired comparisons of the VAE with each baseline; the full sweep is in the TSVs. Choosing the
best latent dim or seed after seeing test AUCs would be optimistic, so it is never done.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from vaefusion import __version__
from vaefusion.config import Config
from vaefusion.evaluation.manifest import Manifest
from vaefusion.evaluation.methods import is_encoder
from vaefusion.evaluation.results import FoldResult
from vaefusion.evaluation.summary import importance_summary, vae_diagnostics


@dataclass(frozen=True)
class MethodSummary:
    """One method at the primary latent dim; ``diagnostics`` are an encoder's learning
    figures (fold means of :data:`vaefusion.evaluation.summary.VAE_DIAGNOSTICS`)."""

    roc_auc_mean: float | None
    roc_auc_std: float | None
    roc_auc_ci: list[float] | None
    latent_dim: int
    n_folds: int
    n_repeats: int
    seeds: list[int]
    available: bool
    grid: str | None
    reason: str | None = None
    # one-sided label-permutation p of roc_auc_mean (None: no permutation null was run)
    permutation_p: float | None = None
    diagnostics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("reason", "diagnostics")}
        if self.reason:
            out["reason"] = self.reason
        out.update(self.diagnostics)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodSummary:
        known = {f.name for f in dataclasses.fields(cls)} - {"diagnostics"}
        return cls(**{k: v for k, v in data.items() if k in known},
                   diagnostics={k: v for k, v in data.items() if k not in known})


@dataclass(frozen=True)
class Comparison:
    """The reference method minus a baseline over the same resamples (paired)."""

    method: str
    baseline: str
    latent_dim: int
    n_pairs: int
    mean_difference: float
    ci: list[float]
    p_value: float


@dataclass(frozen=True)
class ImportanceShare:
    """One modality's share of the SVM's |weights|: mean and std over the encoder's folds."""

    modality: str
    domain: str
    mean: float
    std: float


@dataclass(frozen=True)
class GroupSummary:
    """Everything ``group/summary.json`` holds, in its order."""

    methods: dict[str, MethodSummary]
    comparisons: list[Comparison]
    importance: list[ImportanceShare]  # most important first
    n_subjects: int
    n_classified: int
    n_positive: int
    n_negative: int
    labels: dict[str, str]
    folds: int
    latent_dims: list[int]
    seeds: list[int]
    cv_seed: int
    cv_repeats: int
    svm_c: float | None  # None: C chosen per fold by inner cross-validation over svm_c_grid
    svm_c_grid: list[float]
    classifier_backend: str | list[str]
    device: list[str] | None
    vaefusion_version: str
    # what else the numbers depend on (seeds and backend above): the software versions
    software: dict[str, str] = field(default_factory=dict)
    # the partition (--cv-groups: test folds of whole groups of that participants.tsv column)
    cv_groups: str | None = None
    partition: str = ""
    # the classifier of every method (--classifier) and the label permutations of its null
    classifier: str = "svm"
    permutations: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (the one serialisation)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["methods"] = {m: info.to_dict() for m, info in self.methods.items()}
        out["comparisons"] = [dataclasses.asdict(c) for c in self.comparisons]
        out["importance"] = [dataclasses.asdict(i) for i in self.importance]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupSummary:
        """The inverse of :meth:`to_dict` (a ``summary.json`` read back)."""
        data = dict(data)
        return cls(**{**data,
                      "methods": {m: MethodSummary.from_dict(i)
                                  for m, i in data["methods"].items()},
                      "comparisons": [Comparison(**c) for c in data["comparisons"]],
                      "importance": [ImportanceShare(**i) for i in data["importance"]]})


def verdict(comparisons: list[Comparison]) -> str:
    """One plain sentence: does the VAE beat each baseline, by the paired 95% CI (a summary's
    ``comparisons``)? (The console of vaefusion-demo and the top of the group report say
    it.)"""
    wins, ties, losses = [], [], []
    for comp in comparisons:
        lo, hi = comp.ci
        (wins if lo > 0 else losses if hi < 0 else ties).append(comp)
    if not (wins or ties or losses):
        return "The VAE was not compared with a baseline."

    def names(comps: list[Comparison]) -> str:
        return ", ".join(c.baseline for c in comps)

    parts = []
    if wins:
        parts.append(f"beats {names(wins)}")
    if losses:
        parts.append(f"is worse than {names(losses)}")
    if ties:
        diffs = ", ".join(f"{c.mean_difference:+.2f} against {c.baseline}" for c in ties)
        parts.append(f"is not shown to differ from {names(ties)} (mean AUC difference {diffs}; "
                     "the 95% CI of each paired difference includes 0)")
    return "On this dataset the VAE " + "; ".join(parts) + "."


def format_auc(info: MethodSummary) -> str:
    """A summary entry as text: ``0.812 [0.701, 0.923] (SD 0.050 over 10 folds)``."""
    if info.roc_auc_mean is None:
        return f"not available ({info.reason})" if info.reason else "not available"
    ci = info.roc_auc_ci
    ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    return (f"{info.roc_auc_mean:.3f}{ci_text} (SD {info.roc_auc_std:.3f} over "
            f"{info.n_folds} folds)")


def _permutation_p(observed: float, results: list[FoldResult]) -> float | None:
    """The permutation p of a mean fold AUC: each permutation's null AUC averaged over the same
    folds (every fold and seed used the same permutations), against the observed mean."""
    import numpy as np

    from vaefusion.evaluation.statistics import permutation_p

    nulls = [r.null_auc for r in results if r.available and r.null_auc]
    if not nulls or math.isnan(observed) or len({len(n) for n in nulls}) != 1:
        return None
    with warnings.catch_warnings():  # a permutation with no finite fold AUC is NaN, skipped
        warnings.simplefilter("ignore", RuntimeWarning)
        null_means = np.nanmean(np.asarray(nulls, dtype=np.float64), axis=0)
    p = permutation_p(observed, null_means)
    return None if math.isnan(p) else p


def _number(value: float) -> float | None:
    """JSON has no NaN: a missing number is null."""
    return None if math.isnan(value) else value


def summarize_group(cfg: Config, manifest: Manifest, results: list[FoldResult],
                    table: list[dict[str, Any]], comps: list[dict[str, Any]],
                    software: dict[str, str]) -> GroupSummary:
    """The summary of the sorted ``results``, from their AUC table (:func:`auc_table`) and
    comparisons (:func:`comparisons`) of :mod:`vaefusion.evaluation.summary`."""
    from vaefusion.evaluation.classifier import SVM_C_GRID
    from vaefusion.evaluation.folds import describe_partition

    primary = cfg.latent_dims[0]
    methods: dict[str, MethodSummary] = {}
    for row in table:
        if row["latent_dim"] != primary:
            continue
        rs = [r for r in results if (r.method, r.latent_dim) == (row["method"], primary)]
        reasons = sorted({r.reason for r in rs if r.reason})
        methods[row["method"]] = MethodSummary(
            roc_auc_mean=_number(row["roc_auc_mean"]),
            roc_auc_std=_number(row["roc_auc_std"]),
            roc_auc_ci=(None if math.isnan(row["ci_low"]) else [row["ci_low"], row["ci_high"]]),
            latent_dim=primary, n_folds=row["n_folds"], n_repeats=row["n_repeats"],
            seeds=cfg.seeds, available=row["available"], grid=rs[0].grid,
            reason="; ".join(reasons) if reasons else None,
            permutation_p=_permutation_p(row["roc_auc_mean"], rs),
            diagnostics=(vae_diagnostics(results, primary) if is_encoder(row["method"])
                         else {}))
    backends = sorted({r.backend for r in results})
    devices = sorted({r.training.device for r in results
                      if is_encoder(r.method) and r.training is not None})
    return GroupSummary(
        methods=methods,
        comparisons=[Comparison(c["method"], c["baseline"], c["latent_dim"], c["n_pairs"],
                                c["mean_difference"], [c["ci_low"], c["ci_high"]],
                                c["p_value"])
                     for c in comps if c["latent_dim"] == primary],
        importance=[ImportanceShare(**i)
                    for i in importance_summary(results, manifest.modalities, primary)],
        n_subjects=len(manifest.files), n_classified=int(manifest.classified.size),
        n_positive=int((manifest.y() == 1).sum()), n_negative=int((manifest.y() == 0).sum()),
        labels={"positive": cfg.positive_label, "negative": cfg.negative_label},
        folds=cfg.folds, latent_dims=cfg.latent_dims, seeds=cfg.seeds, cv_seed=cfg.cv_seed,
        cv_repeats=cfg.cv_repeats, svm_c=cfg.svm_c, svm_c_grid=list(SVM_C_GRID),
        classifier_backend=backends[0] if len(backends) == 1 else backends,
        device=devices or None, vaefusion_version=__version__, software=software,
        cv_groups=cfg.cv_groups,
        partition=describe_partition(cfg.folds, cfg.cv_repeats, cfg.cv_groups,
                                     len({g for g in manifest.groups or [] if g})),
        classifier=cfg.classifier, permutations=cfg.permutations)
