"""One site of a federated run: its subjects never leave this object.

A :class:`SiteRunner` answers the server's requests (:meth:`SiteRunner.handle`): it preprocesses
its BIDS dataset with vaefusion's participant level, trains the shared VAE locally with the
resumable :class:`~vaefusion.training.trainer.Trainer` (its Adam state stays here), embeds its
subjects with the global model and answers the evaluation with aggregates
(:class:`~vaefusion.federated.evaluation.SiteEvaluator`). A user mistake at the site becomes a
:class:`~vaefusion.federated.messages.SiteFailure` carrying the one-sentence reason; a bug
becomes one that names the error type only (the traceback stays in the site's log).

Several sites may share one process (tests, benchmarks): the torch RNG is process-global, so
each site keeps its own RNG state and swaps it in around its work (:meth:`SiteRunner._own_rng`);
a site alone in its process (NVFlare) draws exactly what a centralised run would.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaefusion.config import Config
from vaefusion.derivatives import federated as names
from vaefusion.errors import EXIT_FAILURE, DataError, MissingInputError, VaefusionError
from vaefusion.federated.evaluation import SiteEvaluator
from vaefusion.federated.guard import RequestGuard
from vaefusion.federated.messages import (
    CLASSIFY,
    EMBED,
    FINISH,
    PREPARE,
    REQUESTS,
    SCORE,
    TRAIN,
    ClassifierStep,
    EvalRequest,
    FinalResult,
    GlobalModel,
    LocalUpdate,
    PrepareRequest,
    ScoreRequest,
    SiteDone,
    SiteFailure,
    SiteGradients,
    SiteInfo,
    SiteMoments,
    SiteScores,
    Weights,
)
from vaefusion.federated.settings import FederatedSettings
from vaefusion.inputs.cache import SubjectMeta, read_meta

LOG = logging.getLogger("vaefusion.federated.site")


def preprocess_site(cfg: Config) -> list[Path]:
    """vaefusion's participant level on the site's BIDS dataset; returns the cache files."""
    from vaefusion.derivatives.dataset import init_output_dir
    from vaefusion.disk.naming import logs_dir
    from vaefusion.inputs.options import check_inputs
    from vaefusion.inputs.validation import validate_input
    from vaefusion.workflows.participant import run_participant_level

    assert cfg.bids_dir is not None and cfg.work_dir is not None and cfg.output_dir is not None
    if not (Path(cfg.bids_dir) / "dataset_description.json").is_file():
        raise MissingInputError(f"{cfg.bids_dir} is not a BIDS dataset (no "
                                f"dataset_description.json); give the site's dataset root.")
    check_inputs(cfg)
    Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    init_output_dir(cfg)
    if not cfg.skip_bids_validation:
        validate_input(cfg.bids_dir, logs_dir(cfg.output_dir))
    return run_participant_level(cfg, embed=False)


def labelled(metas: Sequence[SubjectMeta], settings: FederatedSettings
             ) -> tuple[list[int], np.ndarray]:
    """Indices and 0/1 labels of the subjects to classify: a patient or control label, one
    session per participant (the first), as the group level's manifest."""
    seen: set[str] = set()
    idx, y = [], []
    for i, m in enumerate(metas):
        if m.subject in seen or m.label not in (settings.positive_label, settings.negative_label):
            continue
        seen.add(m.subject)
        idx.append(i)
        y.append(int(m.label == settings.positive_label))
    return idx, np.asarray(y, dtype=int)


class SiteRunner:
    """One site: ``bids_dir`` is preprocessed at prepare, or ``cache_files`` are used as given.

    ``output_dir`` receives the participant-level derivatives and, at the end, the global model
    and the summary; ``work_dir`` the cache and the training state (resumable rounds).
    ``threads`` is the site's torch/BLAS threads (0: the CPUs available; sites that share a
    machine, as in the simulator, must split its cores or oversubscription slows them ~20x).
    """

    def __init__(self, site: str, bids_dir: Path | None, output_dir: Path, work_dir: Path,
                 cache_files: Sequence[Path] | None = None, threads: int = 0,
                 log: logging.Logger | None = None) -> None:
        self.site = site
        self.bids_dir = Path(bids_dir) if bids_dir is not None else None
        self.output_dir = Path(output_dir)
        self.work_dir = Path(work_dir)
        self.cache_files = [Path(p) for p in cache_files] if cache_files is not None else None
        self.threads = int(threads)
        self.log = log or LOG
        self.settings: FederatedSettings | None = None
        self.cfg: Config | None = None
        self.files: list[Path] = []
        self.metas: list[SubjectMeta] = []
        self.trainer: Any = None
        self.evaluator: SiteEvaluator | None = None
        self.guard: RequestGuard | None = None  # what the server may ask (federated/guard.py)
        self._sd = np.zeros(0)
        self._rng: dict[str, Any] | None = None

    # ----------------------------------------------------------------- dispatch
    def handle(self, task: str, request: object) -> object:
        """The reply to one request; never raises for a user mistake or a bug."""
        handlers = {PREPARE: self.prepare, TRAIN: self.train, EMBED: self.embed,
                    CLASSIFY: self.classify, SCORE: self.score, FINISH: self.finish}
        try:
            if task not in handlers or not isinstance(request, REQUESTS[task]):
                raise VaefusionError(f"site {self.site} got an unknown request "
                                     f"{type(request).__name__} for task {task}; the server and "
                                     f"the site run different vaefusion versions.")
            if task != PREPARE and self.settings is None:
                raise VaefusionError(f"site {self.site} got {task} before prepare (its process "
                                     f"restarted mid-run); rerun the federation to resume.")
            return handlers[task](request)
        except VaefusionError as exc:
            self.log.error("site %s, %s: %s", self.site, task, exc.message)
            return SiteFailure(self.site, task, exc.message, exc.code)
        except Exception as exc:  # a bug: the traceback (which may quote data) stays here
            self.log.exception("site %s crashed during %s", self.site, task)
            return SiteFailure(self.site, task, f"internal error ({type(exc).__name__}); the "
                               f"traceback is in site {self.site}'s log", EXIT_FAILURE)

    @contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Run with this site's torch RNG state, leaving the process's as it was."""
        from vaefusion.training.device import rng_state, set_rng_state

        outer = rng_state()
        if self._rng is not None:
            set_rng_state(self._rng)
        try:
            yield
        finally:
            self._rng = rng_state()
            set_rng_state(outer)

    # ----------------------------------------------------------------- prepare
    def prepare(self, req: PrepareRequest) -> SiteInfo:
        s = req.settings
        s.validate()
        if self.guard is not None:
            self.guard.prepare_again(s, req.sites)
        # without a BIDS dataset (cache files given) the Config's bids_dir is never read
        cfg = s.site_config(self.bids_dir or self.work_dir, self.output_dir, self.work_dir)
        cfg.omp_nthreads = self.threads
        cfg.validate()
        self.cfg = cfg.resolve()
        files = (list(self.cache_files) if self.cache_files is not None
                 else preprocess_site(self.cfg))
        if not files:
            raise DataError(f"site {self.site} has no preprocessed subject; check its BIDS "
                            f"dataset and --participant-label.")
        self.files, self.metas = files, [read_meta(f) for f in files]
        mods = self.metas[0].modalities
        odd = [m for m in self.metas if m.modalities != mods]
        if odd:
            raise DataError(f"site {self.site}: {odd[0].key} has {len(odd[0].modalities)} "
                            f"volumes ({', '.join(odd[0].modalities[-2:])} last) but "
                            f"{self.metas[0].key} has {len(mods)}; every subject needs the same "
                            f"inputs (fix the data or leave --missing-modality at skip).")
        idx, y = labelled(self.metas, s)
        n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
        if n_pos < 2 or n_neg < 2:
            raise DataError(f"site {self.site} has {n_pos} {s.positive_label} and {n_neg} "
                            f"{s.negative_label} subject(s) in column '{s.label_column}' of its "
                            f"participants.tsv; every site needs at least 2 of each.")
        self.settings = s
        self.guard = self.guard or RequestGuard(self.site, s, req.sites)
        self._labelled, self._y = idx, y
        self._build_trainer()
        grid = list(self.trainer.train_data.grid)
        return SiteInfo(self.site, len(files), int(self.trainer.train_data.n_volumes), n_pos,
                        n_neg, list(mods), grid, list(self.metas[0].shape))

    def _build_trainer(self) -> None:
        from vaefusion.training.trainer import Trainer

        assert self.settings is not None and self.cfg is not None
        s = self.settings
        self._rng = None
        with self._own_rng():  # construction seeds torch; the site keeps what it drew
            self.trainer = Trainer(self.cfg, self.cfg.runtime(), s.latent_dim, s.seed,
                                   self.files, [], self.work_dir / "trainer", self.log)

    # ----------------------------------------------------------------- train
    def train(self, req: GlobalModel) -> LocalUpdate:
        assert self.settings is not None
        epochs = self.settings.local_epochs
        if req.round == 0 and self.trainer.epochs_done:
            self._build_trainer()  # the server started over: so does the site
        with self._own_rng():
            if self.trainer.epochs_done != req.round * epochs:
                self._restore_round(req.round)
            self.trainer.set_weights(_to_torch(req.weights))
            stats = None
            for _ in range(epochs):
                stats = self.trainer.run_epoch()
            assert stats is not None
            self._save_round(req.round)
            weights = {k: v.numpy() for k, v in self.trainer.get_weights().items()}
        return LocalUpdate(self.site, req.round, weights, int(self.trainer.train_data.n_volumes),
                           epochs, stats.train_loss, stats.train_recon, stats.train_kl,
                           float(stats.sigma))

    def _save_round(self, round_index: int) -> None:
        """Keep this round's end state (and the previous one) for a resumed run."""
        path = names.round_state_file(self.work_dir, round_index)
        tmp = path.with_suffix(".part")
        torch.save({"round": round_index, "state": self.trainer.state_dict()}, tmp)
        os.replace(tmp, path)
        names.round_state_file(self.work_dir, round_index - 2).unlink(missing_ok=True)

    def _restore_round(self, round_index: int) -> None:
        """Continue at ``round_index`` (> 0) from the state saved when the round before ended
        (this process restarted, or the server resumed an interrupted run)."""
        path = names.round_state_file(self.work_dir, round_index - 1)
        if not path.is_file():
            raise DataError(f"site {self.site} cannot continue at round {round_index + 1}: it "
                            f"has no saved state of round {round_index} in {self.work_dir}; "
                            f"delete the run's work folder to start over.")
        saved = torch.load(path, map_location="cpu", weights_only=True)
        self.trainer.load_state_dict(saved["state"])
        self.log.info("site %s resumes at round %d", self.site, round_index + 1)

    # ----------------------------------------------------------------- evaluate
    def embed(self, req: EvalRequest) -> SiteMoments:
        from vaefusion.training.inference import embed

        assert self.settings is not None and self.guard is not None
        self.guard.embed(req)
        model = self.trainer.model
        model.load_state_dict(_to_torch(req.weights))
        files = [self.files[i] for i in self._labelled]
        mus = embed(model, files, self.trainer.device, self.settings.downsample)
        features = mus.reshape(len(files), -1).astype(np.float64)  # modality-major
        self._sd = features.std(axis=0)
        self.evaluator = SiteEvaluator(self.site, features, self._y, req.folds,
                                       self.settings.seed)
        return self.evaluator.moments()

    def classify(self, req: ClassifierStep) -> SiteGradients:
        if self.evaluator is None:
            raise VaefusionError(f"site {self.site} was asked for gradients before embedding.")
        assert self.guard is not None
        self.guard.step(req, self._sd)
        return SiteGradients(self.site, req.step, self.evaluator.gradients(req.fits))

    def score(self, req: ScoreRequest) -> SiteScores:
        if self.evaluator is None:
            raise VaefusionError(f"site {self.site} was asked for scores before embedding.")
        assert self.guard is not None
        self.guard.score(req.fits, self._sd)
        return SiteScores(self.site, self.evaluator.scores(req.fits))

    def finish(self, req: FinalResult) -> SiteDone:
        import json

        from vaefusion.disk.io import atomic_write_text
        from vaefusion.model.checkpoint import save_model

        folder = names.site_result_dir(self.output_dir)
        model = self.trainer.model
        model.load_state_dict(_to_torch(req.weights))
        save_model(model, names.model_dir(folder), json.loads(req.model_meta))
        atomic_write_text(names.summary_file(folder), req.summary)
        return SiteDone(self.site, sum(p.is_file() for p in folder.rglob("*")))


def _to_torch(weights: Weights) -> dict[str, torch.Tensor]:
    # copies: decoded arrays may be read-only views of the message buffer
    return {k: torch.tensor(np.array(v)) for k, v in weights.items()}
