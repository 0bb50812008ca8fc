"""Typed results of the cross-validated units: one :class:`FoldResult` per method, latent dim,
seed, repeat and fold, with the VAE's training record in :class:`VAETraining`.

They cross the nipype boundary as JSON (``to_dict`` / ``from_dict``) and nothing else reads
them as dicts. A new field gets a default, so that the writers and summaries that do not know
it yet keep working, and ``to_dict``/``from_dict`` carry it without further code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class VAETraining:
    """How a fold's VAE trained, and where its model and latents were saved."""

    best_epoch: int
    epochs_run: int
    best_val_loss: float
    stopped_early: bool
    device: str
    model_dir: str  # the saved model (weights + model.json), in the unit's work folder
    latents: str  # ``.npz`` of every subject's posterior means, keyed by subject key
    history: list[dict[str, Any]] = field(default_factory=list)  # one EpochStats dict per epoch
    # the decoder likelihood, and the kept (best-epoch) model's validation diagnostics
    likelihood: str = "unit"
    sigma: float | None = None  # decoder SD (1 for unit)
    active_units: int | None = None  # latent dims with posterior-mean variance > 0.01
    kl_per_volume: float | None = None  # nats
    recon_r2: float | None = None  # R^2 against the training subjects' modality mean levels
    recon_r2_subject: float | None = None  # R^2 against their modality mean maps
    within_units: int | None = None  # latent dims varying across subjects within modalities
    min_modality_r2: float | None = None  # the worst modality's R^2 (<= 0: not drawn)
    undrawn: list[str] = field(default_factory=list)  # modalities with validation R^2 <= 0
    twin_r2_subject: float | None = None  # pca-shared's subject R^2, same subjects and l
    late_r2_subject: float | None = None  # pca-late's

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAETraining:
        return cls(**data)


@dataclass(frozen=True)
class FoldResult:
    """One method's classification of one fold's test subjects.

    A baseline that cannot run (more components than training samples) is ``available=False``
    with ``roc_auc`` NaN, no decisions and the ``reason``: the paper's "X".

    ``seed`` is the initialisation/sampling seed (``--seed``); ``repeat`` the K-fold repeat
    (its partition seed is ``--cv-seed`` + ``repeat``); ``fold`` the test fold within it.
    """

    method: str
    latent_dim: int
    seed: int
    fold: int
    roc_auc: float
    n_train: int
    n_test: int
    backend: str
    repeat: int = 0
    svm_c: float | None = None  # the SVM's C: chosen by inner CV, or fixed by --svm-c
    grid: str | None = None  # the analysed grid, e.g. "14x16x13" (after --downsample)
    available: bool = True
    reason: str | None = None
    test_subjects: list[str] = field(default_factory=list)  # subject keys (sub-XX[_ses-YY])
    test_labels: list[int] = field(default_factory=list)
    decision: list[float] = field(default_factory=list)  # SVM decision value per test subject
    # the fold's test AUC under each label permutation (--permutations; empty: no null)
    null_auc: list[float] = field(default_factory=list)
    importance: list[float] | None = None  # per modality (VAE only), sums to 1
    training: VAETraining | None = None  # VAE only

    @property
    def sort_key(self) -> tuple[str, int, int, int, int]:
        """(method, latent dim, seed, repeat, fold): the order of every group table."""
        return (self.method, self.latent_dim, self.seed, self.repeat, self.fold)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (NaN stays a float: Python's json reads it back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FoldResult:
        """The inverse of :meth:`to_dict`; an unknown key is an error, not silently dropped."""
        data = dict(data)
        training = data.pop("training", None)
        return cls(**data, training=None if training is None else VAETraining.from_dict(training))

