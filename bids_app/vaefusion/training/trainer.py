"""The resumable training of the shared VAE: a :class:`Trainer` stepped one epoch at a time.

A :class:`Trainer` trains one model (one latent dim, one seed, one fold's training subjects)
with Adam on batches of whole subjects. Each :meth:`Trainer.run_epoch` trains one epoch,
evaluates the validation subjects, keeps the best checkpoint by validation loss
(``OUT/best/``, a :func:`vaefusion.model.checkpoint.save_model` directory), counts epochs
without improvement for early stopping (``patience``) and writes a resumable checkpoint
(``OUT/last/checkpoint.pt``: :meth:`Trainer.state_dict`, tensors and plain containers only,
read back with ``torch.load(weights_only=True)``). :meth:`Trainer.fit` steps until
:attr:`Trainer.done`; :func:`train_vae` is resume + fit, what cross-validation calls.

A federated client steps the same object: per round, :meth:`Trainer.set_weights` with the
global model (its optimizer state stays local), ``E`` calls of :meth:`Trainer.run_epoch`, then
:meth:`Trainer.get_weights` for the server to average.

A killed run restarted with the same arguments continues after its last completed epoch; on
CPU it ends with the same weights as an uninterrupted run, because the subject order of an
epoch depends only on ``(seed, epoch)`` and the checkpoint holds the torch RNG state that draws
the reparameterization noise. Validation decodes the posterior mean (no sampling), so the
validation loss that selects the best checkpoint is deterministic.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from vaefusion import __version__
from vaefusion.config import Config, Runtime
from vaefusion.errors import DataError, VaefusionError
from vaefusion.model.checkpoint import load_model, save_model
from vaefusion.model.network import VAE, volume_size
from vaefusion.model.objective import MODALITY_MAPS
from vaefusion.training.checkpoints import (
    CHECKPOINT,
    clear_checkpoint,
    load_checkpoint,
    save_checkpoint,
    training_signature,
)
from vaefusion.training.data import SubjectBatches
from vaefusion.training.device import (
    configure_threads,
    rng_state,
    select_device,
    set_rng_state,
    set_seed,
)
from vaefusion.training.metrics import PassStats, modality_means, modality_names, modality_sds
from vaefusion.training.passes import (
    CPU_CHUNK_ACTIVATIONS,
    autocast,
    cached_modalities,
    chunk_volumes,
    make_optimizer,
    run_pass,
)
from vaefusion.training.results import EpochStats, TrainResult
from vaefusion.training.speed import apply_switches, resolve_bf16
from vaefusion.training.twin import linear_twins

LOGGER = logging.getLogger("vaefusion.training")

# Moved out (issue 18): results, checkpoints and one pass over the data live in their own
# modules; the names stay importable from here for callers and tests.
__all__ = ["CHECKPOINT", "CPU_CHUNK_ACTIVATIONS", "EpochStats", "TrainResult", "Trainer",
           "autocast", "chunk_volumes", "clear_checkpoint", "make_optimizer", "run_pass",
           "save_checkpoint", "train_vae"]


# --------------------------------------------------------------------------- trainer
class Trainer:
    """One VAE's training, resumable and steppable one epoch at a time.

    ``train_paths`` / ``val_paths`` are cache ``.npy`` files (one per subject). Without
    validation subjects the training loss selects the checkpoint (and a warning says so).
    Construction seeds python, numpy and torch with ``seed``, loads the data (resident within
    ``runtime.data_budget_bytes`` when it fits) and builds the model and Adam; nothing is read
    from ``out_dir`` until :meth:`resume`.
    """

    def __init__(self, cfg: Config, runtime: Runtime, latent_dim: int, seed: int,
                 train_paths: Sequence[Path], val_paths: Sequence[Path], out_dir: Path,
                 log: logging.Logger | None = None) -> None:
        self.cfg = cfg
        self.latent_dim = int(latent_dim)
        self.seed = int(seed)
        self.out_dir = Path(out_dir)
        self.log = log or LOGGER
        # the order of these steps fixes the RNG draws (model init after seeding): keep it
        self.device = select_device(runtime.device)
        configure_threads(runtime.threads)
        set_seed(seed, self.device)
        train_paths = [Path(p) for p in train_paths]
        val_paths = [Path(p) for p in val_paths]
        self.train_data, self.val_data = self._make_data(train_paths, val_paths,
                                                         runtime.data_budget_bytes)
        self.objective = cfg.objective()
        self.model = VAE(self.train_data.grid, self.latent_dim, cfg.width,
                         decoder_head=cfg.decoder_head, scaling=self.objective.scaling,
                         scaling_modalities=modality_names(self.train_data)).to(self.device)
        # the R^2 baseline: training subjects only (no RNG drawn)
        self.baseline = modality_means(self.train_data)
        if MODALITY_MAPS in self.objective.needs:  # the fold's training statistics, in the model
            self.model.scaling.fit(self.baseline.means[:-1].to(self.device),
                                   modality_sds(self.train_data, self.baseline).to(self.device))
        # speed switches (training/speed.py): off by default, no RNG drawn
        self.bf16 = resolve_bf16(cfg.bf16, self.device, log=self.log)
        apply_switches(self.model, self.device, channels_last=cfg.channels_last,
                       compile=cfg.compile, cuda_graphs=cfg.cuda_graphs, log=self.log)
        self.optimizer = make_optimizer(self.model, cfg.lr)
        # the brain mask: voxels where any training volume is non-zero (the mean of non-negative
        # values can cancel only for signed maps, whose voxels are then non-zero elsewhere)
        self.mask = (self.baseline.means[:-1].abs() > 0).any(dim=0)
        # the linear twins' validation R^2 (no RNG drawn: exact SVD, or a restored RNG)
        self.twins = ({k: v.to_dict() for k, v in linear_twins(
            self.train_data, self.val_data, self.baseline, self.latent_dim,
            self.model.scaling).items()}
            if self.val_data is not None else {})
        flat = volume_size(self.model.bottleneck)
        if self.latent_dim > flat:
            self.log.warning("--latent-dim %d exceeds the flattened bottleneck (%d values at "
                             "grid %s, width %g): the extra dimensions cannot carry more "
                             "information; lower --latent-dim or --downsample.",
                             self.latent_dim, flat, "x".join(map(str, self.model.grid)),
                             cfg.width)
        # fixed for the run: on CUDA free memory shrinks once the caching allocator holds blocks
        self.chunk = chunk_volumes(self.train_data.grid, cfg.width, self.latent_dim, self.device)
        self.signature = training_signature(cfg, self.latent_dim, self.seed, train_paths, val_paths)
        self._meta_base: dict[str, Any] = {
            "downsample": int(cfg.downsample), "modalities": cached_modalities(train_paths),
            "version": __version__,
        }
        # progress, all of it in state_dict()
        self.history: list[EpochStats] = []
        self.epochs_done = 0
        self.best_loss = math.inf  # validation loss of the best epoch
        self.best_score = math.inf  # its selection score (lower is better)
        self.best_epoch = -1
        self.bad = 0  # epochs since the best one
        self.stopped = False
        self.resumed_from: int | None = None
        t, v = self.train_data, self.val_data
        self.log.info("training VAE l=%d seed=%d on %s: %d train / %d val subjects (%d volumes, "
                      "grid %s, %s data, %d volumes per pass)", self.latent_dim, self.seed,
                      self.device, t.n_subjects, v.n_subjects if v else 0, t.n_volumes,
                      "x".join(map(str, t.grid)), "resident" if t.resident else "streamed",
                      self.chunk)

    def _make_data(self, train_paths: list[Path], val_paths: list[Path],
                   budget: int) -> tuple[SubjectBatches, SubjectBatches | None]:
        cfg = self.cfg
        train = SubjectBatches(train_paths, device=self.device, downsample=cfg.downsample,
                               batch_subjects=cfg.batch_subjects, augment=cfg.augment,
                               seed=self.seed, budget_bytes=budget)
        if not val_paths:
            self.log.warning("no validation subjects: the training loss selects the best "
                             "checkpoint")
            return train, None
        # validation gets what resident training data left of the budget
        left = budget - (train.resident_bytes if train.resident else 0)
        val = SubjectBatches(val_paths, device=self.device, downsample=cfg.downsample,
                             batch_subjects=cfg.batch_subjects, seed=self.seed,
                             budget_bytes=left)
        if val.grid != train.grid:
            raise DataError("validation and training subjects are on different grids.")
        return train, val

    # ----------------------------------------------------------------- paths and status
    @property
    def best_dir(self) -> Path:
        return self.out_dir / "best"

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "last" / CHECKPOINT

    @property
    def done(self) -> bool:
        """All ``epochs`` trained, or stopped early."""
        return self.stopped or self.epochs_done >= self.cfg.epochs

    # ----------------------------------------------------------------- training
    def run_epoch(self) -> EpochStats:
        """Train one epoch, validate, update the best checkpoint and the early-stopping count,
        and write the resumable checkpoint. Raises ``RuntimeError`` when :attr:`done`."""
        if self.done:
            raise RuntimeError(f"training in {self.out_dir} is done "
                               f"({self.epochs_done} epochs, stopped early: {self.stopped})")
        cfg, epoch = self.cfg, self.epochs_done  # epoch: 0-based index of this epoch
        t0 = time.perf_counter()
        beta = self.beta_at(epoch)
        train = self._pass(self.train_data, epoch, self.optimizer, f"epoch {epoch + 1}",
                           objective=self.objective, baseline=self.baseline, beta=beta,
                           mask=self.mask, free_bits=cfg.free_bits)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        if not math.isfinite(train.loss):
            raise VaefusionError(f"training diverged at epoch {epoch + 1} (loss {train.loss}); "
                                 f"lower --lr (now {cfg.lr}) or --beta.")
        val = train
        if self.val_data is not None:
            # validation NLL under the variance fitted on training data (the model's sigma)
            lik = self.objective.likelihood
            val = self._pass(self.val_data, epoch, None, "val", objective=self.objective,
                             sigma2=train.sigma ** 2 if lik.validation_variance else None,
                             baseline=self.baseline, beta=cfg.beta, mask=self.mask)
        stats = EpochStats.from_passes(epoch + 1, train, val, dt, beta)
        self.history.append(stats)
        self.epochs_done = epoch + 1
        score = self.selection_score(stats)
        if score < self.best_score:
            self.best_score, self.best_epoch, self.bad = score, stats.epoch, 0
            self.best_loss = stats.val_loss
            self._save_best(stats)
        elif stats.val_within_units > 0:
            self.bad += 1
        # else: a collapsed posterior (no unit varies within a modality) has not started to
        # learn, and its selection score only wanders by rounding (a voxelwise network draws
        # the mean maps there, 10-20 epochs at N=60); patience counts from where it leaves
        self.stopped = self.bad >= cfg.patience
        self.save_state()
        twin = self.twins.get("pca-shared", {}).get("r2_subject", math.nan)
        self.log.info("epoch %d/%d train %.6g (recon %.6g kl %.4g, %d active, R2 %.3f) "
                      "val %.6g (kl %.4g, %d/%d active, %d within modalities, R2 %.3f, "
                      "subject R2 %.3f vs pca-shared %.3f) sigma %.4g %s %.2f volumes/s",
                      stats.epoch, cfg.epochs, stats.train_loss, stats.train_recon,
                      stats.train_kl, stats.train_active_units, stats.train_r2, stats.val_loss,
                      stats.val_kl, stats.val_active_units, self.latent_dim,
                      stats.val_within_units, stats.val_r2, stats.val_r2_subject, twin,
                      stats.sigma, "*" if self.bad == 0 else " ", stats.volumes_per_s)
        if self.stopped:
            self.log.info("early stop after epoch %d: no improvement for %d epochs (best %d)",
                          stats.epoch, cfg.patience, self.best_epoch)
        return stats

    def beta_at(self, epoch: int) -> float:
        """The KL weight of (0-based) ``epoch``: beta, ramped linearly over ``kl_warmup``."""
        warm = self.cfg.kl_warmup
        return self.cfg.beta * (min(1.0, (epoch + 1) / warm) if warm > 0 else 1.0)

    def selection_score(self, stats: EpochStats) -> float:
        """Lower is better. ``r2_subject`` (ours): minus the validation subject R^2, a fixed
        criterion that does not move with beta, the likelihood or the KL (the validation loss
        charges the KL of the posterior means and favours wide, uninformative posteriors);
        ``loss``: the validation loss. Without validation R^2 the loss decides."""
        if self.cfg.selection == "r2_subject" and math.isfinite(stats.val_r2_subject):
            return -stats.val_r2_subject
        return stats.val_loss

    def _pass(self, data: SubjectBatches, epoch: int,
              optimizer: torch.optim.Optimizer | None, desc: str, *,
              beta: float | None = None, **kw: Any) -> PassStats:
        """One pass over ``data`` (training when ``optimizer`` is given); the hook where
        :class:`vaefusion.training.distributed.DistributedTrainer` shards and reduces."""
        return run_pass(self.model, data, epoch, self.cfg.beta if beta is None else beta,
                          self.device, self.bf16, optimizer, desc, self.chunk, **kw)

    def _save_best(self, stats: EpochStats) -> None:
        cfg, val = self.cfg, self.val_data
        save_model(self.model, self.best_dir, {
            **self._meta_base,
            # the decoder's likelihood: x ~ N(decode(z), sigma^2 I)
            **self.objective.likelihood.to_meta(stats.sigma),
            "training": {"latent_dim": self.latent_dim, "seed": self.seed,
                         "epoch": stats.epoch, "val_loss": stats.val_loss,
                         "val_kl_per_volume": stats.val_kl, "val_r2": stats.val_r2,
                         "val_r2_subject": stats.val_r2_subject,
                         "val_active_units": stats.val_active_units,
                         "val_within_units": stats.val_within_units,
                         "selection": cfg.selection, "kl_warmup": cfg.kl_warmup,
                         "free_bits": cfg.free_bits, "linear_twins": self.twins,
                         "train_loss": stats.train_loss, "lr": cfg.lr, "beta": cfg.beta,
                         "batch_subjects": cfg.batch_subjects, "augment": cfg.augment,
                         "n_train": self.train_data.n_subjects,
                         "n_val": val.n_subjects if val else 0,
                         "train_subjects": self.signature["train"],
                         "val_subjects": self.signature["val"]},
        })

    def fit(self, on_epoch_end: Callable[[EpochStats], None] | None = None) -> TrainResult:
        """Run epochs until :attr:`done`; return the best checkpoint, loaded in eval mode.

        ``on_epoch_end`` is called after each epoch's checkpoint is written (progress
        reporting; tests use it to simulate a kill). A trainer that is already done trains
        nothing and returns its best model.
        """
        while not self.done:
            stats = self.run_epoch()
            if on_epoch_end is not None:
                on_epoch_end(stats)
        best, meta = load_model(self.best_dir, self.device)
        result = TrainResult(model=best, meta=meta, best_dir=self.best_dir,
                             best_epoch=self.best_epoch, best_val_loss=self.best_loss,
                             epochs_run=len(self.history), stopped_early=self.stopped,
                             resumed_from=self.resumed_from, device=self.device,
                             history=list(self.history), likelihood=self.cfg.likelihood,
                             twins=dict(self.twins), modalities=list(self.baseline.names))
        self._warn_unconverged(result)
        return result

    def _warn_unconverged(self, result: TrainResult) -> None:
        """Say so when the kept model has collapsed or was still improving."""
        if result.active_units == 0:
            self.log.warning("%s: no active latent unit at the best epoch %d (KL %.3g nats per "
                             "volume): the posterior collapsed to the prior%s.", self.out_dir,
                             result.best_epoch, result.kl_per_volume,
                             f"; try {hint}" if (hint := self.objective.likelihood.collapse_hint)
                             else "")
        if not result.stopped_early and result.best_epoch == result.epochs_run:
            self.log.warning("%s: the best epoch is the last one (%d): training had not "
                             "converged; raise --epochs.", self.out_dir, result.epochs_run)

    # ----------------------------------------------------------------- state
    def get_weights(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the model's state dict (no optimizer state): what FedAvg averages."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def set_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Load model weights (e.g. the global model of a federated round).

        The tensors are copied into the existing parameters, so the optimizer keeps its
        references and its local moment estimates; nothing else of the progress changes.
        """
        self.model.load_state_dict(weights)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: model, optimizer, torch RNG, history, best and
        early-stopping counters, and the signature of the settings. Tensors and plain
        containers only (``torch.load(weights_only=True)`` reads it back). As with
        ``nn.Module.state_dict``, CPU tensors share memory with the live ones: save or copy
        the dict before training on."""
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "rng": rng_state(),
            "epoch": self.epochs_done - 1,  # 0-based index of the last completed epoch
            "history": [asdict(h) for h in self.history], "best_loss": self.best_loss,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch, "bad": self.bad, "stopped": self.stopped,
            "signature": self.signature,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of a trainer with the same signature (else
        ``ValueError``). Restores the process-global torch RNG too."""
        if state.get("signature") != self.signature:
            raise ValueError(f"training state for other settings: {state.get('signature')} "
                             f"is not {self.signature}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        self.history = [EpochStats(**h) for h in state["history"]]
        self.epochs_done = int(state["epoch"]) + 1
        self.best_loss, self.best_epoch = float(state["best_loss"]), int(state["best_epoch"])
        self.best_score = float(state.get("best_score", self.best_loss))
        self.bad, self.stopped = int(state["bad"]), bool(state["stopped"])

    def save_state(self) -> Path:
        """Write :meth:`state_dict` to ``out_dir/last/checkpoint.pt`` atomically."""
        save_checkpoint(self.checkpoint_path, self.state_dict())
        return self.checkpoint_path

    def resume(self) -> bool:
        """Continue from ``out_dir/last/`` if it holds a checkpoint of the same settings.

        An unreadable checkpoint or one of other settings (the signature: everything but
        ``epochs`` and ``patience``) is ignored with a warning; returns whether it resumed.
        """
        ckpt = load_checkpoint(self.checkpoint_path)
        if ckpt is None:
            return False
        if ckpt.get("signature") != self.signature:
            self.log.warning("checkpoint %s belongs to other settings; training from scratch",
                             self.checkpoint_path)
            return False
        self.load_state_dict(ckpt)
        self.resumed_from = self.epochs_done
        self.log.info("resuming %s after epoch %d", self.out_dir, self.epochs_done)
        return True


def train_vae(cfg: Config, runtime: Runtime, latent_dim: int, seed: int,
              train_paths: Sequence[Path], val_paths: Sequence[Path], out_dir: Path,
              log: logging.Logger | None = None,
              on_epoch_end: Callable[[EpochStats], None] | None = None) -> TrainResult:
    """Train one VAE to the end, resuming from ``out_dir/last/`` when it holds a compatible
    checkpoint (see :class:`Trainer`, whose ``fit`` documents ``on_epoch_end``)."""
    trainer = Trainer(cfg, runtime, latent_dim, seed, train_paths, val_paths, out_dir, log)
    trainer.resume()
    return trainer.fit(on_epoch_end)
