"""The server of a federated run: FedAvg rounds, the federated evaluation, the outputs.

:class:`Coordinator` drives the protocol of :mod:`vaefusion.federated` through a
:class:`Transport` (in this process, or NVFlare). Sites that fail (bad input, a crash, no
answer) are named with their reason; the run goes on without them while at least
``min_sites`` sites remain (``--min-sites``; default: all), else it stops with a
:class:`FederationError` that lists every failed site and why. Rounds are resumable: the global
weights and the history are saved after every round in ``WORK/server/`` and a rerun with the
same settings and sites continues after the last completed round.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vaefusion import __version__
from vaefusion.derivatives import federated as names
from vaefusion.disk.io import atomic_write_text
from vaefusion.errors import EXIT_DATA, EXIT_FAILURE, VaefusionError
from vaefusion.federated.evaluation import (
    GTOL,
    AUCResult,
    FitState,
    auc_from_scores,
    fit_names,
    kfold_possible,
    pool_moments,
)
from vaefusion.federated.fedavg import fedavg
from vaefusion.federated.lbfgs import LBFGS
from vaefusion.federated.messages import (
    CLASSIFY,
    EMBED,
    FINISH,
    PREPARE,
    REPLIES,
    SCORE,
    TRAIN,
    ClassifierStep,
    EvalRequest,
    FinalResult,
    GlobalModel,
    LocalUpdate,
    PrepareRequest,
    ScoreRequest,
    SiteFailure,
    SiteInfo,
    Weights,
)
from vaefusion.federated.settings import FederatedSettings

LOG = logging.getLogger("vaefusion.federated.server")

CLASSIFIER = ("L2 logistic regression (C={c:g}, balanced class weights) on features "
              "standardised with pooled counts, sums and sums of squares; fitted by federated "
              "L-BFGS rounds on summed gradients")


class FederationError(VaefusionError):
    """The run cannot go on: too few sites remain. The message names each failed site."""


@dataclass
class Traffic:
    """Bytes of encoded messages: server to sites (each copy counted) and back."""

    sent: int = 0
    received: int = 0

    @property
    def total(self) -> int:
        return self.sent + self.received


class Transport(Protocol):
    """How requests reach the sites and replies come back."""

    traffic: Traffic

    def broadcast(self, task: str, request: object, sites: Sequence[str]) -> dict[str, object]:
        """Send ``request`` to ``sites``; each site's reply, or a :class:`SiteFailure`
        (``dropped=True`` when it did not answer). A missing key counts as dropped."""
        ...


@dataclass
class RoundStats:
    """One FedAvg round: the volume-weighted mean of the sites' last local epoch."""

    round: int  # 1-based
    train_loss: float
    train_recon: float
    train_kl: float
    sigma: float
    n_volumes: int
    seconds: float
    bytes_sent: int
    bytes_received: int
    sites: dict[str, float] = field(default_factory=dict)  # each site's train loss


@dataclass
class FederatedResult:
    """What :meth:`Coordinator.run` returns (``summary`` is what summary.json holds)."""

    weights: Weights
    history: list[RoundStats]
    loso: AUCResult
    kfold: AUCResult
    summary: dict[str, Any]
    model_dir: Path


#: The numbers of a local update that must be finite (beside its weights).
UPDATE_NUMBERS = ("train_loss", "train_recon", "train_kl", "sigma")


def _pooled(updates: Sequence[LocalUpdate], attr: str) -> float:
    total = sum(u.n_volumes for u in updates)
    return float(sum(u.n_volumes * getattr(u, attr) for u in updates) / total)


class Coordinator:
    """The server: ``sites`` are the names of every site; outputs go to ``output_dir``."""

    def __init__(self, settings: FederatedSettings, sites: Sequence[str], output_dir: Path,
                 work_dir: Path | None = None, log: logging.Logger | None = None) -> None:
        settings.validate(len(sites))
        if len(set(sites)) != len(sites) or not sites:
            raise VaefusionError(f"site names must be unique and given: {list(sites)}")
        self.settings = settings
        self.sites = list(sites)
        self.output_dir = Path(output_dir)
        self.work_dir = Path(work_dir) if work_dir else self.output_dir / names.WORK
        self.log = log or LOG
        self.active = list(sites)
        self.failures: dict[str, SiteFailure] = {}
        self.infos: dict[str, SiteInfo] = {}
        self.classifier_rounds = 0
        self._unconverged: list[str] = []
        #: rounds whose update of a site was left out of FedAvg, and why, by site
        self.round_exclusions: dict[str, list[dict[str, Any]]] = {}

    # ----------------------------------------------------------------- site failures
    @property
    def required(self) -> int:
        return self.settings.required_sites(len(self.sites))

    def _fail(self, failure: SiteFailure) -> None:
        self.failures[failure.site] = failure
        if failure.site in self.active:
            self.active.remove(failure.site)
        self.log.warning("site %s left the run at %s: %s", failure.site, failure.task,
                         failure.reason)

    def _check_enough(self) -> None:
        if len(self.active) >= self.required:
            return
        why = "; ".join(f"{f.site} at {f.task.removeprefix('vaefusion_')}: "
                        f"{f.reason.rstrip('.')}" for f in self.failures.values())
        # the sites' own exit code when they agree (e.g. 65, bad data), else a failure
        codes = {f.code for f in self.failures.values()}
        code = codes.pop() if len(codes) == 1 else EXIT_FAILURE
        hint = ("fix the site(s) and rerun (finished rounds resume)" if self.required > 1 else
                "fix the site(s) and rerun")
        if len(self.sites) > 1 and self.settings.min_sites is None:
            hint += ", or let the run go on without them with --min-sites"
        raise FederationError(f"Federated run stopped: {why}. {len(self.active)} of "
                              f"{len(self.sites)} site(s) remain, fewer than the "
                              f"{self.required} required; {hint}.", code)

    def _call(self, transport: Transport, task: str, request: object) -> dict[str, Any]:
        """Broadcast to the active sites; drop those that fail; the good replies by site."""
        replies = transport.broadcast(task, request, list(self.active))
        good: dict[str, Any] = {}
        for site in list(self.active):
            reply = replies.get(site)
            if reply is None:
                reply = SiteFailure(site, task, "no reply (the site's process ended or the "
                                    "task timed out)", EXIT_FAILURE, dropped=True)
            if isinstance(reply, SiteFailure):
                self._fail(reply)
            elif not isinstance(reply, REPLIES[task]) or getattr(reply, "site", site) != site:
                self._fail(SiteFailure(site, task, f"sent a {type(reply).__name__} instead of "
                                       f"a {REPLIES[task].__name__}"))
            elif task in (EMBED, CLASSIFY) and not _finite(reply):
                self._fail(SiteFailure(site, task, "sent non-finite sums or gradients",
                                       EXIT_DATA))
            else:
                good[site] = reply
        self._check_enough()
        return {s: good[s] for s in sorted(good)}

    # ----------------------------------------------------------------- the run
    def run(self, transport: Transport) -> FederatedResult:
        s = self.settings
        self.log.info("federated run: %d site(s) %s, %d round(s) of %d local epoch(s)",
                      len(self.sites), ", ".join(self.sites), s.rounds, s.local_epochs)
        self.infos = self._call(transport, PREPARE, PrepareRequest(s, list(self.sites)))
        self._check_agreement()
        start, weights, history = self._resume()
        for r in range(start, s.rounds):
            weights, stats = self._round(transport, r, weights)
            history.append(stats)
            self._save_state(weights, history)
        loso, kfold = self._evaluate(transport, weights)
        return self._finish(transport, weights, history, loso, kfold)

    def _check_agreement(self) -> None:
        """The sites that differ from the majority in modalities or grid leave the run."""
        checks = (
            ("modalities", lambda i: tuple(i.modalities),
             lambda v: f"{len(v)} volumes per subject ({', '.join(v[:2])} ... {v[-1]})",
             "every site must provide the same inputs (the same NeuroMark components and GMV)"),
            ("grid", lambda i: tuple(i.source_grid), lambda v: "x".join(map(str, v)),
             "every site's ICN maps must have the same resolution"),
            ("network grid", lambda i: tuple(i.grid), lambda v: "x".join(map(str, v)),
             "every site's inputs must give the same grid at --downsample"),
        )
        for what, key, show, fix in checks:
            infos = {site: self.infos[site] for site in self.active}
            counts = Counter(key(i) for i in infos.values())
            if len(counts) < 2:
                continue
            # the majority value; ties go to the value of the first site in order
            best = max(counts.values())
            ref = next(key(i) for i in infos.values() if counts[key(i)] == best)
            holders = [site for site, i in infos.items() if key(i) == ref]
            for site, info in infos.items():
                if key(info) != ref:
                    self._fail(SiteFailure(
                        site, PREPARE, f"has {what} {show(key(info))} where "
                        f"{', '.join(holders)} have {show(ref)}; {fix}", EXIT_DATA))
        self._check_enough()
        self.infos = {site: self.infos[site] for site in self.active}

    def _initial_weights(self) -> Weights:
        import torch

        from vaefusion.model.network import VAE
        from vaefusion.training.device import set_seed

        s = self.settings
        grid = self.infos[self.active[0]].grid
        with torch.random.fork_rng(devices=[]):  # the caller's RNG is left as it was
            set_seed(s.seed)  # as a site's Trainer does before building the same network
            model = VAE(grid, s.latent_dim, s.width, scaling=s.objective().scaling)
        return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}

    def _round(self, transport: Transport, r: int, weights: Weights
               ) -> tuple[Weights, RoundStats]:
        t0, before = time.perf_counter(), Traffic(**asdict(transport.traffic))
        updates = list(self._call(transport, TRAIN, GlobalModel(r, weights)).values())
        bad = [u for u in updates if u.round != r]
        for u in bad:
            self._fail(SiteFailure(u.site, TRAIN, f"answered round {u.round + 1} for round "
                                   f"{r + 1}"))
        self._check_enough()
        updates = self._usable(r, [u for u in updates if u.round == r], weights)
        new = fedavg(updates)
        stats = RoundStats(
            r + 1, _pooled(updates, "train_loss"), _pooled(updates, "train_recon"),
            _pooled(updates, "train_kl"),
            # the pooled decoder variance: volume-weighted mean of the sites' variances
            float(np.sqrt(sum(u.n_volumes * u.sigma ** 2 for u in updates)
                          / sum(u.n_volumes for u in updates))),
            sum(u.n_volumes for u in updates), time.perf_counter() - t0,
            transport.traffic.sent - before.sent, transport.traffic.received - before.received,
            {u.site: u.train_loss for u in updates})
        self.log.info("round %d/%d: loss %.6g (recon %.6g, kl %.4g) over %d site(s), %.1f s, "
                      "%.2f MB", stats.round, self.settings.rounds, stats.train_loss,
                      stats.train_recon, stats.train_kl, len(updates), stats.seconds,
                      (stats.bytes_sent + stats.bytes_received) / 1e6)
        return new, stats

    def _usable(self, r: int, updates: list[LocalUpdate], weights: Weights
                ) -> list[LocalUpdate]:
        """The updates FedAvg may average; a site whose update is unusable (non-finite, or
        another volume count or architecture than declared) sits this round out, named."""
        usable = []
        for u in updates:
            why = _update_problem(u, self.infos[u.site].n_volumes, weights)
            if why is None:
                usable.append(u)
                continue
            self.round_exclusions.setdefault(u.site, []).append({"round": r + 1, "reason": why})
            self.log.warning("site %s is left out of round %d: it %s", u.site, r + 1, why)
        if len(usable) < self.required or not usable:
            why = "; ".join(f"{site}: {ex[-1]['reason']}" for site, ex in
                            self.round_exclusions.items() if ex[-1]["round"] == r + 1)
            raise FederationError(f"Federated run stopped at round {r + 1}: {why}. "
                                  f"{len(usable)} usable update(s), fewer than the "
                                  f"{self.required} required; fix the site(s), or let the run "
                                  f"go on without them with --min-sites.", EXIT_DATA)
        return usable

    # ----------------------------------------------------------------- resumable state
    def _signature(self) -> dict[str, Any]:
        s = self.settings.to_dict()
        for key in ("rounds", "min_sites", "folds", "classifier_c", "classifier_rounds",
                    "round_timeout", "device"):
            s.pop(key)
        return {"settings": s, "sites": {k: asdict(v) for k, v in sorted(self.infos.items())}}

    def _save_state(self, weights: Weights, history: list[RoundStats]) -> None:
        from safetensors.numpy import save_file

        folder = names.server_state_dir(self.work_dir)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (names.GLOBAL_WEIGHTS + ".part")
        save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(tmp))
        tmp.replace(folder / names.GLOBAL_WEIGHTS)
        atomic_write_text(folder / names.STATE_FILE, json.dumps({
            "signature": self._signature(), "rounds_done": len(history),
            "history": [asdict(h) for h in history]}, indent=1))

    def _resume(self) -> tuple[int, Weights, list[RoundStats]]:
        from safetensors.numpy import load_file

        folder = names.server_state_dir(self.work_dir)
        path = folder / names.STATE_FILE
        if path.is_file():
            try:
                state = json.loads(path.read_text())
                same = state["signature"] == json.loads(json.dumps(self._signature()))
                weights = load_file(str(folder / names.GLOBAL_WEIGHTS)) if same else None
            except (OSError, ValueError, KeyError) as exc:
                self.log.warning("ignoring unreadable server state %s (%s)", path, exc)
                same, weights = False, None
            if same and weights is not None and state["rounds_done"] <= self.settings.rounds:
                history = [RoundStats(**h) for h in state["history"]]
                self.log.info("resuming the federated run after round %d", state["rounds_done"])
                return int(state["rounds_done"]), weights, history
            self.log.warning("the server state in %s belongs to other settings or sites; "
                             "starting over", folder)
        return 0, self._initial_weights(), []

    # ----------------------------------------------------------------- evaluation
    def _evaluate(self, transport: Transport, weights: Weights) -> tuple[AUCResult, AUCResult]:
        """Leave-one-site-out and within-site K-fold AUCs; started over if a site leaves."""
        while True:
            sites = list(self.active)
            result = self._evaluate_once(transport, weights)
            if self.active == sites:
                return result
            self.log.warning("a site left during the evaluation; evaluating again without it")

    def _evaluate_once(self, transport: Transport, weights: Weights
                       ) -> tuple[AUCResult, AUCResult]:
        s = self.settings
        infos = [self.infos[site] for site in self.active]
        why_not = kfold_possible(infos, s.folds)
        folds = 0 if why_not else s.folds
        fits = fit_names(self.active, folds)
        loso_skip = None if len(self.active) >= 2 else "leave-one-site-out needs 2 sites"
        if not fits:
            return (AUCResult("leave_one_site_out", None, skipped=loso_skip),
                    AUCResult("within_site_kfold", None, folds=s.folds, skipped=why_not))
        sites = list(self.active)
        moments = self._call(transport, EMBED, EvalRequest(weights, folds, sites))
        if self.active != sites:
            return AUCResult("", None), AUCResult("", None)
        pooled = pool_moments(moments, fits)
        n_features = next(iter(moments.values())).n_features
        states = {}
        for fit in fits:
            mean, scale = pooled[fit].standardisation()
            states[fit] = FitState(fit, mean, scale, pooled[fit].class_weight(),
                                   s.classifier_c,
                                   LBFGS(np.zeros(n_features + 1), GTOL, s.classifier_rounds),
                                   pooled[fit].n)
        step = 0
        while any(not st.solver.done for st in states.values()):
            todo = [st for st in states.values() if not st.solver.done]
            grads = self._call(transport, CLASSIFY, ClassifierStep(step, [st.params()
                                                                           for st in todo]))
            if self.active != sites:
                return AUCResult("", None), AUCResult("", None)
            for st in todo:
                parts = [g for reply in grads.values() for g in reply.fits if g.fit == st.name]
                st.solver.tell(*st.objective(parts))
            step += 1
        self.classifier_rounds = step
        self._unconverged = [st.name for st in states.values() if not st.solver.converged]
        if self._unconverged:
            self.log.warning("the classifier of %s did not converge in %d rounds; raise "
                             "--classifier-rounds", ", ".join(self._unconverged), step)
        final = [st.params(st.solver.x) for st in states.values()]
        scores = self._call(transport, SCORE, ScoreRequest(final))
        scored = {site: reply.scores for site, reply in scores.items()}
        loso = (auc_from_scores("leave_one_site_out", scored, "loso:") if not loso_skip else
                AUCResult("leave_one_site_out", None, skipped=loso_skip))
        kfold = (auc_from_scores("within_site_kfold", scored, "kfold:", folds) if not why_not
                 else AUCResult("within_site_kfold", None, folds=s.folds, skipped=why_not))
        self.log.info("pooled ROC-AUC: leave-one-site-out %s, within-site %d-fold %s "
                      "(%d classifier rounds)", _fmt(loso.pooled_auc), s.folds,
                      _fmt(kfold.pooled_auc), step)
        return loso, kfold

    # ----------------------------------------------------------------- outputs
    def _model_meta(self, history: list[RoundStats]) -> dict[str, Any]:
        s = self.settings
        info = self.infos[self.active[0]]
        last = history[-1] if history else None
        return {
            "downsample": s.downsample, "modalities": list(info.modalities),
            **s.objective().likelihood.to_meta(last.sigma if last else None),
            "version": __version__,
            "training": {
                "federated": True, "algorithm": "FedAvg (weighted by volumes)",
                "latent_dim": s.latent_dim, "seed": s.seed, "rounds": len(history),
                "local_epochs": s.local_epochs, "lr": s.lr, "beta": s.beta,
                "batch_subjects": s.batch_subjects, "sites": list(self.active),
                "n_subjects": sum(self.infos[x].n_subjects for x in self.active),
                "n_volumes": sum(self.infos[x].n_volumes for x in self.active),
                "train_loss": last.train_loss if last else None,
            },
        }

    def _summary(self, history: list[RoundStats], loso: AUCResult, kfold: AUCResult,
                 traffic: Traffic) -> dict[str, Any]:
        s = self.settings
        sites: dict[str, Any] = {}
        for site in self.sites:
            info = self.infos.get(site)
            entry: dict[str, Any] = {"status": "included" if site in self.active else "excluded"}
            if info is not None:
                entry.update(n_subjects=info.n_subjects, n_volumes=info.n_volumes,
                             n_positive=info.n_positive, n_negative=info.n_negative)
            if site in self.failures:
                f = self.failures[site]
                entry.update(stage=f.task.removeprefix("vaefusion_"), reason=f.reason)
            if site in self.round_exclusions:
                entry["excluded_rounds"] = self.round_exclusions[site]
            sites[site] = entry
        train_bytes = [h.bytes_sent + h.bytes_received for h in history]
        return {
            "vaefusion_version": __version__,
            "federated": True,
            "settings": s.to_dict(),
            "sites": sites,
            "rounds": s.rounds,
            "rounds_completed": len(history),
            "local_epochs": s.local_epochs,
            "loss_per_round": [asdict(h) for h in history],
            "evaluation": {
                "classifier": CLASSIFIER.format(c=s.classifier_c),
                "classifier_rounds": self.classifier_rounds,
                "unconverged_fits": self._unconverged,
                "auc": "site-stratified: sum of Mann-Whitney counts over sum of patient x "
                       "control pairs within each held-out site (and fold)",
                "leave_one_site_out": loso.to_dict(),
                "within_site_kfold": kfold.to_dict(),
            },
            "traffic": {"bytes_per_training_round": (int(np.mean(train_bytes))
                                                     if train_bytes else 0),
                        "bytes_total": traffic.total},
            "model": names.MODEL,
        }

    def _finish(self, transport: Transport, weights: Weights, history: list[RoundStats],
                loso: AUCResult, kfold: AUCResult) -> FederatedResult:
        import torch

        from vaefusion.model.checkpoint import save_model
        from vaefusion.model.network import VAE

        s = self.settings
        meta = self._model_meta(history)
        info = self.infos[self.active[0]]
        model = VAE(info.grid, s.latent_dim, s.width, scaling=s.objective().scaling)
        model.load_state_dict({k: torch.tensor(np.array(v)) for k, v in weights.items()})
        model_dir = save_model(model, names.model_dir(self.output_dir), meta)
        summary = self._summary(history, loso, kfold, transport.traffic)
        names.write_summary(self.output_dir, summary)
        for site, entry in summary["sites"].items():  # the run's end names every bad site
            if entry["status"] == "excluded":
                self.log.warning("site %s was excluded at %s: %s", site, entry.get("stage"),
                                 entry.get("reason"))
            for ex in entry.get("excluded_rounds", []):
                self.log.warning("site %s was left out of round %d: it %s", site, ex["round"],
                                 ex["reason"])
        self._call(transport, FINISH, FinalResult(weights, json.dumps(meta),
                                                  json.dumps(summary, indent=2) + "\n"))
        self.log.info("global model in %s; summary in %s", model_dir,
                      names.summary_file(self.output_dir))
        return FederatedResult(weights, history, loso, kfold, summary, model_dir)


def _update_problem(u: LocalUpdate, declared: int, weights: Weights) -> str | None:
    """Why a site's update must not be averaged (None when it may), as "it ..." ends."""
    if u.n_volumes != declared:
        return f"sent {u.n_volumes} volumes as its weight where it declared {declared}"
    if u.weights.keys() != weights.keys():
        return "sent weights of another architecture (other tensors)"
    for key, ref in weights.items():
        w = u.weights[key]
        if w.shape != ref.shape or w.dtype != ref.dtype:
            return (f"sent {key} as {w.dtype} {list(w.shape)} where the model has {ref.dtype} "
                    f"{list(ref.shape)}")
        if np.issubdtype(w.dtype, np.floating) and not np.isfinite(w).all():
            return f"sent non-finite weights ({key}: {int((~np.isfinite(w)).sum())} values)"
    for name in UPDATE_NUMBERS:
        if not math.isfinite(getattr(u, name)):
            return f"reported a non-finite {name.replace('_', ' ')}"
    return None


def _finite(value: Any) -> bool:
    """Every number and array in a reply (its fields, lists and messages) is finite."""
    if isinstance(value, np.ndarray):
        return not np.issubdtype(value.dtype, np.floating) or bool(np.isfinite(value).all())
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return all(_finite(getattr(value, f)) for f in value.__dataclass_fields__)
    return True


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"

