"""The group manifest: which cached subjects a group run has, their labels and modalities."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vaefusion.config import Config
from vaefusion.disk.io import atomic_write_text
from vaefusion.errors import DataError
from vaefusion.inputs.cache import read_meta

LOG = logging.getLogger("vaefusion.evaluation")


@dataclass
class Manifest:
    """The subjects of a group run.

    ``files`` are cache ``.npy`` paths of every subject; ``labels`` are 1 (patient), 0
    (control) or -1 (not classified: another label, no label, or missing modalities);
    ``modalities`` are those of the classified subjects; ``groups`` (``--cv-groups`` only) is
    each subject's value of that participants.tsv column (empty where not classified).
    """

    files: list[str]
    keys: list[str]
    labels: list[int]
    modalities: list[str]
    groups: list[str] | None = None

    @property
    def classified(self) -> np.ndarray:
        """Indices (into ``files``) of the subjects that take part in classification."""
        return np.flatnonzero(np.asarray(self.labels) >= 0)

    def y(self) -> np.ndarray:
        return np.asarray(self.labels)[self.classified]

    def cv_groups(self) -> np.ndarray | None:
        """The ``--cv-groups`` value of each classified subject (rows of :meth:`y`), or None."""
        if self.groups is None:
            return None
        return np.asarray(self.groups, dtype=str)[self.classified]

    def write(self, path: Path) -> bool:
        """Write unless an identical manifest is there (its timestamp keys nipype's cache)."""
        text = json.dumps(asdict(self), indent=1)
        if path.exists() and path.read_text() == text:
            return False
        atomic_write_text(path, text)
        return True

    @classmethod
    def read(cls, path: Path | str) -> Manifest:
        return cls(**json.loads(Path(path).read_text()))


def build_manifest(files: list[Path], cfg: Config) -> Manifest:
    """Labels from the cache sidecars; the full modality set is the most common one."""
    metas = [read_meta(f) for f in files]
    sets = [tuple(m.modalities) for m in metas]
    full = max(set(sets), key=lambda s: (len(s), sets.count(s)))
    labels = []
    seen: set[str] = set()
    for meta, mods in zip(metas, sets, strict=True):
        if meta.subject in seen:
            # folds are over participants: a second session in another fold would leak
            labels.append(-1)
            LOG.warning("%s is another session of sub-%s: embedded, not classified (pick the "
                        "session to classify with --session-label)", meta.key, meta.subject)
            continue
        if mods != full:
            labels.append(-1)
            LOG.warning("%s has %d of %d modalities: embedded, not classified", meta.key,
                        len(mods), len(full))
        elif meta.label == cfg.positive_label:
            labels.append(1)
            seen.add(meta.subject)
        elif meta.label == cfg.negative_label:
            labels.append(0)
            seen.add(meta.subject)
        else:
            labels.append(-1)
            LOG.warning("%s has label %r (not %s/%s): embedded, not classified", meta.key,
                     meta.label, cfg.positive_label, cfg.negative_label)
    n_pos, n_neg = labels.count(1), labels.count(0)
    if n_pos < 2 or n_neg < 2:
        raise DataError(
            f"Only {n_pos} {cfg.positive_label} and {n_neg} {cfg.negative_label} subjects have "
            f"all modalities; classification needs at least 2 of each (check --label-column, "
            f"--positive-label and --negative-label against participants.tsv)."
        )
    groups = None if cfg.cv_groups is None else _groups(metas, labels, cfg)
    return Manifest(files=[str(f) for f in files], keys=[m.key for m in metas], labels=labels,
                    modalities=list(full), groups=groups)


def _groups(metas: list, labels: list[int], cfg: Config) -> list[str]:
    """Each subject's ``--cv-groups`` value; DataError when a classified subject has none."""
    from vaefusion.inputs.participants import check_groups, read_groups

    table = read_groups(Path(cfg.bids_dir), cfg)
    groups = [table.get(m.subject, "") if y >= 0 else "" for m, y in zip(metas, labels,
                                                                         strict=True)]
    check_groups([m.key for m, y in zip(metas, labels, strict=True) if y >= 0],
                 [g for g, y in zip(groups, labels, strict=True) if y >= 0], cfg)
    return groups

