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


def default_work_dir(output_dir: Path, bids_dir: Path | None = None) -> Path:
    """The work dir when ``-w`` is not given: never the current directory.

    ``OUTPUT_DIR/../<name>_work`` (next to the outputs, on the same disk, one per output
    dataset, so reruns resume), or, where that folder cannot be created (e.g. ``/out`` in a
    container) or would be inside BIDS_DIR (an OUTPUT_DIR in ``BIDS_DIR/derivatives/``),
    ``$TMPDIR/vaefusion_work_<uid>_<hash of OUTPUT_DIR>``.
    """
    sibling = output_dir.parent / f"{output_dir.name}_work"
    inside_input = bids_dir is not None and _within(sibling, bids_dir)
    if creatable(sibling) is None and not inside_input:
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
        # BIDS_DIR/derivatives/<name> is where BIDS puts derivatives: an OUTPUT_DIR may be there
        nested = what == "OUTPUT_DIR" and _within(path, cfg.bids_dir / "derivatives") \
            and path != cfg.bids_dir / "derivatives"
        if _within(path, cfg.bids_dir) and not nested:
            raise UsageError(
                f"{what} {path} is inside BIDS_DIR {cfg.bids_dir}; the input is never written "
                f"to, so choose a folder outside it (an OUTPUT_DIR may be "
                f"{cfg.bids_dir / 'derivatives'}/<name>)."
            )
    for what, path in (("the output folder", cfg.output_dir), ("the work dir", cfg.work_dir)):
        why = creatable(path)
        if why:
            option = "OUTPUT_DIR" if path == cfg.output_dir else "-w/--work-dir"
            raise OutputError(f"Cannot write {what} {path} ({why}); give a writable {option}.")
    check_output_pipeline(cfg.output_dir)
    check_derivative_overlap(cfg)


def _within(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or inside it."""
    return path == folder or folder in path.parents


def check_derivative_overlap(cfg: Config) -> None:
    """OUTPUT_DIR and the work dir must be neither an input derivative dataset nor inside one:
    writing there would overwrite the inputs (its ``dataset_description.json`` first)."""
    from vaefusion.inputs.discovery import derivative_dirs

    assert cfg.output_dir and cfg.work_dir
    for dataset in derivative_dirs(cfg):
        dataset = dataset.resolve()
        for what, path in (("OUTPUT_DIR", cfg.output_dir), ("--work-dir", cfg.work_dir)):
            if _within(path, dataset):
                raise UsageError(f"{what} {path} is inside the input derivative dataset "
                                 f"{dataset}; inputs are never written to, so choose a folder "
                                 f"outside it.")


def check_output_pipeline(output_dir: Path) -> None:
    """An existing OUTPUT_DIR must be vaefusion's (or not a dataset yet): its
    ``dataset_description.json`` is rewritten, so another pipeline's, or a raw dataset's, is
    refused (exit 73)."""
    import json

    description = output_dir / "dataset_description.json"
    if not description.is_file():
        return
    try:
        data = json.loads(description.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise OutputError(f"OUTPUT_DIR {output_dir} holds a dataset_description.json that "
                          f"cannot be read ({exc}); give an empty folder or an earlier "
                          f"vaefusion output.") from None
    data = data if isinstance(data, dict) else {}
    makers = [g.get("Name") for g in data.get("GeneratedBy") or [] if isinstance(g, dict)]
    legacy = data.get("PipelineDescription")
    if isinstance(legacy, dict):
        makers.append(legacy.get("Name"))
    if "vaefusion" in makers:
        return
    what = (f"{', '.join(map(str, makers))}'s derivatives" if makers
            else f"a {data.get('DatasetType', 'raw')} dataset ({data.get('Name', 'unnamed')})")
    raise OutputError(f"OUTPUT_DIR {output_dir} holds {what}, not vaefusion's; its "
                      f"dataset_description.json would be overwritten, so give another "
                      f"OUTPUT_DIR (e.g. {output_dir.parent / 'vaefusion'}).")


def create_work_dir(cfg: Config) -> None:
    assert cfg.work_dir is not None
    try:
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the work dir {cfg.work_dir} ({exc.strerror}); give a "
                          f"writable --work-dir.") from None
