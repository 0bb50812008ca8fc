"""The settings of one federated run: the method options every site must share.

The server owns them (``vaefusion-federated simulate`` options, or NeuroFLAME's
``parameters.json``) and sends them to the sites in the prepare message, so that no site can
train with other settings. :meth:`FederatedSettings.site_config` turns them into the
:class:`~vaefusion.config.Config` of one site's participant level and training.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaefusion.config import LIKELIHOODS, Config, type_name, type_ok
from vaefusion.errors import UsageError
from vaefusion.model.objective import MaxAbsScaling, Objective

#: Fewest subjects any aggregate a site sends may cover: the sum and the sum of squares of two
#: values determine both, so a part of two subjects would reveal their features.
MIN_AGGREGATE_SUBJECTS = 3

#: Caps a site enforces on what the server may ask (docs/federated.md, "A curious server"):
#: classifier rounds (each a gradient over the site's subjects) and the inverse regularisation
#: (a weaker penalty lets coefficients grow, which sharpens a probe). The paper's evaluation
#: converges in under 100 rounds with C = 1.
MAX_CLASSIFIER_ROUNDS = 1000
MAX_CLASSIFIER_C = 1000.0


@dataclass(frozen=True)
class FederatedSettings:
    """Method and protocol settings of a federated run (defaults: the paper's method)."""

    rounds: int = 10
    local_epochs: int = 1
    latent_dim: int = 128
    width: float = 1.0
    downsample: int = 1
    # the method options follow vaefusion's own defaults (one source: README's options table)
    lr: float = dataclasses.field(default_factory=lambda: Config().lr)
    beta: float = dataclasses.field(default_factory=lambda: Config().beta)
    likelihood: str = dataclasses.field(default_factory=lambda: Config().likelihood)
    batch_subjects: int = 1
    seed: int = 0
    #: fewest sites that must stay in the run; None = every site (any failure ends the run)
    min_sites: int | None = None
    #: within-site stratified K-fold (0 = leave-one-site-out only)
    folds: int = 5
    classifier_c: float = 1.0
    classifier_rounds: int = 100
    n_components: int = 53
    label_column: str = "diagnosis"
    positive_label: str = "SZ"
    negative_label: str = "HC"
    skip_bids_validation: bool = False
    device: str = "auto"
    #: seconds a site may take for one task before it counts as dropped out (0 = no limit);
    #: finite by default, so that one hung site cannot stall the federation
    round_timeout: float = 3600.0

    def validate(self, n_sites: int | None = None) -> None:
        """Raise :class:`UsageError` (exit 64) for values no run can use."""
        checks = [
            (self.rounds >= 1, f"--rounds {self.rounds} must be at least 1."),
            (self.local_epochs >= 1, f"--local-epochs {self.local_epochs} must be at least 1."),
            (self.latent_dim >= 1, f"--latent-dim {self.latent_dim} must be at least 1."),
            (self.folds == 0 or self.folds >= 2,
             f"--folds {self.folds} must be 0 (leave-one-site-out only) or at least 2."),
            (0 < self.classifier_c <= MAX_CLASSIFIER_C,
             f"--classifier-c {self.classifier_c} must be positive and at most "
             f"{MAX_CLASSIFIER_C:g}."),
            (1 <= self.classifier_rounds <= MAX_CLASSIFIER_ROUNDS,
             f"--classifier-rounds {self.classifier_rounds} must be from 1 to "
             f"{MAX_CLASSIFIER_ROUNDS}."),
            (self.likelihood in LIKELIHOODS,
             f"--likelihood {self.likelihood} is unknown; use {' or '.join(LIKELIHOODS)}."),
            (self.round_timeout >= 0, "--round-timeout must be 0 (none) or positive."),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        if self.min_sites is not None and self.min_sites < 1:
            raise UsageError(f"--min-sites {self.min_sites} must be at least 1.")
        if n_sites is not None and self.min_sites is not None and self.min_sites > n_sites:
            raise UsageError(f"--min-sites {self.min_sites} exceeds the {n_sites} site(s) given; "
                             f"lower it or add sites.")
        # the per-site options are checked where they are used (same messages as vaefusion)
        self.site_config(Path("."), Path("."), Path(".")).validate()

    @property
    def epochs(self) -> int:
        """Local epochs over the whole run (what one site's Trainer is sized for)."""
        return self.rounds * self.local_epochs

    def required_sites(self, n_sites: int) -> int:
        return n_sites if self.min_sites is None else min(self.min_sites, n_sites)

    def objective(self) -> Objective:
        """The federated objective: the likelihood, and max-abs whatever the default (voxelwise
        statistics would have to be pooled over the sites, a secure sum of per-site sums and
        squares, and the server's network, server.py, has no scaling to average)."""
        return Objective(LIKELIHOODS.get(self.likelihood), MaxAbsScaling())

    def site_config(self, bids_dir: Path, output_dir: Path, work_dir: Path) -> Config:
        """The vaefusion Config of one site: its participant level and its local training.

        Early stopping is off (``patience`` above the run's epochs): the server decides how
        long every site trains.
        """
        return Config(
            bids_dir=Path(bids_dir), output_dir=Path(output_dir), work_dir=Path(work_dir),
            analysis_level="participant", skip_bids_validation=self.skip_bids_validation,
            missing_modality="skip", n_components=self.n_components,
            label_column=self.label_column, positive_label=self.positive_label,
            negative_label=self.negative_label, device=self.device,
            latent_dims=[self.latent_dim], seeds=[self.seed], epochs=self.epochs,
            patience=self.epochs + 1, batch_subjects=self.batch_subjects, lr=self.lr,
            beta=self.beta, width=self.width, downsample=self.downsample,
            likelihood=self.likelihood, methods=["vae"],
            scaling=self.objective().scaling.name,
        )

    # ----------------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "parameters") -> FederatedSettings:
        """Build from JSON (``parameters.json``), refusing unknown keys and wrong types."""
        if not isinstance(data, dict):
            raise UsageError(f"{source} must hold a JSON object of settings; fix the file.")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise UsageError(f"{source} has unknown setting(s) {', '.join(unknown)}; valid "
                             f"settings: {', '.join(fields)}.")
        hints = typing.get_type_hints(cls)
        for key, value in data.items():
            if not type_ok(value, hints[key]):
                raise UsageError(f"{source}: {key} = {value!r} is not a valid value (expected "
                                 f"{type_name(hints[key])}); fix the setting.")
        return cls(**data)

    @classmethod
    def from_file(cls, path: Path) -> FederatedSettings:
        """``parameters.json`` (NeuroFLAME's run kit) as settings."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise UsageError(f"{path} does not exist; the computation needs its "
                             f"parameters.json.") from None
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} is not valid JSON ({exc}); fix its syntax.") from None
        return cls.from_dict(data, source=str(path))
