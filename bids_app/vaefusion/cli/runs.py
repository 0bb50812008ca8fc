"""Every run recorded in an OUTPUT_DIR: the participant jobs of an array share one output
folder, each with its own status file (``logs/status-<run id>.json``); the group level lists
them, so that a failed subject is seen before its absence is."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from vaefusion.disk import naming

LOG = logging.getLogger("vaefusion")


@dataclass(frozen=True)
class RunSummary:
    """One run as its status file tells it."""

    run_id: str
    level: str
    state: str
    exit_code: int | None
    subjects: tuple[str, ...]
    message: str | None

    def line(self) -> str:
        who = " ".join(f"sub-{s}" for s in self.subjects) or "all subjects"
        code = "" if self.exit_code is None else f" (exit {self.exit_code})"
        why = f": {self.message}" if self.message and self.exit_code else ""
        return f"{self.run_id or 'unnamed run'} {self.level} [{who}] {self.state}{code}{why}"


def recorded_runs(out: Path) -> list[RunSummary]:
    """The runs whose status files are in ``out/logs``, oldest first (unreadable ones
    skipped: a status file is a record, not an input)."""
    runs = []
    for path in sorted(naming.logs_dir(out).glob(naming.STATUS_PATTERN)):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        code = data.get("exit_code")
        runs.append(RunSummary(
            run_id=str(data.get("run_id") or naming.run_id_of(path)),
            level=str(data.get("level", "?")), state=str(data.get("state", "?")),
            exit_code=code if isinstance(code, int) else None,
            subjects=tuple(str(s) for s in data.get("participant_label") or ()),
            message=data.get("message")))
    return runs


def log_runs(out: Path, own: str) -> list[RunSummary]:
    """Log every other run recorded in ``out`` (one line each); a failed or unfinished one is
    a warning, since its subjects are missing from what the group level finds."""
    runs = [r for r in recorded_runs(out) if r.run_id != own]
    if runs:
        LOG.info("%d earlier run(s) on %s:", len(runs), out)
    for run in runs:
        ok = run.state == "succeeded"
        (LOG.info if ok else LOG.warning)("  %s", run.line())
    return runs
