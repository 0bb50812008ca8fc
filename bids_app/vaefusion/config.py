"""The one configuration object of a run, built from the CLI and an optional TOML file.

It is passed explicitly to every step and written to ``OUTPUT_DIR/logs/`` so that a run can be
reproduced with ``--config-file``. Defaults are the paper's; the cost knobs (``width``,
``downsample``, ``epochs``) make tests and demos cheap.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from vaefusion.disk.naming import alnum
from vaefusion.errors import UsageError, option_file_error
from vaefusion.model.objective import LIKELIHOODS as LIKELIHOOD_REGISTRY
from vaefusion.model.objective import SCALINGS as SCALING_REGISTRY
from vaefusion.model.objective import Likelihood, Objective, Registry, Scaling

#: The methods run when ``--methods`` does not choose (each a name registered in
#: vaefusion.evaluation.methods, which checks the choice).
DEFAULT_METHODS: tuple[str, ...] = ("vae", "pca-early", "pca-late", "pca-shared", "pca-gmv")
MISSING_POLICIES: tuple[str, ...] = ("skip", "keep", "error")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: Decoder likelihoods by name (vaefusion.model.objective's registry, the choices as they are):
#: a calibrated variance per volume over the brain mask, one shared over the mask, one shared
#: over the whole box, or the unit variance.
LIKELIHOODS: Registry[Likelihood] = LIKELIHOOD_REGISTRY
#: Activations of the decoder's two stride-1 layers (vaefusion.model.network).
DECODER_HEADS: tuple[str, ...] = ("leaky", "relu")

#: The network's scalings by name (vaefusion.model.objective's registry): the paper's max-abs
#: volumes only, or voxelwise standardisation by each modality's training mean and SD maps.
SCALINGS: Registry[Scaling] = SCALING_REGISTRY
#: The classifiers of every method's features (vaefusion.evaluation.classifier.CLASSIFIERS,
#: which a test checks this against: the config sits below evaluation/ and cannot import it).
CLASSIFIERS: tuple[str, ...] = ("svm", "logistic-l1")
#: What picks the kept epoch and drives early stopping (vaefusion.training.trainer).
SELECTIONS: tuple[str, ...] = ("r2_subject", "loss")

#: Fraction of the run's memory (``--mem`` or the available RAM) that resident training data
#: may take, and of the free GPU memory on CUDA (activations need the rest); shared between the
#: ``--nprocs`` trainings that may run at once.
RAM_FRACTION = 0.5
GPU_FRACTION = 0.4

#: Fields that hold paths (serialized as strings, restored as Path).
_PATH_FIELDS = {"bids_dir", "output_dir", "work_dir", "bids_filter_file", "use_plugin",
                "config_file", "model", "diagnosis_map"}


#: Field metadata of the settings that change results (the "method"). Only these are hashed by
#: the workflow engine, so changing anything else (threads, folders, plugin) reuses finished work.
METHOD = {"method": True}


@dataclass(frozen=True)
class Runtime:
    """Resolved execution settings handed to every unit of work (never hashed by nipype).

    ``gpus`` are the ordinals ``--gpus`` chose among the visible GPUs, ``nprocs`` the units that
    may run at once, and ``gpu`` the one a unit leased (:mod:`vaefusion.training.gpus`).
    """

    device: str  # "cpu" or "cuda"
    threads: int  # torch and BLAS threads per process
    data_budget_bytes: int  # memory one training may use to keep its data resident
    gpus: tuple[int, ...] = ()
    nprocs: int = 1
    gpu: int | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Runtime:
        data = json.loads(text)
        data["gpus"] = tuple(data.get("gpus", ()))
        return cls(**data)


@dataclass
class Config:
    """Every setting of one vaefusion run."""

    # BIDS-Apps positional arguments
    bids_dir: Path | None = None
    output_dir: Path | None = None
    analysis_level: str = "participant"
    # selection
    participant_label: list[str] = field(default_factory=list)
    session_label: list[str] = field(default_factory=list)
    bids_filters: dict[str, Any] = field(default_factory=dict)
    bids_filter_file: Path | None = None
    derivatives: dict[str, str] = field(default_factory=dict)
    skip_bids_validation: bool = False
    missing_modality: str = "skip"
    n_components: int = 53
    #: --icn-order: the NeuroMark component (1-based) of each volume, in file order (GIFT's
    #: sorted output); empty: template order
    icn_order: list[int] = field(default_factory=list, metadata=METHOD)
    # labels
    label_column: str = field(default="diagnosis", metadata=METHOD)
    positive_label: str = field(default="SZ", metadata=METHOD)
    negative_label: str = field(default="HC", metadata=METHOD)
    #: JSON file mapping participants.tsv values to labels, e.g. {"sz": "SZ"}
    diagnosis_map: Path | None = None  # applied to the labels, which the cache keys on
    # execution
    work_dir: Path | None = None
    nprocs: int = 1
    omp_nthreads: int = 0  # 0 = auto: the CPUs available divided by nprocs
    mem_gb: float | None = None
    use_plugin: Path | None = None
    config_file: Path | None = None
    device: str = "auto"
    gpus: str = "all"  # as CUDA_VISIBLE_DEVICES: ordinals or UUIDs among the visible GPUs
    # bf16 autocast; None: on where the GPU supports it and its cuDNN is safe (training/speed.py)
    bf16: bool | None = field(default=None, metadata=METHOD)
    # speed switches of the same math (training/speed.py); off until a GPU measures them
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    stop_on_first_crash: bool = False
    dry_run: bool = False  # describe the run (cli/dry_run.py) and write nothing
    verbose: int = 0
    # this run's id (disk.naming.new_run_id), new for every run and never taken from a
    # --config-file: it names the run's status, configuration, log and crash files in logs/,
    # so that concurrent runs on one OUTPUT_DIR (a cluster array) keep to their own
    run_id: str = ""
    # method (defaults: the paper's)
    latent_dims: list[int] = field(default_factory=lambda: [128])
    seeds: list[int] = field(default_factory=lambda: [0])
    folds: int = field(default=10, metadata=METHOD)
    val_fraction: float = field(default=0.1, metadata=METHOD)
    # the K-fold partition of repeat r is seeded by cv_seed + r (evaluation.folds)
    cv_seed: int = field(default=0, metadata=METHOD)
    # --cv-groups: a participants.tsv column whose groups (sites) make whole test folds
    cv_groups: str | None = field(default=None, metadata=METHOD)
    cv_repeats: int = 1  # not hashed: each repeat is its own unit, so adding repeats reuses
    svm_c: float | None = field(default=None, metadata=METHOD)  # None: chosen by inner CV
    # the classifier every method's features go to (evaluation.classifier.CLASSIFIERS): the
    # paper's linear SVM, or an L1 logistic regression; both with C by inner CV
    classifier: str = field(default="svm", metadata=METHOD)
    # label permutations of each AUC's null (0: none); the same permutations for every method
    permutations: int = field(default=100, metadata=METHOD)
    epochs: int = field(default=200, metadata=METHOD)
    patience: int = field(default=20, metadata=METHOD)
    batch_subjects: int = field(default=1, metadata=METHOD)
    lr: float = field(default=1e-3, metadata=METHOD)
    # the recipe study (benchmarks/recipe.py): 0.25 led the validation criterion over 3 seeds
    # and both arms; the paper's ELBO is beta 1
    beta: float = field(default=0.25, metadata=METHOD)
    width: float = field(default=1.0, metadata=METHOD)
    downsample: int = field(default=1, metadata=METHOD)
    augment: bool = field(default=False, metadata=METHOD)
    # ours, chosen by benchmarks/recipe.py on validation data (docs/method.md)
    likelihood: str = field(default="volume", metadata=METHOD)
    # the network's input/output scaling (vaefusion.model.scaling): voxelwise standardisation
    # by the fold's training mean and SD maps led the recipe study's third stage (validation
    # subject R^2 +0.20 above pca-shared's over 6 runs, against +0.04 for max-abs, the paper's)
    scaling: str = field(default="voxelwise", metadata=METHOD)
    kl_warmup: int = field(default=0, metadata=METHOD)  # epochs of linear beta warm-up
    free_bits: float = field(default=0.0, metadata=METHOD)  # nats per latent dimension
    decoder_head: str = field(default="leaky", metadata=METHOD)  # config file only
    selection: str = field(default="r2_subject", metadata=METHOD)  # config file only
    model: Path | None = None
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    # which fold's model (of the first latent dim, seed and repeat) the figures, maps and report
    # explain; not hashed: it changes no trained unit, only the interpretation written after
    explain_fold: int = 0

    def validate(self) -> None:
        """Raise :class:`UsageError` (exit 64) for values no run can use."""
        for f in dataclasses.fields(self):  # NaN or infinity passes every comparison below
            values = getattr(self, f.name)
            for value in values if isinstance(values, list) else [values]:
                if isinstance(value, float) and not math.isfinite(value):
                    raise UsageError(f"{option_name(f.name)} {value} is not a finite number; "
                                     f"give a number.")
        if self.mem_gb is not None and not self.mem_gb > 0:
            raise UsageError(f"--mem {self.mem_gb} must be above 0 (e.g. 16G).")
        if self.folds < 2:
            raise UsageError(f"--folds {self.folds} is too small; use at least 2.")
        if not 0.0 < self.val_fraction < 0.5:
            raise UsageError("val_fraction must be between 0 and 0.5.")
        if self.epochs < 1:
            raise UsageError(f"--epochs {self.epochs} must be at least 1.")
        if self.patience < 1:
            raise UsageError(f"--patience {self.patience} must be at least 1.")
        if self.batch_subjects < 1:
            raise UsageError(f"--batch-subjects {self.batch_subjects} must be at least 1.")
        if self.lr <= 0 or self.beta < 0:
            raise UsageError("--lr must be positive and --beta non-negative.")
        if not 0 < self.width <= 8:
            raise UsageError(f"--width {self.width} must be in (0, 8].")
        if self.downsample < 1:
            raise UsageError(f"--downsample {self.downsample} must be an integer >= 1.")
        if not self.latent_dims or any(d < 1 for d in self.latent_dims):
            raise UsageError("--latent-dim needs one or more positive integers.")
        if self.cv_seed < 0 or self.cv_repeats < 1:
            raise UsageError("--cv-seed must be a non-negative integer and --cv-repeats at "
                             "least 1.")
        if self.cv_groups is not None and not self.cv_groups.strip():
            raise UsageError("--cv-groups needs a participants.tsv column name, e.g. site.")
        if self.svm_c is not None and not self.svm_c > 0:
            raise UsageError(f"--svm-c {self.svm_c} must be a positive number (or leave it out "
                             "to choose C by inner cross-validation).")
        if self.classifier not in CLASSIFIERS:
            raise UsageError(f"--classifier {self.classifier} is not one of "
                             f"{', '.join(CLASSIFIERS)}.")
        if not 0 <= self.permutations <= 10_000:
            raise UsageError(f"--permutations {self.permutations} must be from 0 (no null) to "
                             f"10000.")
        if not self.seeds:
            raise UsageError("--seed needs one or more integers.")
        if not self.methods:  # the names: vaefusion.evaluation.methods.selected_methods
            raise UsageError("--methods got nothing; choose one or more methods.")
        if not 0 <= self.explain_fold < self.folds:
            raise UsageError(f"--explain-fold {self.explain_fold} is not a fold of --folds "
                             f"{self.folds}; choose 0 to {self.folds - 1}.")
        if self.kl_warmup < 0 or self.free_bits < 0:
            raise UsageError("--kl-warmup and --free-bits must be non-negative.")
        if self.decoder_head not in DECODER_HEADS:
            raise UsageError(f"decoder_head {self.decoder_head} is unknown; use "
                             f"{' or '.join(DECODER_HEADS)}.")
        if self.selection not in SELECTIONS:
            raise UsageError(f"selection {self.selection} is unknown; use "
                             f"{' or '.join(SELECTIONS)}.")
        if self.likelihood not in LIKELIHOODS:
            raise UsageError(f"--likelihood {self.likelihood} is unknown; use "
                             f"{' or '.join(LIKELIHOODS)}.")
        if self.scaling not in SCALINGS:
            raise UsageError(f"--scaling {self.scaling} is unknown; use "
                             f"{' or '.join(SCALINGS)}.")
        if self.device not in DEVICES:
            raise UsageError(f"--device {self.device} is unknown; use auto, cpu or cuda.")
        parse_gpus(self.gpus)
        if self.missing_modality not in MISSING_POLICIES:
            raise UsageError("--missing-modality must be skip, keep or error.")
        if self.nprocs < 1 or self.omp_nthreads < 0:
            raise UsageError("--nprocs must be at least 1 and --omp-nthreads at least 0 (auto).")
        if self.icn_order and sorted(self.icn_order) != list(range(1, self.n_components + 1)):
            raise UsageError(f"--icn-order must list each of the {self.n_components} NeuroMark "
                             f"components once (1 to {self.n_components}), not "
                             f"{len(self.icn_order)} numbers {self.icn_order[:6]}...")
        if self.positive_label == self.negative_label:
            raise UsageError("--positive-label and --negative-label must differ.")
        if alnum(self.positive_label) == alnum(self.negative_label):
            # the group maps are named by the labels' letters and digits: one would overwrite
            # the other (decoded maps of -1 and 1 are both desc-decoded1)
            raise UsageError(f"--positive-label {self.positive_label} and --negative-label "
                             f"{self.negative_label} give the same output file names (only "
                             f"letters and digits are kept: {alnum(self.positive_label)}); "
                             f"choose labels that differ in a letter or digit.")

    # ----------------------------------------------------------------- resolution
    def resolve(self) -> Config:
        """A copy with every "auto" value made concrete, once, in the parent process.

        ``device`` becomes cpu or cuda (cuda without a GPU is a usage error), ``omp_nthreads``
        the CPUs available divided by ``nprocs``, and ``mem_gb`` the memory the run may use
        (``--mem``, else the available RAM). Resolving a resolved config changes nothing.
        """
        import torch  # lazily: the CLI parses options without loading torch

        cfg = dataclasses.replace(self)
        has_cuda = torch.cuda.is_available()
        if cfg.device == "auto":
            cfg.device = "cuda" if has_cuda else "cpu"
        elif cfg.device == "cuda" and not has_cuda:
            raise UsageError("--device cuda was asked for but torch sees no CUDA GPU; "
                             "use --device cpu or auto.")
        if cfg.device == "cuda":  # the chosen GPUs as ordinals, once, in the parent
            count = torch.cuda.device_count()
            cfg.gpus = ",".join(map(str, resolve_gpus(cfg.gpus, count, _device_uuids(count))))
        if cfg.omp_nthreads == 0:
            cfg.omp_nthreads = max(1, available_cpus() // cfg.nprocs)
        if cfg.mem_gb is None:
            cfg.mem_gb = round(available_ram_bytes() / 2**30, 2)
        return cfg

    @property
    def resolved(self) -> bool:
        return self.device != "auto" and self.omp_nthreads > 0 and self.mem_gb is not None

    def runtime(self) -> Runtime:
        """The execution settings of one unit of work (needs a resolved config)."""
        if not self.resolved:
            raise ValueError("Config.runtime() needs a resolved config (call resolve() first)")
        if self.device == "cuda":
            import torch

            free, _ = torch.cuda.mem_get_info()
            budget = GPU_FRACTION * free
        else:
            budget = RAM_FRACTION * float(self.mem_gb) * 2**30
        # resolved on CUDA: ordinals; the units share a GPU's budget, not the node's
        gpus = tuple(int(g) for g in parse_gpus(self.gpus)) if self.device == "cuda" else ()
        share = -(-self.nprocs // len(gpus)) if gpus else self.nprocs
        return Runtime(device=self.device, threads=self.omp_nthreads,
                       data_budget_bytes=int(budget / share),
                       gpus=gpus, nprocs=self.nprocs)

    def objective(self) -> Objective:
        """The training objective of ``likelihood`` and ``scaling`` (their registries' objects)."""
        return Objective.named(self.likelihood, self.scaling)

    def method_settings(self) -> dict[str, Any]:
        """The settings that change results (fields marked ``METHOD``), JSON-able."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata.get("method")}

    # ----------------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            if value is None:
                continue  # TOML has no null
            out[f.name] = value
        return out

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def write(self, directory: Path, stem: str = "config") -> Path:
        """Write the configuration as TOML into ``directory``; returns the file path."""
        from vaefusion.disk.io import atomic_write_text  # numpy: not for --help

        path = directory / f"{stem}.toml"
        atomic_write_text(path, self.to_toml())
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "configuration") -> Config:
        """Build from a dict, refusing unknown keys (a typo must not be silently ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UsageError(
                f"{source} has unknown setting(s) {', '.join(unknown)}; "
                f"valid settings are listed in the documentation (or a written "
                f"logs/config-<level>-<run id>.toml)."
            )
        hints = typing.get_type_hints(cls)
        for key, value in data.items():
            if not type_ok(value, hints[key]):
                raise UsageError(f"{source}: {key} = {value!r} is not a valid value (expected "
                                 f"{type_name(hints[key])}); fix the setting.")
        kwargs = {k: (Path(v) if k in _PATH_FIELDS and v is not None else v)
                  for k, v in data.items()}
        return cls(**kwargs)


#: Config fields whose command-line option is not ``--`` + the name with dashes
_OPTION_NAMES = {"mem_gb": "--mem", "latent_dims": "--latent-dim", "seeds": "--seed"}


def option_name(field_name: str) -> str:
    """The command-line option of a Config field (``lr`` -> ``--lr``, ``mem_gb`` ->
    ``--mem``)."""
    return _OPTION_NAMES.get(field_name, "--" + field_name.replace("_", "-"))


def check_memory(mem_gb: float | None, available_bytes: int | None = None) -> None:
    """Refuse a ``--mem`` above the memory this process can have (MemAvailable, capped by a
    cgroup limit): a budget the machine cannot give ends in the kernel's OOM killer, hours in,
    instead of a sentence now."""
    if mem_gb is None:
        return
    available = available_ram_bytes() if available_bytes is None else available_bytes
    if mem_gb * 2**30 > available:
        raise UsageError(
            f"--mem {mem_gb:g} GB is more than the {available / 2**30:.1f} GB of memory available "
            f"to this run (free memory, container or job limit included); give at most "
            f"--mem {int(available / 2**30 * 10) / 10:g}G (a bare number is GB: --mem 16000 "
            f"asks for 16,000 GB; write 16G or 16000M).")


def parse_gpus(spec: str) -> list[str]:
    """The ids of a ``--gpus`` value (``[]`` for ``all``); a malformed list is a usage
    error."""
    text = str(spec).strip()
    if text.lower() == "all":
        return []
    ids = [t.strip() for t in text.split(",")]
    if not text or any(not t for t in ids):
        raise UsageError(f"--gpus {spec!r} is not a GPU list; use all, or ids as "
                         f"CUDA_VISIBLE_DEVICES takes them (e.g. 0,2 or GPU-8f3c...).")
    return ids


def resolve_gpus(spec: str, count: int, uuids: Sequence[str] = ()) -> tuple[int, ...]:
    """The ordinals (among the ``count`` visible GPUs) that ``spec`` chooses, in its order,
    each once."""
    ids = parse_gpus(spec)
    if not ids:
        return tuple(range(count))
    chosen: list[int] = []
    for token in ids:
        if token.isdigit():
            index = int(token)
        else:
            hits = [i for i, u in enumerate(uuids) if u.startswith(token)]
            index = hits[0] if len(hits) == 1 else -1
        if not 0 <= index < count:
            raise UsageError(f"--gpus {spec}: {token} is not one of the {count} GPU(s) this "
                             f"process sees (ordinals 0-{count - 1} among CUDA_VISIBLE_DEVICES "
                             f"or their UUIDs); choose from those.")
        if index not in chosen:
            chosen.append(index)
    return tuple(chosen)


def _device_uuids(count: int) -> list[str]:
    """The UUIDs of the visible GPUs (``GPU-...``), in ordinal order; empty when unknown."""
    import torch

    out = []
    for i in range(count):
        try:
            out.append(f"GPU-{torch.cuda.get_device_properties(i).uuid}")
        except (RuntimeError, AttributeError, AssertionError):
            return []
    return out


def type_ok(value: Any, hint: Any) -> bool:
    """Whether a TOML/JSON value fits a Config field's type (paths as strings, ints as floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(type_ok(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is Path:
        return isinstance(value, (str, Path))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("pathlib.", "")


def load_toml(path: Path) -> dict[str, Any]:
    """Read a TOML configuration file; a TOML ``[section]`` is flattened into its keys."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:  # missing, a dangling link, a folder, no permission
        raise option_file_error("--config-file", path, exc, "TOML") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(
            f"--config-file {path} is not valid TOML ({exc}); fix its syntax."
        ) from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in {"bids_filters", "derivatives"}:
            flat.update(value)
        else:
            flat[key] = value
    return flat


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a SLURM or container limit)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def available_ram_bytes() -> int:
    """Available host memory: MemAvailable, capped by a cgroup (container) limit if any."""
    avail = 0
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if not avail:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 2 * 1024**3  # conservative guess on exotic platforms
    # a container's own limit (cgroup v2) can be far below the host's free memory
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            avail = min(avail, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return avail
