"""Every output and cache file name is built here, from BIDS entities (as fMRIPrep's
``DerivativesDataSink`` does); no other module spells a ``sub-``/``ses-`` name."""

from __future__ import annotations

from pathlib import Path


def subject_key(subject: str, session: str | None = None) -> str:
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


def subject_dir(out: Path, subject: str, session: str | None) -> Path:
    path = out / f"sub-{subject}"
    return path / f"ses-{session}" if session else path


def entity_prefix(subject: str, session: str | None) -> str:
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")

