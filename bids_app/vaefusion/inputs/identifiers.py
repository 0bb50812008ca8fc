"""Identifiers read from users' tables: BIDS labels, and rows that are only whitespace.

Participant and session labels become parts of output paths, so they must be BIDS labels
(letters and digits: ``a/b`` would nest folders and ``../x`` leave the output folder); a row
of only tabs (as spreadsheets leave at the end of a table) is not a participant.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

from vaefusion.errors import DataError

LOG = logging.getLogger("vaefusion.inputs")

#: BIDS labels are alphanumeric; anything else (``../x``, ``a/b``) could escape a folder.
LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")


def is_label(value: str) -> bool:
    """Whether ``value`` is a BIDS label (letters and digits only, no prefix)."""
    return bool(LABEL_RE.match(value))


def _blank(row: dict[str, str | None]) -> bool:
    return not any(v.strip() for v in row.values() if isinstance(v, str))


def read_tsv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str | None]]]]:
    """The header and the (line number, row) pairs of a TSV, read as UTF-8 (a byte-order
    mark, as Excel writes, allowed); rows of only whitespace are dropped with a warning."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            rows = [(reader.line_num, row) for row in reader]
            header = list(reader.fieldnames or [])
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                        f"offset {exc.start}); save it as UTF-8.") from None
    kept = [(line, row) for line, row in rows if not _blank(row)]
    if len(kept) < len(rows):
        LOG.warning("%s has %d row(s) of only whitespace (as spreadsheets leave); they are "
                    "ignored", path, len(rows) - len(kept))
    return header, kept
