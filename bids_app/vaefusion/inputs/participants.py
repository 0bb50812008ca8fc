"""participants.tsv: the subjects' diagnosis labels, read strictly but only required where used.

The labels train the classifier, so only the group level without ``--model`` needs them. Every
level refuses a participants.tsv that exists but cannot be trusted (not UTF-8, no header,
no ``participant_id`` column, a participant listed twice); a missing file or a missing label
column is an error at the group level and a warning elsewhere.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np

from vaefusion.config import Config
from vaefusion.errors import (
    DataError,
    MissingInputError,
    UsageError,
    option_file_error,
    unreadable_input,
)
from vaefusion.inputs.identifiers import read_tsv
from vaefusion.inputs.types import SubjectInputs

LOG = logging.getLogger("vaefusion.participants")


def labels_needed(cfg: Config) -> bool:
    """Whether this run trains a classifier (group level without ``--model``)."""
    return cfg.analysis_level == "group" and cfg.model is None


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a TSV; a UTF-8 byte-order mark (as Excel writes) is accepted."""
    header, numbered = read_tsv(path)
    rows = [row for _, row in numbered]
    if not header:
        raise DataError(
            f"{path} is empty; give it a header row (participant_id, then the diagnosis column) "
            f"and one row per subject."
        )
    if "participant_id" not in header:
        raise DataError(
            f"{path} has no participant_id column (columns: {', '.join(header)}); add one with "
            f"values like sub-01."
        )
    return header, rows


def read_participants(bids_dir: Path, cfg: Config, warn: bool = True) -> dict[str, str]:
    """Participant label (no ``sub-``) -> value of ``cfg.label_column``.

    Returns an empty mapping when the file or the column is absent and labels are not needed
    (with a warning unless ``warn`` is false); raises a user error when they are.
    """
    path = bids_dir / "participants.tsv"
    need = labels_needed(cfg)
    if os.path.lexists(path) and (bad := unreadable_input(path)) is not None:
        raise bad  # there but unusable (a dangling link, a folder): refused at every level
    if not path.is_file():
        if need:
            raise MissingInputError(
                f"{path} is missing; the group level needs it to train the classifier (columns "
                f"participant_id and {cfg.label_column})."
            )
        if warn:
            LOG.warning("%s is missing: subjects have no diagnosis label (fine for the %s level; "
                        "the group level needs it).", path, cfg.analysis_level)
        return {}
    header, rows = _read_rows(path)
    ids = [(row.get("participant_id") or "").strip().removeprefix("sub-") for row in rows]
    repeated = sorted(pid for pid, n in Counter(ids).items() if n > 1)
    if repeated:
        raise DataError(
            f"{path} lists sub-{repeated[0]} more than once"
            f"{f' (and {len(repeated) - 1} other participant(s))' if len(repeated) > 1 else ''}; "
            f"keep one row per participant."
        )
    if cfg.label_column not in header:
        columns = ", ".join(header)
        if need:
            raise DataError(
                f"{path} has no '{cfg.label_column}' column, which the group level needs to "
                f"train the classifier; add it, or name the diagnosis column with --label-column "
                f"(columns: {columns})."
            )
        if warn:
            LOG.warning("%s has no '%s' column: subjects have no diagnosis label (fine for the "
                        "%s level; the group level needs it, or --label-column).", path,
                        cfg.label_column, cfg.analysis_level)
        return {}
    mapping = load_diagnosis_map(cfg.diagnosis_map)
    labels = {}
    for pid, row in zip(ids, rows, strict=True):
        if pid:
            value = (row.get(cfg.label_column) or "").strip()
            labels[pid] = mapping.get(value, value)
    check_near_misses(labels, cfg, path, need, warn)
    return labels


def read_groups(bids_dir: Path, cfg: Config) -> dict[str, str]:
    """``--cv-groups``: participant label (no ``sub-``) -> value of that participants.tsv column
    (empty where blank or ``n/a``); DataError (exit 65) when the file or the column is absent."""
    path = bids_dir / "participants.tsv"
    if not path.is_file():
        raise DataError(f"--cv-groups {cfg.cv_groups} needs {path} with a '{cfg.cv_groups}' "
                        f"column; add the file or leave --cv-groups out.")
    header, rows = _read_rows(path)
    if cfg.cv_groups not in header:
        raise DataError(
            f"{path} has no '{cfg.cv_groups}' column for --cv-groups (columns: "
            f"{', '.join(header)}); add it or name another column with --cv-groups."
        )
    groups = {}
    for row in rows:
        pid = (row.get("participant_id") or "").strip().removeprefix("sub-")
        value = (row.get(cfg.cv_groups) or "").strip()
        if pid:
            groups[pid] = "" if value == "n/a" else value
    return groups


def load_diagnosis_map(path: Path | None) -> dict[str, str]:
    """``--diagnosis-map``: a JSON object of participants.tsv value -> label (exit 64 if not)."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise option_file_error("--diagnosis-map", path, exc, "JSON") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--diagnosis-map {path} is not valid JSON ({exc}); fix its "
                         f"syntax.") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise UsageError(f"--diagnosis-map {path} must be a JSON object of value -> label "
                         f"strings, e.g. {{\"sz\": \"SZ\"}}.")
    return {str(k).strip(): v.strip() for k, v in data.items()}


def _canonical(value: str) -> str:
    """A value without case, spaces and number form: ``' Sz'`` -> ``sz``, ``1.0`` -> ``1``."""
    text = "".join(value.split()).casefold()
    try:
        number = float(text)
    except ValueError:
        return text
    return repr(number) if math.isfinite(number) else text


def check_near_misses(labels: dict[str, str], cfg: Config, path: Path, need: bool,
                      warn: bool = True) -> None:
    """Values that differ from ``--positive-label`` or ``--negative-label`` only by case,
    spaces or number form (``sz``, ``1.0``) would silently leave subjects out of the
    classification: exit 65 with counts and a suggestion where labels are needed, else a
    warning."""
    classes = {_canonical(c): c for c in (cfg.positive_label, cfg.negative_label)}
    misses = Counter(v for v in labels.values()
                     if v not in classes.values() and _canonical(v) in classes)
    if not misses:
        return
    said = "; ".join(f"{n} subject{'s have' if n > 1 else ' has'} '{v}' (did you mean "
                     f"{classes[_canonical(v)]}?)" for v, n in sorted(misses.items()))
    first = min(misses)
    text = (f"{path}: {said}; correct column '{cfg.label_column}' or say what the values mean "
            f"with --diagnosis-map FILE (JSON, e.g. {{\"{first}\": "
            f"\"{classes[_canonical(first)]}\"}}).")
    if need:
        raise DataError(text)
    if warn:
        LOG.warning("%s (not needed at the %s level)", text, cfg.analysis_level)


def _first_sessions(subjects: list[SubjectInputs]) -> list[SubjectInputs]:
    """The subjects that a group run would consider: those with every input (all when none
    has), one session per participant (the first), as the group manifest does."""
    pool = [s for s in subjects if s.complete] or list(subjects)
    seen: set[str] = set()
    first = []
    for s in pool:
        if s.subject not in seen:
            seen.add(s.subject)
            first.append(s)
    return first


def classification_groups(subjects: list[SubjectInputs], cfg: Config) -> np.ndarray:
    """The ``--cv-groups`` value of each subject of :func:`classification_labels`, in order."""
    table = read_groups(cfg.bids_dir, cfg)
    chosen = [s for s in _first_sessions(subjects)
              if s.label in (cfg.positive_label, cfg.negative_label)]
    groups = [table.get(s.subject, "") for s in chosen]
    check_groups([s.key for s in chosen], groups, cfg)
    return np.asarray(groups, dtype=str)


def check_groups(keys: list[str], groups: list[str], cfg: Config) -> None:
    """DataError when a classified subject (``keys``) has no ``--cv-groups`` value."""
    blank = [k for k, g in zip(keys, groups, strict=True) if not g]
    if blank:
        raise DataError(
            f"{cfg.bids_dir / 'participants.tsv'} gives no '{cfg.cv_groups}' value for "
            f"{blank[0]}{f' and {len(blank) - 1} other subject(s)' if len(blank) > 1 else ''}"
            f"; fill in column '{cfg.cv_groups}' for every classified subject."
        )


def classification_labels(subjects: list[SubjectInputs], cfg: Config) -> np.ndarray:
    """1 (patient) / 0 (control) of the subjects that a group run would classify.

    As the group manifest does: subjects with every modality, one session per participant,
    and a label equal to ``--positive-label`` or ``--negative-label``. Raises DataError when
    either class has fewer than 2 subjects, naming the label values that were found.
    """
    seen = _first_sessions(subjects)
    y: list[int] = []
    values: Counter[str] = Counter()
    for s in seen:
        values[s.label or "n/a"] += 1
        if s.label == cfg.positive_label:
            y.append(1)
        elif s.label == cfg.negative_label:
            y.append(0)
    n_pos, n_neg = y.count(1), y.count(0)
    if n_pos < 2 or n_neg < 2:
        found = ", ".join(f"{v} ({n})" for v, n in sorted(values.items()))
        raise DataError(
            f"{cfg.bids_dir / 'participants.tsv'} gives {n_pos} {cfg.positive_label} and "
            f"{n_neg} {cfg.negative_label} among the {len(seen)} selected participants with all "
            f"inputs (column '{cfg.label_column}' holds {found}); the group level needs at least "
            f"2 of each: check --label-column, --positive-label and --negative-label."
        )
    return np.asarray(y, dtype=int)
