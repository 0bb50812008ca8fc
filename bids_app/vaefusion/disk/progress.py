"""A training unit's progress file (its epoch, and the GPU it leased): written by the unit,
wherever it runs (MultiProc, a cluster), and read by the run's status
(:class:`vaefusion.workflows.status.RunStatus`). On the ground floor, so that the interfaces
that run units and the workflow engine that reports them both use it without importing each
other."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from vaefusion.disk.io import write_json


def now() -> str:
    """The local time, as the status files write it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_unit_progress(path: Path, epoch: int, epochs: int, gpu: int | None = None) -> None:
    """A training unit's progress (epoch done of epochs, and the GPU it leased), for the
    parent's status file."""
    data: dict[str, Any] = {"epoch": int(epoch), "epochs": int(epochs), "pid": os.getpid(),
                            "updated": now()}
    if gpu is not None:
        data["gpu"] = int(gpu)
    write_json(path, data)


def read_unit_progress(path: Path | None) -> dict[str, Any] | None:
    """What :func:`write_unit_progress` wrote, or None (not yet, or unreadable)."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
