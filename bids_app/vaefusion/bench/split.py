"""Split one BIDS dataset into one dataset per site (a participants.tsv column): the
benchmark's and NeuroFLAME's test data, where a pooled dataset plays a consortium."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from vaefusion.disk.io import atomic_write_text
from vaefusion.errors import DataError


def split_by_column(ds: Path, out_root: Path, column: str = "site") -> dict[str, Path]:
    """``out_root/<value>``: a BIDS dataset with the participants whose ``column`` is
    ``value``, their raw folders and their folders in every ``derivatives/*`` dataset."""
    ds, out_root = Path(ds), Path(out_root)
    with open(ds / "participants.tsv", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        rows, header = list(reader), list(reader.fieldnames or [])
    if column not in header:
        raise DataError(f"{ds / 'participants.tsv'} has no '{column}' column to split by.")
    groups: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        groups.setdefault(row[column], []).append(row)
    derivatives = sorted(p for p in (ds / "derivatives").glob("*") if p.is_dir())
    out: dict[str, Path] = {}
    for value, members in sorted(groups.items()):
        site = out_root / value
        shutil.rmtree(site, ignore_errors=True)
        site.mkdir(parents=True)
        for item in ds.iterdir():  # dataset-level files (description, README, code/)
            if item.is_file() and item.name != "participants.tsv":
                shutil.copy2(item, site / item.name)
        lines = ["\t".join(header)] + ["\t".join(r[h] for h in header) for r in members]
        atomic_write_text(site / "participants.tsv", "\n".join(lines) + "\n")
        for src_root, dst_root in [(ds, site)] + [
                (d, site / "derivatives" / d.name) for d in derivatives]:
            dst_root.mkdir(parents=True, exist_ok=True)
            for f in src_root.iterdir():
                if f.is_file() and src_root != ds:
                    shutil.copy2(f, dst_root / f.name)
            for r in members:
                sub = src_root / r["participant_id"]
                if sub.is_dir():
                    shutil.copytree(sub, dst_root / r["participant_id"])
        out[value] = site
    return out
