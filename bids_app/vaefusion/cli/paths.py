"""Where a run may write: the input is never written to, and the output and work folders
must be creatable outside it. Checked before anything is created, so that a refused run
leaves nothing behind."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from vaefusion.config import Config
from vaefusion.errors import MissingInputError, OutputError, UsageError, unreadable_input


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def creatable(path: Path) -> str | None:
    """Why ``path`` cannot be used as a folder to write in (None if it can); creates nothing."""
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a folder"
    base = _nearest_existing(path)
    if not base.is_dir():
        return f"{base} is a file, not a folder"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"{base} is not writable"
    return None


def default_work_dir(output_dir: Path) -> Path:
    """The work dir when ``-w`` is not given: never the current directory.

    ``OUTPUT_DIR/../<name>_work`` (next to the outputs, on the same disk, one per output
    dataset, so reruns resume), or, where that folder cannot be created (e.g. ``/out`` in a
    container), ``$TMPDIR/vaefusion_work_<uid>_<hash of OUTPUT_DIR>``.
    """
    sibling = output_dir.parent / f"{output_dir.name}_work"
    if creatable(sibling) is None:
        return sibling
    key = hashlib.sha1(str(output_dir).encode()).hexdigest()[:8]
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()).resolve() / f"vaefusion_work_{uid}_{key}"


def check_paths(cfg: Config) -> None:
    """The input must be a dataset folder; outputs and work must be creatable outside it.

    Nothing is created here (see :func:`run`), so a refused run leaves nothing behind.
    """
    assert cfg.bids_dir and cfg.output_dir and cfg.work_dir
    if not cfg.bids_dir.exists():
        raise MissingInputError(f"BIDS_DIR {cfg.bids_dir} does not exist; give the dataset root.")
    if not cfg.bids_dir.is_dir():
        raise MissingInputError(
            f"BIDS_DIR {cfg.bids_dir} is not a folder; give the dataset root folder (the one "
            f"holding dataset_description.json)."
        )
    description = cfg.bids_dir / "dataset_description.json"
    if os.path.lexists(description) and (bad := unreadable_input(description)) is not None:
        raise bad
    if not description.is_file():
        raise MissingInputError(
            f"{cfg.bids_dir / 'dataset_description.json'} is missing; BIDS_DIR must be the root "
            f"of a BIDS dataset."
        )
    for what, path in (("OUTPUT_DIR", cfg.output_dir), ("--work-dir", cfg.work_dir)):
        if path == cfg.bids_dir or cfg.bids_dir in path.parents:
            raise UsageError(
                f"{what} {path} is inside BIDS_DIR {cfg.bids_dir}; the input is never written "
                f"to, so choose a folder outside it."
            )
    for what, path in (("the output folder", cfg.output_dir), ("the work dir", cfg.work_dir)):
        why = creatable(path)
        if why:
            option = "OUTPUT_DIR" if path == cfg.output_dir else "-w/--work-dir"
            raise OutputError(f"Cannot write {what} {path} ({why}); give a writable {option}.")


def create_work_dir(cfg: Config) -> None:
    assert cfg.work_dir is not None
    try:
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the work dir {cfg.work_dir} ({exc.strerror}); give a "
                          f"writable --work-dir.") from None
