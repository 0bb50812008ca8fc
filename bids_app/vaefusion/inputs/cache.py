"""The per-subject training cache: one float16 ``.npy`` stack and a JSON sidecar per subject.

Layout (under ``WORK_DIR/cache/``)::

    sub-01.npy          # float16, shape (n_modalities, X, Y, Z), each volume in [-1, 1]
    sub-01.json         # {"subject", "session", "modalities", "affine", "shape", "label", ...}
    sub-01_ses-1.npy    # when sessions exist, one stack per subject and session

The stack is written once with all modalities (ICNs first, then GMV) so that one subject is
read in a single disk access (``np.load(..., mmap_mode="r")``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaefusion.disk.io import atomic_save_npy, atomic_write_text
from vaefusion.disk.naming import cache_file, sidecar, subject_key


@dataclass
class SubjectMeta:
    """What the sidecar of one cached subject holds."""

    subject: str  # label without "sub-"
    session: str | None
    modalities: list[str]
    affine: list[list[float]]
    shape: list[int]  # spatial shape (X, Y, Z)
    label: str | None = None  # diagnosis value from participants.tsv
    sources: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """File stem: ``sub-01`` or ``sub-01_ses-1``."""
        return subject_key(self.subject, self.session)


def write_subject(cache_dir: Path, stack: np.ndarray, meta: SubjectMeta) -> Path:
    """Store a subject's stacked volumes as float16 plus its sidecar; returns the .npy path."""
    if stack.ndim != 4 or stack.shape[0] != len(meta.modalities):
        raise ValueError(
            f"stack shape {stack.shape} does not match {len(meta.modalities)} modalities"
        )
    npy = cache_file(cache_dir, meta.subject, meta.session)
    atomic_save_npy(npy, stack.astype(np.float16))
    # the sidecar is written last: its presence marks a complete cache entry
    atomic_write_text(sidecar(npy), json.dumps(asdict(meta), indent=2))
    return npy


def read_meta(npy_path: Path) -> SubjectMeta:
    data: dict[str, Any] = json.loads(sidecar(Path(npy_path)).read_text())
    return SubjectMeta(**data)


def load_stack(npy_path: Path, mmap: bool = True) -> np.ndarray:
    """The subject's (n_modalities, X, Y, Z) float16 stack, memory-mapped by default."""
    return np.load(npy_path, mmap_mode="r" if mmap else None)

