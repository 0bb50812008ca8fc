"""What a site lets the server ask: the bounds that keep a curious server from isolating one
subject by differencing answers (docs/federated.md, "A curious server").

The protocol's answers are aggregates, but answers to *different* questions can be subtracted:
fold sums over two partitions, gradients at many chosen points, or with a standardisation that
singles out one feature value. A :class:`RequestGuard` at each site holds the server to the
questions an honest run asks:

- **one partition**: the folds and the seed of the run's settings, fixed at prepare; a second
  prepare with another partition, or an embedding with another fold count, is refused;
- **one model**: every embedding uses the same final weights, and a new embedding is allowed
  only when a site has left (the server starts the evaluation over without it);
- **one standardisation** per fit and embedding: the mean, scale and class weights of a fit
  may not change between classifier steps and scoring;
- **a cap on classifier steps** (``--classifier-rounds``, at most
  :data:`~vaefusion.federated.settings.MAX_CLASSIFIER_ROUNDS`) and one scoring per embedding;
- **bounded coefficients**: finite, a positive scale, and each coefficient at most
  :data:`MAX_EFFECTIVE_COEF` in units of this site's own feature spread (a tiny scale is a huge
  coefficient), the intercept at most as large.

A refusal is a :class:`ProtocolError`; the site answers with a ``SiteFailure`` naming it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from vaefusion.errors import EXIT_DATA, VaefusionError
from vaefusion.federated.evaluation import fit_names
from vaefusion.federated.messages import ClassifierStep, EvalRequest, FitParams, Weights
from vaefusion.federated.settings import FederatedSettings

#: Largest coefficient, times the site's feature SD over the fit's scale (a z-score's weight
#: at this site). The pooled optimum with C <= 1000 and 10^5 subjects stays below ~400 in
#: pooled units; L-BFGS trial points stay within a few times the optimum.
MAX_EFFECTIVE_COEF = 1e4


class ProtocolError(VaefusionError):
    """The server asked something an honest run never asks; the site refuses (exit 65)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_DATA)


def weights_digest(weights: Weights) -> str:
    h = hashlib.sha256()
    for key in sorted(weights):
        h.update(key.encode())
        h.update(np.ascontiguousarray(weights[key]).tobytes())
    return h.hexdigest()


class RequestGuard:
    """One site's record of what the server asked during a run; refuses what goes beyond."""

    def __init__(self, site: str, settings: FederatedSettings, sites: Sequence[str]) -> None:
        self.site = site
        self.settings = settings
        self.sites = list(sites)
        self.model: str | None = None
        self.embedded_with: list[str] | None = None
        self.fits: set[str] = set()
        self.steps = 0
        self.scored = False
        self.standardisation: dict[str, bytes] = {}

    def _refuse(self, what: str) -> None:
        raise ProtocolError(f"site {self.site} refuses: the server {what}, which an honest run "
                            f"never asks (it could isolate a subject); check the server.")

    def prepare_again(self, settings: FederatedSettings, sites: Sequence[str]) -> None:
        """A second prepare must not change the partition (folds and seed) or the sites."""
        if ((settings.folds, settings.seed) != (self.settings.folds, self.settings.seed)
                or list(sites) != self.sites):
            self._refuse(f"prepared again with folds {settings.folds} and seed "
                         f"{settings.seed} (first: {self.settings.folds}, "
                         f"{self.settings.seed}), another partition of the subjects")

    def embed(self, req: EvalRequest) -> None:
        if req.folds != self.settings.folds:
            self._refuse(f"asked for {req.folds} folds where the run's settings say "
                         f"{self.settings.folds}, another partition of the subjects")
        if self.site not in req.sites or not set(req.sites) <= set(self.sites):
            self._refuse(f"asked to embed for the sites {req.sites}, not among the run's "
                         f"{self.sites}")
        digest = weights_digest(req.weights)
        if self.model is not None and digest != self.model:
            self._refuse("asked to embed with other weights than the first time")
        if self.embedded_with is not None and not set(req.sites) < set(self.embedded_with):
            self._refuse("asked for the evaluation again although no site left")
        self.model, self.embedded_with = digest, list(req.sites)
        self.fits = set(fit_names(req.sites, req.folds))
        self.steps, self.scored, self.standardisation = 0, False, {}

    def step(self, req: ClassifierStep, feature_sd: np.ndarray) -> None:
        if self.steps >= self.settings.classifier_rounds:
            self._refuse(f"asked for classifier step {self.steps + 1}, beyond the run's "
                         f"--classifier-rounds {self.settings.classifier_rounds}")
        self._check_fits(req.fits, feature_sd)
        self.steps += 1  # answered steps: a refused one told the server nothing

    def score(self, fits: Sequence[FitParams], feature_sd: np.ndarray) -> None:
        if self.scored:
            self._refuse("asked for scores a second time for one embedding")
        self.scored = True
        self._check_fits(fits, feature_sd)

    def _check_fits(self, fits: Sequence[FitParams], sd: np.ndarray) -> None:
        names = [p.fit for p in fits]
        if len(set(names)) != len(names):
            self._refuse("sent one fit twice in one request")
        for p in fits:
            self._check_fit(p, sd)

    def _check_fit(self, p: FitParams, sd: np.ndarray) -> None:
        if p.fit not in self.fits:
            self._refuse(f"asked about a fit {p.fit!r} that the run does not have")
        n = sd.size
        arrays = (p.mean, p.scale, p.coef)
        if any(a.shape != (n,) for a in arrays):
            self._refuse(f"sent parameters of {p.fit} that do not have the {n} features")
        cw = np.asarray(p.class_weight, dtype=np.float64)
        if (not all(np.isfinite(a).all() for a in arrays) or not np.isfinite(p.intercept)
                or cw.shape != (2,) or not (np.isfinite(cw).all() and (cw > 0).all())):
            self._refuse(f"sent non-finite parameters or class weights for {p.fit}")
        if not (p.scale > 0).all():
            self._refuse(f"sent a scale of 0 or below for {p.fit}")
        key = p.mean.tobytes() + p.scale.tobytes() + cw.tobytes()
        if self.standardisation.get(p.fit, key) != key:
            self._refuse(f"changed the standardisation or class weights of {p.fit}")
        effective = max(float(np.max(np.abs(p.coef) * sd / p.scale, initial=0.0)),
                        abs(p.intercept))
        if effective > MAX_EFFECTIVE_COEF:
            self._refuse(f"sent coefficients of {p.fit} up to {effective:.3g} in this site's "
                         f"feature units, beyond {MAX_EFFECTIVE_COEF:g}")
        self.standardisation[p.fit] = key  # only a request that passed fixes it
