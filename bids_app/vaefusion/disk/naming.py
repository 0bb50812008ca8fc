"""Every output, log and work-dir file name is built here; no other module spells one.

Per-subject names come from BIDS entities in BIDS order (as fMRIPrep's
``DerivativesDataSink`` and ``utils/bids.py`` build them): ``sub-01[_ses-1]_desc-vae_latents.tsv``
in ``sub-01[/ses-1]/``. What BIDS can name sits in a datatype folder, where the validator checks
it (``sub-01/anat/..._label-GM_desc-preproc_probseg.nii.gz``); what it cannot name (the 4D
``_stack``, the ``_latents``) stays beside it and is listed in ``.bidsignore``. Group outputs have
fixed names under ``group/``, and the names of cross-validation units
(``vae_L8_seed0_rep0_fold2``) name their model folders and work folders.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: BIDS entity order (the subset vaefusion writes); a name lists its entities in this order.
ENTITY_ORDER = ("sub", "ses", "space", "res", "label", "desc", "stat")

# ------------------------------------------------------------------- dataset level
DATASET_DESCRIPTION = "dataset_description.json"
BIDSIGNORE = ".bidsignore"
README = "README.md"
LOGS = "logs"
CITATION = "CITATION.md"
GROUP = "group"

# ------------------------------------------------------------------- group level
METRICS = "metrics.tsv"
DECISION_SCORES = "decision_scores.tsv"
AUC_TABLE = "auc_by_latent_dim.tsv"
IMPORTANCE = "importance.tsv"
TRAINING_HISTORY = "training_history.tsv"
SUMMARY = "summary.json"
COMPARISONS = "comparisons.tsv"
MODELS = "models"
#: the group latents table of a ``--model`` run (no cross-validation setting to name it by)
MODEL_LATENTS = "latents_model.tsv"
# interpretation (interpret/, reports/): what a person opens first, and the maps behind it
REPORT = "report.html"
FIGURES = "figures"
MAPS = "maps"
TSNE = "tsne.tsv"
CENTRES = "centres.tsv"
#: every ``desc-`` label of the dataset, explained (BIDS 1.10 derivatives)
DESCRIPTIONS = "descriptions.tsv"
#: the template space of the NeuroMark grid and of every group map
MAP_SPACE = "MNI152NLin6Asym"

# ------------------------------------------------------------------- work dir
GROUP_MANIFEST = "group_manifest.json"
UNIT_RESULT = "result.json"
GATHERED_RESULTS = "results.json"
UNIT_MODEL = "model"
UNIT_LATENTS = "latents.npz"
#: resumable training state of the VAE units: ``WORK_DIR/training/<unit>/``
TRAINING_DIR = "training"
#: a training unit's epoch progress, read by the parent for ``logs/status.json``
UNIT_PROGRESS = "progress.json"
#: WORK_DIR/gpus/<host>/: the GPU leases of concurrent units (vaefusion.training.gpus).
GPU_LEASES = "gpus"
#: a user-facing error of a workflow node (message and exit code), in the node's folder
NODE_ERROR = "vaefusion_error.json"
CACHE_STACK_EXT = ".npy"


# ------------------------------------------------------------------- BIDS entities
def subject_key(subject: str, session: str | None = None) -> str:
    """``sub-01`` or ``sub-01_ses-1``: the participant (and session) part of every name."""
    return bids_name(subject, session)


def participant_id(subject: str) -> str:
    """The ``participant_id`` column value of a subject label: ``sub-01``."""
    return f"sub-{subject}"


def session_id(session: str | None) -> str | None:
    """The ``session_id`` column value: ``ses-1``, or None (``n/a``) without sessions."""
    return f"ses-{session}" if session else None


def bids_name(subject: str, session: str | None = None, suffix: str | None = None,
              extension: str = "", **entities: str | None) -> str:
    """A BIDS file name from entities: ``bids_name("01", "1", "latents", ".tsv", desc="vae")``
    gives ``sub-01_ses-1_desc-vae_latents.tsv``; None entities are left out."""
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities {sorted(unknown)}; known: {ENTITY_ORDER}")
    values = {"sub": subject, "ses": session, **entities}
    parts = [f"{key}-{values[key]}" for key in ENTITY_ORDER if values.get(key)]
    if suffix:
        parts.append(suffix)
    return "_".join(parts) + extension


def subject_dir(out: Path, subject: str, session: str | None = None) -> Path:
    """``OUT/sub-01`` or ``OUT/sub-01/ses-1``."""
    path = Path(out) / f"sub-{subject}"
    return path / f"ses-{session}" if session else path


def subject_file(out: Path, subject: str, session: str | None, suffix: str, extension: str,
                 **entities: str | None) -> Path:
    """A per-subject derivative: the BIDS name inside the subject's (session's) folder."""
    return subject_dir(out, subject, session) / bids_name(subject, session, suffix, extension,
                                                          **entities)


def preproc_stack(out: Path, subject: str, session: str | None) -> Path:
    """The preprocessed input stack: ``sub-01/sub-01_desc-preproc_stack.nii.gz``."""
    return subject_file(out, subject, session, "stack", ".nii.gz", desc="preproc")


def subject_latents(out: Path, subject: str, session: str | None, desc: str = "vae") -> Path:
    """A subject's latent means: ``sub-01/sub-01_desc-vae_latents.tsv``."""
    return subject_file(out, subject, session, "latents", ".tsv", desc=desc)


#: The BIDS datatype folder of the per-subject files that BIDS can name (the GM probseg).
ANAT = "anat"


def preproc_gm(out: Path, subject: str, session: str | None, icn_source: str | None) -> Path:
    """The preprocessed gray matter as a BIDS probseg, on the ICN grid, with the ``space`` and
    ``res`` of the ICN input's name (left out when it has none, as GIFT's names):
    ``sub-01/anat/sub-01_space-MNI152NLin6Asym_res-3_label-GM_desc-preproc_probseg.nii.gz``."""
    grid = input_entities(icn_source) if icn_source else {}
    return subject_dir(out, subject, session) / ANAT / bids_name(
        subject, session, "probseg", ".nii.gz", space=grid.get("space"), res=grid.get("res"),
        label="GM", desc="preproc")


#: an entity of an input file name; GIFT's and SPM's own names have none
_INPUT_ENTITY = re.compile(r"(?:^|_)(space|res)-([A-Za-z0-9]+)(?=_)")


def input_entities(path: str | Path) -> dict[str, str]:
    """The ``space`` and ``res`` entities of an input file name (``{}`` for names without
    them): the grid that outputs on the same grid carry in their own names."""
    return dict(_INPUT_ENTITY.findall(Path(path).name))


def bids_uri(path: str | Path, links: dict[str, str]) -> str:
    """An input file as a BIDS URI, ``bids:raw:derivatives/spm/sub-01/anat/...``, through the
    output's ``DatasetLinks`` (name -> dataset folder; the innermost folder that holds the file
    wins); a file outside every linked dataset gets its ``file://`` URI."""
    # absolute but not resolved: a DataLad file is a symlink into .git/annex, and its URI must
    # name the file, not the annexed object
    target = Path(os.path.abspath(path))
    best: tuple[int, str, Path] | None = None
    for name, root in links.items():
        # a linked folder given through a symlink: discovery may report files under either
        for base in {Path(os.path.abspath(root)), Path(os.path.realpath(root))}:
            if target.is_relative_to(base) and (best is None or len(base.parts) > best[0]):
                best = (len(base.parts), name, target.relative_to(base))
    if best is None:
        return target.as_uri()
    return f"bids:{best[1]}:{best[2].as_posix()}"


def sidecar(path: Path) -> Path:
    """The JSON sidecar of a data file (``.nii.gz`` counts as one extension)."""
    name = path.name
    for ext in (".nii.gz", ".nii", ".tsv", ".npy"):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)] + ".json")
    raise ValueError(f"{path} has no data-file extension to replace with .json")


def cache_file(cache_dir: Path, subject: str, session: str | None) -> Path:
    """A subject's stack in the training cache: ``WORK_DIR/cache/sub-01[_ses-1].npy``."""
    return Path(cache_dir) / (subject_key(subject, session) + CACHE_STACK_EXT)


# ------------------------------------------------------------------- dataset and logs
def logs_dir(out: Path) -> Path:
    return Path(out) / LOGS


def new_run_id() -> str:
    """A fresh run id, ``20261206T201209-3f9a2c`` (start time, then 6 random hex digits):
    unique among the jobs of an array that share one OUTPUT_DIR, on any host, and sortable."""
    import secrets
    import time

    return f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


def _run_suffix(run_id: str) -> str:
    # without a run id (tools that build a Config by hand) the names stay unsuffixed
    return f"-{run_id}" if run_id else ""


def config_file(out: Path, analysis_level: str, run_id: str = "") -> Path:
    """The run's configuration next to the outputs: ``logs/config-group-<run id>.toml``."""
    return logs_dir(out) / f"config-{analysis_level}{_run_suffix(run_id)}.toml"


def log_file(out: Path, analysis_level: str, stamp: str) -> Path:
    """``logs/vaefusion-<level>-<run id or time>.log``."""
    return logs_dir(out) / f"vaefusion-{analysis_level}-{stamp}.log"


def crash_dir(out: Path, run_id: str = "") -> Path:
    """Where one run's crash files go (nipype's ``crashdump_dir`` and vaefusion's own):
    ``logs/crash-<run id>/``, so that concurrent runs on one OUTPUT_DIR never read each
    other's."""
    return logs_dir(out) / f"crash{_run_suffix(run_id)}"


def crash_file(folder: Path, stamp: str) -> Path:
    """A crash report outside nipype (the run's crash folder or, before OUTPUT_DIR/logs
    exists, the temp folder)."""
    return Path(folder) / f"crash-{stamp}-vaefusion.txt"


#: Every crash file in a run's crash folder: vaefusion's (:func:`crash_file`) and nipype's
#: (``crash-<time>-<user>-<node>-<uuid>.txt``; nipype's ``crashdump_dir`` is :func:`crash_dir`).
CRASH_PATTERN = "crash-*.txt"


def status_file(out: Path, run_id: str = "") -> Path:
    """The run's status, rewritten while it goes on: ``logs/status-<run id>.json``."""
    return logs_dir(out) / f"status{_run_suffix(run_id)}.json"


#: Every run's status file in ``logs/`` (:func:`status_file`).
STATUS_PATTERN = "status*.json"
#: Every run's configuration in ``logs/`` (:func:`config_file`).
CONFIG_PATTERN = "config-*.toml"


def run_id_of(path: Path) -> str:
    """The run id in a status or configuration file name (``""`` for an unsuffixed one)."""
    stem = Path(path).stem
    match = re.search(r"(\d{8}T\d{6}-[0-9a-f]{6})$", stem)
    return match.group(1) if match else ""


def output_lock(out: Path) -> Path:
    """The lock file that serialises writes of the files concurrent runs share
    (``dataset_description.json``, ``descriptions.tsv``...): ``logs/.lock``."""
    return logs_dir(out) / ".lock"


# ------------------------------------------------------------------- group
def group_dir(out: Path) -> Path:
    return Path(out) / GROUP


def unit_name(method: str, latent_dim: int, seed: int, repeat: int | None = None,
              fold: int | None = None) -> str:
    """A cross-validation unit's stable name: ``vae_L128_seed0_rep0_fold3`` (its model folder
    in ``group/models/`` and its folders in the work dir); ``repeat`` is the K-fold repeat."""
    name = f"{method}_L{latent_dim}_seed{seed}"
    if repeat is not None:
        name += f"_rep{repeat}"
    return name if fold is None else f"{name}_fold{fold}"


def model_dir(group: Path, method: str, latent_dim: int, seed: int, repeat: int,
              fold: int) -> Path:
    """``group/models/vae_L8_seed0_rep0_fold2``."""
    return Path(group) / MODELS / unit_name(method, latent_dim, seed, repeat, fold)


def latents_table(latent_dim: int, seed: int, repeat: int, method: str = "vae") -> str:
    """The group latents table of one cross-validated setting (every subject out of fold in
    that repeat): ``latents_vae_L8_seed0_rep0.tsv``."""
    return f"latents_{unit_name(method, latent_dim, seed, repeat)}.tsv"


def gram_cache(cache_dir: Path, digest: str) -> Path:
    """The PCA baselines' shared Gram matrices, keyed by a digest of their subjects."""
    return Path(cache_dir) / f"grams-{digest}.npy"


# ------------------------------------------------------------------- interpretation
def alnum(label: str) -> str:
    """A label as a BIDS entity value (letters and digits only): ``"Pat-1"`` gives ``"Pat1"``."""
    return "".join(ch for ch in str(label) if ch.isalnum()) or "x"


def map_desc(kind: str, negative: str | None = None, positive: str | None = None) -> str:
    """The ``desc-`` label of a group map: ``decodedHC`` (``kind`` and one group),
    ``decodedHCminusSZ`` (both groups: negative minus positive) or ``top5`` (no group)."""
    if negative is None:
        return kind
    if positive is None:
        return f"{kind}{alnum(negative)}"
    return f"{kind}{alnum(negative)}minus{alnum(positive)}"


def res_label(voxel_mm: float) -> str:
    """The ``res-`` value of a voxel size: ``3`` for 3 mm, ``4p5`` for 4.5 mm."""
    return f"{round(float(voxel_mm), 3):g}".replace(".", "p")


def maps_dir(group: Path) -> Path:
    return Path(group) / MAPS


def group_map(group: Path, desc: str, res: str, stat: str | None = None,
              suffix: str | None = None) -> Path:
    """A group map in BEP041/nilearn style: ``group/maps/space-MNI152NLin6Asym_res-3_desc-top5_
    stat-effect_statmap.nii.gz``, or ``..._desc-decodedHC_components.nii.gz`` without ``stat``
    (``suffix`` overrides: ``..._desc-brain_mask.nii.gz``)."""
    suffix = suffix or ("statmap" if stat else "components")
    return maps_dir(group) / bids_name("", None, suffix, ".nii.gz", space=MAP_SPACE, res=res,
                                       desc=desc, stat=stat)


def figures_dir(group: Path) -> Path:
    return Path(group) / FIGURES


def figure(group: Path, name: str) -> Path:
    """A group figure: ``group/figures/importance.png``."""
    return figures_dir(group) / f"{name}.png"


def group_report(out: Path) -> Path:
    """The group report: ``group/report.html``."""
    return group_dir(out) / REPORT


def subject_report(out: Path, subject: str) -> Path:
    """A subject's report at the output root, as fMRIPrep names it: ``sub-01.html``."""
    return Path(out) / f"sub-{subject}.html"


def descriptions_file(out: Path) -> Path:
    return Path(out) / DESCRIPTIONS


def generated_image(out_dir: Path, kind: str) -> Path:
    """An output of ``vaefusion-generate``: ``OUT_DIR/desc-decoded_components.nii.gz``."""
    return Path(out_dir) / bids_name("", None, "components", ".nii.gz", desc=kind)
