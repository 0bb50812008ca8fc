"""Every message of the federated protocol, as a typed dataclass.

What a site sends is limited by these types to model parameters, counts, aggregate statistics
(sums and sums of squares over at least
:data:`~vaefusion.federated.settings.MIN_AGGREGATE_SUBJECTS` subjects, summed loss gradients)
and metrics. No field holds anything per subject: no image, latent, label or score; the shapes
of the arrays depend on the model and on the number of features, never on the number of
subjects (``tests/test_federated.py`` checks every message sent).

Server to site: :class:`PrepareRequest`, :class:`GlobalModel`, :class:`EvalRequest`,
:class:`ClassifierStep`, :class:`ScoreRequest`, :class:`FinalResult`.
Site to server: :class:`SiteInfo`, :class:`LocalUpdate`, :class:`SiteMoments`,
:class:`SiteGradients`, :class:`SiteScores`, :class:`SiteDone`, or :class:`SiteFailure`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaefusion.federated.settings import FederatedSettings

#: Task names, in protocol order (also the NVFlare task names).
PREPARE = "vaefusion_prepare"
TRAIN = "vaefusion_train"
EMBED = "vaefusion_embed"
CLASSIFY = "vaefusion_classify"
SCORE = "vaefusion_score"
FINISH = "vaefusion_finish"
TASKS: tuple[str, ...] = (PREPARE, TRAIN, EMBED, CLASSIFY, SCORE, FINISH)

#: Every message type by name (the codec's registry).
MESSAGE_TYPES: dict[str, type] = {}


def message(cls: type) -> type:
    """Register a dataclass as a message (or a part of one) the codec may carry."""
    MESSAGE_TYPES[cls.__name__] = cls
    return cls


Weights = dict[str, np.ndarray]

MESSAGE_TYPES[FederatedSettings.__name__] = FederatedSettings


# --------------------------------------------------------------------------- server -> site
@message
@dataclass(frozen=True)
class PrepareRequest:
    """Preprocess your subjects with these settings and describe them."""

    settings: FederatedSettings
    sites: list[str]  # every site of the run, in order


@message
@dataclass(frozen=True)
class GlobalModel:
    """The global weights: train ``local_epochs`` epochs from them as round ``round``."""

    round: int  # 0-based
    weights: Weights


@message
@dataclass(frozen=True)
class EvalRequest:
    """Embed your subjects with the final global model; send the moments of your parts.

    ``folds`` > 0: split your labelled subjects into that many stratified folds (seeded by the
    run's seed) and send one part per fold; 0: one part, all labelled subjects.
    """

    weights: Weights
    folds: int
    sites: list[str]  # the sites still in the run (they define the leave-one-site-out fits)


@message
@dataclass(frozen=True)
class FitParams:
    """One evaluation fit's current classifier on standardized features.

    ``fit`` is ``loso:<site>`` (trained on every other site, tested on ``<site>``) or
    ``kfold:<k>`` (trained on every site's subjects outside fold ``k``, tested on fold ``k``).
    """

    fit: str
    mean: np.ndarray  # (n_features,) pooled mean of the fit's training subjects
    scale: np.ndarray  # (n_features,) pooled standard deviation (1 where it is 0)
    coef: np.ndarray  # (n_features,)
    intercept: float
    class_weight: list[float]  # [control, patient]: balanced weights from pooled counts


@message
@dataclass(frozen=True)
class ClassifierStep:
    """Send your summed weighted logistic loss and its gradient at these classifiers."""

    step: int
    fits: list[FitParams]


@message
@dataclass(frozen=True)
class ScoreRequest:
    """Score your held-out subjects with these final classifiers."""

    fits: list[FitParams]


@message
@dataclass(frozen=True)
class FinalResult:
    """The run's global model and summary, for every site's own output folder."""

    weights: Weights
    model_meta: str  # model.json (JSON text)
    summary: str  # summary.json (JSON text)


# --------------------------------------------------------------------------- site -> server
@message
@dataclass(frozen=True)
class SiteInfo:
    """What the server needs to check that the sites agree, and to weight them."""

    site: str
    n_subjects: int  # preprocessed subjects (sessions count separately)
    n_volumes: int  # the FedAvg weight
    n_positive: int  # labelled patients (one session per participant)
    n_negative: int  # labelled controls
    modalities: list[str]  # the volume names every subject has, e.g. ICN01 ... GMV
    grid: list[int]  # the network grid (after --downsample)
    source_grid: list[int]  # the preprocessed (ICN) grid


@message
@dataclass(frozen=True)
class LocalUpdate:
    """A site's weights after its local epochs of one round, and that round's losses."""

    site: str
    round: int
    weights: Weights
    n_volumes: int
    epochs: int
    train_loss: float  # per volume, the round's last local epoch
    train_recon: float
    train_kl: float
    sigma: float  # decoder SD of that epoch (1 for the unit likelihood)


@message
@dataclass(frozen=True)
class PartMoments:
    """Counts, sums and sums of squares of the features of one part of a site's subjects."""

    part: str  # "all", or "fold<k>"
    n: int
    n_positive: int
    n_negative: int
    sum: np.ndarray  # (n_features,)
    sum_sq: np.ndarray  # (n_features,)


@message
@dataclass(frozen=True)
class SiteMoments:
    site: str
    n_features: int
    parts: list[PartMoments]


@message
@dataclass(frozen=True)
class FitGradient:
    """Summed class-weighted logistic loss of a site's training subjects of one fit."""

    fit: str
    n: int
    weight_sum: float  # sum of the class weights of those subjects
    loss: float
    grad_coef: np.ndarray  # (n_features,)
    grad_intercept: float


@message
@dataclass(frozen=True)
class SiteGradients:
    site: str
    step: int
    fits: list[FitGradient]


@message
@dataclass(frozen=True)
class PartScore:
    """The Mann-Whitney count of one fit on a site's held-out subjects (AUC = u / (P N))."""

    fit: str
    n_positive: int
    n_negative: int
    u: float


@message
@dataclass(frozen=True)
class SiteScores:
    site: str
    scores: list[PartScore]


@message
@dataclass(frozen=True)
class SiteDone:
    site: str
    files: int  # files written to the site's own output folder


@message
@dataclass(frozen=True)
class SiteFailure:
    """A site could not do a task: the one-sentence reason of its error, never a traceback.

    ``dropped`` is set by the transport when no answer came (the site's process ended or the
    round timed out).
    """

    site: str
    task: str
    reason: str
    code: int = 1
    dropped: bool = False


SiteReply = SiteInfo | LocalUpdate | SiteMoments | SiteGradients | SiteScores | SiteDone
#: The only types a site may send.
SITE_MESSAGES: tuple[type, ...] = (SiteInfo, LocalUpdate, SiteMoments, SiteGradients,
                                   SiteScores, SiteDone, SiteFailure)
#: What each task's request is and which reply it expects.
REQUESTS: dict[str, type] = {PREPARE: PrepareRequest, TRAIN: GlobalModel, EMBED: EvalRequest,
                             CLASSIFY: ClassifierStep, SCORE: ScoreRequest, FINISH: FinalResult}
REPLIES: dict[str, type] = {PREPARE: SiteInfo, TRAIN: LocalUpdate, EMBED: SiteMoments,
                            CLASSIFY: SiteGradients, SCORE: SiteScores, FINISH: SiteDone}
