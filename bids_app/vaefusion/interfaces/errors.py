"""User-facing errors out of workflow nodes, which may run in other processes or on a cluster.

A node that fails with a :class:`VaefusionError` (or a full disk) leaves a small record, its
message and exit code, in its own folder before re-raising; the parent reads the records of
the nodes that failed in this run (:func:`node_errors`) and ends with that message and code
instead of nipype's generic "Workflow did not execute cleanly". The node still fails, so the
workflow engine caches nothing and a rerun retries it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vaefusion.disk import naming
from vaefusion.disk.io import atomic_write_text
from vaefusion.errors import VaefusionError, disk_full_error


@dataclass(frozen=True)
class NodeError:
    message: str
    code: int
    path: Path


@contextmanager
def reported_errors(cwd: str | Path) -> Iterator[None]:
    """Run a node's work; record a user-facing error in ``cwd`` before re-raising it."""
    record = Path(cwd) / naming.NODE_ERROR
    record.unlink(missing_ok=True)  # a failure of an earlier run of this node
    try:
        yield
    except VaefusionError as exc:
        _record(record, exc.message, exc.code)
        raise
    except OSError as exc:
        full = disk_full_error(exc)
        if full is None:
            raise
        _record(record, full.message, full.code)
        raise full from None


def _record(path: Path, message: str, code: int) -> None:
    try:
        atomic_write_text(path, json.dumps({"message": message, "code": int(code)}))
    except OSError:
        pass  # a full disk may refuse even this; the parent then checks the free space


def node_errors(root: Path, since: float) -> list[NodeError]:
    """The records written under ``root`` (a workflow's folder) at or after ``since``."""
    found = []
    for path in sorted(Path(root).rglob(naming.NODE_ERROR)):
        try:
            if path.stat().st_mtime < since:
                continue
            data = json.loads(path.read_text())
            found.append(NodeError(str(data["message"]), int(data["code"]), path))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found
