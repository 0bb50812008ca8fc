"""participants.tsv: the subjects' diagnosis labels, read strictly but only required where used.

The labels train the classifier, so only the group level without ``--model`` needs them. Every
level refuses a participants.tsv that exists but cannot be trusted (not UTF-8, no header,
no ``participant_id`` column, a participant listed twice); a missing file or a missing label
column is an error at the group level and a warning elsewhere.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np

from vaefusion.config import Config
from vaefusion.errors import DataError, MissingInputError, unreadable_input
from vaefusion.inputs.types import SubjectInputs

LOG = logging.getLogger("vaefusion.participants")


def labels_needed(cfg: Config) -> bool:
    """Whether this run trains a classifier (group level without ``--model``)."""
    return cfg.analysis_level == "group" and cfg.model is None


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a TSV; a UTF-8 byte-order mark (as Excel writes) is accepted."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            rows = list(reader)
            header = reader.fieldnames or []
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}); save it as UTF-8."
        ) from None
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
    return {pid: (row.get(cfg.label_column) or "").strip()
            for pid, row in zip(ids, rows, strict=True) if pid}


def classification_labels(subjects: list[SubjectInputs], cfg: Config) -> np.ndarray:
    """1 (patient) / 0 (control) of the subjects that a group run would classify.

    As the group manifest does: subjects with every modality, one session per participant,
    and a label equal to ``--positive-label`` or ``--negative-label``. Raises DataError when
    either class has fewer than 2 subjects, naming the label values that were found.
    """
    pool = [s for s in subjects if s.complete] or list(subjects)
    seen: set[str] = set()
    y: list[int] = []
    values: Counter[str] = Counter()
    for s in pool:
        if s.subject in seen:
            continue
        seen.add(s.subject)
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
