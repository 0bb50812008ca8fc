"""What training returns: one line of the history per epoch (:class:`EpochStats`) and the
result of a finished training (:class:`TrainResult`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vaefusion.model.network import VAE
from vaefusion.training.metrics import PassStats


@dataclass
class EpochStats:
    """One line of the training history (stored in the checkpoint as a plain dict).

    Losses are per volume, true negative ELBO terms with constants (``*_recon`` the Gaussian
    NLL, ``*_kl`` the KL); ``sigma`` the decoder SD of the epoch (the training pass's, also
    used for validation; 1 for ``unit``); R^2, active units and per-dimension KL as in
    :mod:`vaefusion.training.metrics`. Without validation subjects the ``val_*`` values are the
    training pass's.
    """

    epoch: int
    train_loss: float
    train_recon: float
    train_kl: float
    val_loss: float
    val_recon: float
    val_kl: float
    volumes_per_s: float
    seconds: float
    sigma: float = 1.0
    train_r2: float = math.nan
    val_r2: float = math.nan
    train_active_units: int = 0
    val_active_units: int = 0
    train_kl_dims: list[float] = field(default_factory=list)
    val_kl_dims: list[float] = field(default_factory=list)
    train_r2_subject: float = math.nan
    val_r2_subject: float = math.nan
    train_within_units: int = 0
    val_within_units: int = 0
    val_r2_modality: list[float] = field(default_factory=list)
    val_r2_subject_modality: list[float] = field(default_factory=list)
    val_dead_head: list[float] = field(default_factory=list)
    beta: float = math.nan  # the KL weight of the training pass (the warm-up's)

    @classmethod
    def from_passes(cls, epoch: int, train: PassStats, val: PassStats,
                    seconds: float, beta: float = math.nan) -> EpochStats:
        """The one place where an epoch's numbers are collected."""
        return cls(epoch, train.loss, train.recon, train.kl, val.loss, val.recon, val.kl,
                   train.volumes / seconds, seconds, sigma=train.sigma, train_r2=train.r2,
                   val_r2=val.r2, train_active_units=train.active_units,
                   val_active_units=val.active_units, train_kl_dims=list(train.kl_dims),
                   val_kl_dims=list(val.kl_dims), train_r2_subject=train.r2_subject,
                   val_r2_subject=val.r2_subject, train_within_units=train.within_units,
                   val_within_units=val.within_units, val_r2_modality=list(val.r2_modality),
                   val_r2_subject_modality=list(val.r2_subject_modality),
                   val_dead_head=list(val.dead_head), beta=beta)


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns; ``model`` is the best checkpoint, in eval mode."""

    model: VAE
    meta: dict[str, Any]
    best_dir: Path
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    stopped_early: bool
    resumed_from: int | None  # epochs already completed when this call resumed a run
    device: torch.device
    history: list[EpochStats] = field(default_factory=list)
    likelihood: str = "unit"
    #: the linear twins' validation R^2 (training/twin.py): {"pca-shared": {...}, ...}
    twins: dict[str, dict[str, Any]] = field(default_factory=dict)
    modalities: list[str] = field(default_factory=list)

    @property
    def best(self) -> EpochStats | None:
        """The history line of the best epoch (the model kept)."""
        return next((h for h in self.history if h.epoch == self.best_epoch), None)

    @property
    def sigma(self) -> float:
        """The decoder SD of the best epoch (1 for ``unit``)."""
        return self.best.sigma if self.best else math.nan

    @property
    def active_units(self) -> int | None:
        """Validation active units at the best epoch."""
        return self.best.val_active_units if self.best else None

    @property
    def kl_per_volume(self) -> float:
        """Validation KL per volume (nats) at the best epoch."""
        return self.best.val_kl if self.best else math.nan

    @property
    def recon_r2(self) -> float:
        """Validation reconstruction R^2 (against modality mean intensities) at the best
        epoch."""
        return self.best.val_r2 if self.best else math.nan

    @property
    def recon_r2_subject(self) -> float:
        """Validation R^2 against the modality mean maps at the best epoch."""
        return self.best.val_r2_subject if self.best else math.nan

    @property
    def within_units(self) -> int | None:
        """Validation within-modality active units at the best epoch."""
        return self.best.val_within_units if self.best else None
