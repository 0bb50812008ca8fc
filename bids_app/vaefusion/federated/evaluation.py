"""Federated evaluation: pooled standardisation, a federated logistic regression, ROC-AUC.

The classifier: L2-regularised logistic regression with balanced class weights and C = 1 on
standardized features (scikit-learn's ``LogisticRegression(C=1, class_weight="balanced")``
objective), fitted by L-BFGS on the server from the sites' summed loss gradients, one federated
round per evaluation of the objective. Why not the centralised app's linear SVM: the hinge
loss is not differentiable, so a federated solver would need many more rounds, while the
logistic loss gives the same kind of linear decision rule with gradients that sum over sites
exactly. Why not an average of local solutions: a site with few subjects, or with one class
only in a fold, fits a poor or no model, and averaged solutions are not the pooled optimum;
federated gradients reach the pooled optimum (``tests/test_federated.py`` checks it against
scikit-learn on pooled data).

Fits, all run together in the same rounds:

* ``loso:<site>``: trained on every other site, scored on ``<site>`` (leave-one-site-out);
* ``kfold:<k>``: every site splits its labelled subjects into the same number of stratified
  folds; trained on every site's subjects outside fold ``k``, scored on fold ``k``. It runs only
  when every site has enough subjects (:func:`kfold_possible`).

A held-out part's ROC-AUC is computed at its site from the Mann-Whitney count ``u``; the server
adds counts: a site's AUC over its folds and the pooled AUC are ``sum(u) / sum(P * N)``, the
site-stratified AUC (pairs of a patient and a control of the same site and fold), because
comparing scores across sites would need the scores themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from vaefusion.errors import DataError
from vaefusion.federated.messages import (
    FitGradient,
    FitParams,
    PartMoments,
    PartScore,
    SiteInfo,
    SiteMoments,
)
from vaefusion.federated.settings import MIN_AGGREGATE_SUBJECTS

#: L-BFGS gradient tolerance on the normalised objective (largest absolute component).
GTOL = 1e-6


# --------------------------------------------------------------------------- plan
def loso_fit(site: str) -> str:
    return f"loso:{site}"


def kfold_fit(k: int) -> str:
    return f"kfold:{k}"


def fold_part(k: int) -> str:
    return f"fold{k}"


def kfold_possible(infos: Sequence[SiteInfo], folds: int) -> str | None:
    """Why the within-site K-fold cannot run (None when it can).

    Every site needs at least ``folds`` patients and ``folds`` controls (each test fold holds
    both) and ``MIN_AGGREGATE_SUBJECTS * folds`` labelled subjects (each fold is an aggregate).
    """
    if folds < 2:
        return "--folds 0: leave-one-site-out only"
    short = [i.site for i in infos
             if min(i.n_positive, i.n_negative) < folds
             or i.n_positive + i.n_negative < MIN_AGGREGATE_SUBJECTS * folds]
    if short:
        return (f"{', '.join(short)} ha{'s' if len(short) == 1 else 've'} too few subjects for "
                f"{folds} within-site folds (each site needs {folds} patients, {folds} "
                f"controls and {MIN_AGGREGATE_SUBJECTS * folds} labelled subjects); lower "
                f"--folds")
    return None


def fit_names(sites: Sequence[str], folds: int) -> list[str]:
    """Every evaluation fit of a run: leave-one-site-out (2+ sites), then the K folds."""
    names = [loso_fit(s) for s in sites] if len(sites) >= 2 else []
    return names + [kfold_fit(k) for k in range(folds)]


# --------------------------------------------------------------------------- site side
class SiteEvaluator:
    """One site's features and labels, and what it may say about them.

    ``features`` is ``(n, n_features)`` of the site's labelled subjects, ``labels`` 0/1. Every
    method returns aggregates over at least :data:`MIN_AGGREGATE_SUBJECTS` subjects, counts or
    metrics; nothing per subject.
    """

    def __init__(self, site: str, features: np.ndarray, labels: np.ndarray, folds: int,
                 seed: int) -> None:
        self.site = site
        self.x = np.asarray(features, dtype=np.float64)
        self.y = np.asarray(labels).astype(int)
        self.folds = int(folds)
        self.fold_of = np.zeros(self.y.size, dtype=int)
        if self.folds >= 2:
            skf = StratifiedKFold(self.folds, shuffle=True, random_state=seed)
            for k, (_, test) in enumerate(skf.split(self.x, self.y)):
                self.fold_of[test] = k

    def _guard(self, mask: np.ndarray, what: str) -> None:
        n = int(mask.sum())
        if 0 < n < MIN_AGGREGATE_SUBJECTS:
            raise DataError(f"site {self.site} would send an aggregate of {what} over {n} "
                            f"subject(s), fewer than {MIN_AGGREGATE_SUBJECTS}; it refuses (the "
                            f"values could be recovered). Lower --folds or add subjects.")

    def parts(self) -> list[tuple[str, np.ndarray]]:
        if self.folds >= 2:
            return [(fold_part(k), self.fold_of == k) for k in range(self.folds)]
        return [("all", np.ones(self.y.size, dtype=bool))]

    def moments(self) -> SiteMoments:
        out = []
        for name, mask in self.parts():
            self._guard(mask, f"part {name}")
            x, y = self.x[mask], self.y[mask]
            out.append(PartMoments(name, int(mask.sum()), int(y.sum()), int((1 - y).sum()),
                                   x.sum(axis=0), (x ** 2).sum(axis=0)))
        return SiteMoments(self.site, int(self.x.shape[1]), out)

    def train_mask(self, fit: str) -> np.ndarray | None:
        """The subjects this site contributes to training ``fit`` (None: none)."""
        kind, _, which = fit.partition(":")
        if kind == "loso":
            return None if which == self.site else np.ones(self.y.size, dtype=bool)
        return self.fold_of != int(which)

    def test_mask(self, fit: str) -> np.ndarray | None:
        """This site's held-out subjects of ``fit`` (None: none)."""
        kind, _, which = fit.partition(":")
        if kind == "loso":
            return np.ones(self.y.size, dtype=bool) if which == self.site else None
        return self.fold_of == int(which)

    def gradients(self, fits: Sequence[FitParams]) -> list[FitGradient]:
        out = []
        for p in fits:
            mask = self.train_mask(p.fit)
            if mask is None or not mask.any():
                continue
            self._guard(mask, f"the training subjects of {p.fit}")
            out.append(_logistic_gradient(p, self.x[mask], self.y[mask]))
        return out

    def scores(self, fits: Sequence[FitParams]) -> list[PartScore]:
        out = []
        for p in fits:
            mask = self.test_mask(p.fit)
            if mask is None or not mask.any():
                continue
            y = self.y[mask]
            n_pos, n_neg = int(y.sum()), int((1 - y).sum())
            u = float("nan")
            if n_pos and n_neg:
                u = float(roc_auc_score(y, decision(p, self.x[mask]))) * n_pos * n_neg
            out.append(PartScore(p.fit, n_pos, n_neg, u))
        return out


def decision(p: FitParams, x: np.ndarray) -> np.ndarray:
    """The fit's decision function on raw features (> 0 leans to patient)."""
    return ((x - p.mean) / p.scale) @ p.coef + p.intercept


def _logistic_gradient(p: FitParams, x: np.ndarray, y: np.ndarray) -> FitGradient:
    s = decision(p, x)
    c = np.where(y == 1, p.class_weight[1], p.class_weight[0])
    loss = np.logaddexp(0.0, -(2 * y - 1) * s)
    r = c * (1.0 / (1.0 + np.exp(-s)) - y)
    z = (x - p.mean) / p.scale
    return FitGradient(p.fit, int(y.size), float(c.sum()), float((c * loss).sum()),
                       z.T @ r, float(r.sum()))


# --------------------------------------------------------------------------- server side
@dataclass
class PooledStats:
    """Counts and sums of the training subjects of one fit, added over sites and parts."""

    n: int = 0
    n_positive: int = 0
    n_negative: int = 0
    total: np.ndarray | None = None
    total_sq: np.ndarray | None = None

    def add(self, part: PartMoments) -> None:
        self.n += part.n
        self.n_positive += part.n_positive
        self.n_negative += part.n_negative
        self.total = part.sum if self.total is None else self.total + part.sum
        self.total_sq = part.sum_sq if self.total_sq is None else self.total_sq + part.sum_sq

    def standardisation(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and population SD (as StandardScaler; a constant feature gets scale 1)."""
        assert self.total is not None and self.total_sq is not None
        mean = self.total / self.n
        var = np.maximum(self.total_sq / self.n - mean ** 2, 0.0)
        scale = np.sqrt(var)
        return mean, np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mean)), scale, 1.0)

    def class_weight(self) -> list[float]:
        """Balanced weights ``n / (2 n_class)``, as scikit-learn's ``class_weight="balanced"``."""
        return [self.n / (2.0 * self.n_negative), self.n / (2.0 * self.n_positive)]


def pool_moments(moments: Mapping[str, SiteMoments], fits: Sequence[str]
                 ) -> dict[str, PooledStats]:
    """The pooled training statistics of every fit from the sites' part moments."""
    pooled = {f: PooledStats() for f in fits}
    for site, m in sorted(moments.items()):
        for fit in fits:
            kind, _, which = fit.partition(":")
            for part in m.parts:
                held_out = (which == site) if kind == "loso" else (part.part == fold_part(
                    int(which)))
                if not held_out:
                    pooled[fit].add(part)
    return pooled


@dataclass
class FitState:
    """One fit's optimisation on the server."""

    name: str
    mean: np.ndarray
    scale: np.ndarray
    class_weight: list[float]
    c: float
    solver: object  # LBFGS over [coef..., intercept]
    n_train: int = 0

    def params(self, theta: np.ndarray | None = None) -> FitParams:
        theta = self.solver.ask() if theta is None else theta  # type: ignore[attr-defined]
        return FitParams(self.name, self.mean, self.scale, np.asarray(theta[:-1]),
                         float(theta[-1]), list(self.class_weight))

    def objective(self, parts: Sequence[FitGradient]) -> tuple[float, np.ndarray]:
        """The normalised objective ``sum(c l) / S + |w|^2 / (2 C S)`` and its gradient."""
        theta = self.solver.ask()  # type: ignore[attr-defined]
        w = theta[:-1]
        weight = sum(p.weight_sum for p in parts)
        loss = sum(p.loss for p in parts)
        grad = np.append(sum(p.grad_coef for p in parts), sum(p.grad_intercept for p in parts))
        reg = self.c * weight
        f = loss / weight + float(w @ w) / (2 * reg)
        g = grad / weight
        g[:-1] += w / reg
        return f, g


@dataclass
class AUCResult:
    """Per-site and pooled (site-stratified) ROC-AUC of one evaluation scheme."""

    scheme: str  # "leave_one_site_out" or "within_site_kfold"
    pooled_auc: float | None
    per_site: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    folds: int | None = None
    skipped: str | None = None  # why the scheme did not run

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"pooled_auc": self.pooled_auc, "per_site": self.per_site}
        if self.folds is not None:
            out["folds"] = self.folds
        if self.skipped:
            out["skipped"] = self.skipped
        return out


def auc_from_scores(scheme: str, scores: Mapping[str, Sequence[PartScore]],
                    prefix: str, folds: int | None = None) -> AUCResult:
    """Add the Mann-Whitney counts of the parts whose fit starts with ``prefix``."""
    per_site: dict[str, dict[str, float | int | None]] = {}
    total_u = total_pairs = 0.0
    for site, parts in sorted(scores.items()):
        mine = [p for p in parts if p.fit.startswith(prefix)]
        if not mine:
            continue
        pairs = sum(p.n_positive * p.n_negative for p in mine)
        u = sum(p.u for p in mine if p.n_positive and p.n_negative)
        per_site[site] = {"auc": (u / pairs) if pairs else None,
                          "n_positive": sum(p.n_positive for p in mine),
                          "n_negative": sum(p.n_negative for p in mine)}
        total_u += u
        total_pairs += pairs
    return AUCResult(scheme, (total_u / total_pairs) if total_pairs else None, per_site, folds)
