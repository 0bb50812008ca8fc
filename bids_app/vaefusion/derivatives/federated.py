"""The file names and writers of a federated run's outputs.

The server's output folder (``vaefusion-federated simulate --out OUT``, or NeuroFLAME's central
``/workspace/output``)::

    OUT/model/              the global VAE (model.safetensors + model.json; ``--model`` loads it)
    OUT/summary.json        sites, loss per round, per-site and pooled ROC-AUC, traffic
    OUT/work/server/        the resumable server state (global weights + rounds done)
    OUT/sites/<site>/       simulation only: each simulated site's own folders (below)

A site's own output folder (its participant-level derivatives, plus)::

    federated/model/        the global model, as the server sent it
    federated/summary.json  the run's summary
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vaefusion.disk.io import atomic_write_text, write_json
from vaefusion.disk.naming import SUMMARY

MODEL = "model"
FEDERATED = "federated"
SITES = "sites"
WORK = "work"
SERVER_STATE = "server"
STATE_FILE = "state.json"
GLOBAL_WEIGHTS = "global.safetensors"
ROUND_STATE = "round-{round:05d}.pt"
#: The attributed error of a run that stopped (read by ``vaefusion-federated`` after NVFlare).
RUN_ERROR = "error.json"
#: NeuroFLAME's marker of a failed computation (in every participant's output folder).
NEUROFLAME_ERROR = ".neuroflame_error.json"
LOG = "vaefusion-federated.log"


def model_dir(out: Path) -> Path:
    return Path(out) / MODEL


def summary_file(out: Path) -> Path:
    return Path(out) / SUMMARY


def server_state_dir(work: Path) -> Path:
    return Path(work) / SERVER_STATE


def site_root(out: Path, site: str) -> Path:
    """A simulated site's folder: ``OUT/sites/site-1``."""
    return Path(out) / SITES / site


def site_output_dir(root: Path) -> Path:
    """A simulated site's output (its participant-level derivatives)."""
    return Path(root) / "derivatives"


def site_work_dir(root: Path) -> Path:
    return Path(root) / WORK


def site_result_dir(site_out: Path) -> Path:
    """Where a site keeps what the server sent at the end: ``<site output>/federated``."""
    return Path(site_out) / FEDERATED


def round_state_file(work: Path, round_index: int) -> Path:
    return Path(work) / ROUND_STATE.format(round=round_index)


def write_summary(out: Path, summary: dict[str, Any]) -> Path:
    return write_json(summary_file(out), summary)


def write_error(folder: Path, message: str, code: int, **extra: Any) -> Path:
    """The run's attributed error (``error.json``) and NeuroFLAME's marker beside it."""
    folder = Path(folder)
    record = {"message": message, "code": int(code), **extra}
    atomic_write_text(folder / NEUROFLAME_ERROR, json.dumps(
        {"schema_version": 1, "error_type": extra.get("error_type", "VaefusionError"),
         "message": message, "scope": extra.get("scope", "vaefusion"),
         "origin": extra.get("origin", "central"), "stage": extra.get("stage", "execution")},
        indent=2))
    return write_json(folder / RUN_ERROR, record)


def read_error(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / RUN_ERROR
    if not path.is_file():
        return None
    return json.loads(path.read_text())
