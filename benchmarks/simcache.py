"""Shared by the benchmarks: simulate a dataset and preprocess it as the participant level does."""

from __future__ import annotations

import csv
from pathlib import Path


def simulate_and_cache(ds: Path, cache: Path, *sim_args: str) -> list[Path]:
    """Run ``vaefusion-simulate ds *sim_args`` and preprocess every subject into ``cache``;
    the cached stacks in ``participants.tsv`` order."""
    from vaefusion.cli.simulate import main as simulate
    from vaefusion.inputs.preprocess import preprocess_subject

    if simulate([str(ds), *sim_args]):
        raise SystemExit(f"vaefusion-simulate failed for {ds}")
    with open(ds / "participants.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    files = []
    for row in rows:
        sub = row["participant_id"].removeprefix("sub-")
        icn = next((ds / "derivatives" / "neuromark" / f"sub-{sub}").rglob("*.nii.gz"))
        gm = next((ds / "derivatives" / "spm" / f"sub-{sub}").rglob("*.nii.gz"))
        path, _ = preprocess_subject(str(icn), str(gm), sub, None, row["diagnosis"], cache)
        files.append(path)
    return files
