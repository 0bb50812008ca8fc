"""Atomic writers: every output appears complete or not at all (temp file + rename).

TSV cells follow BIDS (``n/a`` for missing values).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

from vaefusion.errors import FULL_DISK_ERRNOS


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (thread-safe)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mkstemp(path: Path, suffix: str) -> tuple[int, str]:
    """mkstemp beside ``path``, with the mode a plain open() would give (mkstemp's is 0600).

    The temporary name is hidden and ends in ``.part`` (``.sub-01.json.x1y2.part``), so that a
    file left by a killed run never looks complete, to people or to the BIDS validator.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def full_disk(exc: BaseException, path: Path, nbytes: int) -> OSError | None:
    """``OSError(ENOSPC)`` naming ``path`` when writing ``nbytes`` there failed for lack of
    space but the library said so unclearly, else None.

    A full disk reaches Python as ``OSError(ENOSPC)`` from plain writes, but numpy raises an
    ``OSError`` without errno ("1000 requested and 262 written"), torch a ``RuntimeError``
    ("unexpected pos") and safetensors its own error ("os error 28"); the free space left on
    the disk decides.
    """
    if isinstance(exc, OSError) and exc.errno in FULL_DISK_ERRNOS:
        return None  # says so already
    text = str(exc)
    if "os error 28" in text or "No space left" in text:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    if not isinstance(exc, (OSError, RuntimeError)):
        return None
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        return None
    if free < nbytes:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None


def _name_target(exc: BaseException, path: Path, tmp: str | Path) -> None:
    """An OSError from writing a temporary file names the file it was meant to become."""
    if isinstance(exc, OSError) and exc.filename in (None, str(tmp)):
        exc.filename = str(path)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Write an ``.npy`` so that readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _mkstemp(path, ".npy.part")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        _name_target(exc, path, tmp)
        full = full_disk(exc, path, np.asarray(array).nbytes)
        if full is not None:
            raise full from exc
        raise


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an uncompressed ``.npz`` of named arrays atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _mkstemp(path, ".npz.part")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        _name_target(exc, path, tmp)
        full = full_disk(exc, path, sum(np.asarray(a).nbytes for a in arrays.values()))
        if full is not None:
            raise full from exc
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write text atomically (temp file in the same directory, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _mkstemp(path, ".part")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        _name_target(exc, path, tmp)
        raise


def write_nifti_atomic(path: Path, img: nib.Nifti1Image) -> None:
    """Save a NIfTI through a temporary name and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part{suffix}")
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _name_target(exc, path, tmp)
        full = full_disk(exc, path, 0)
        if full is not None:
            raise full from exc
        raise


#: the lock files each thread of this process holds (:func:`locked`)
_HELD = threading.local()


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block: concurrent runs
    on one OUTPUT_DIR (a cluster array) take turns at reading and rewriting a shared file.

    ``flock`` is advisory and per open file, so it serialises processes on one host and, where
    the file system supports it (NFSv4, Lustre, GPFS), across hosts; where it is refused the
    block runs unlocked, as atomic writes still leave every file whole. Re-entrant within a
    process (a second ``flock`` on another descriptor of the same file would wait forever).
    """
    import fcntl

    key = os.path.abspath(path)
    held = _HELD.__dict__.setdefault("paths", set())
    if key in held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError:  # e.g. ENOLCK on a file system without locks
            pass
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
            try:
                fcntl.flock(fh, fcntl.LOCK_UN)
            except OSError:
                pass


def _cell(value: object) -> str:
    """A TSV cell: ``n/a`` for missing or NaN (BIDS), floats with 6 significant digits."""
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def tsv_text(rows: list[dict], columns: list[str]) -> str:
    """Rows (dicts) as tab-separated text with a header; missing keys become ``n/a``."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buf.getvalue()


def write_tsv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    """A TSV (header ``columns``, one line per row), written atomically."""
    atomic_write_text(path, tsv_text(rows, columns))
    return path


def write_json(path: Path, data: object) -> Path:
    """Indented JSON with a final newline, written atomically (serialized before the file is
    opened, so a value JSON cannot hold leaves the old file as it was)."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path
