"""NeuroMark fMRI 1.0 reference data shipped as package data (never read from outside).

The 53 ICNs in template order, their domains and approximate peaks, the 10 mm template and
its mask, and the 3 mm grid that real NeuroMark subject maps live on.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

#: The 3 mm MNI grid of NeuroMark / GIFT (SPM's 3 mm template): 53 x 63 x 52 voxels.
GRID_SHAPE: tuple[int, int, int] = (53, 63, 52)


GRID_AFFINE: np.ndarray = np.array(
    [[-3.0, 0.0, 0.0, 78.0], [0.0, 3.0, 0.0, -112.0], [0.0, 0.0, 3.0, -70.0], [0, 0, 0, 1.0]]
)


N_ICN = 53


GMV_MODALITY = "GMV"


#: Domain colour/order used in figures.
DOMAINS: tuple[str, ...] = ("SC", "AUD", "SM", "VIS", "CC", "DM", "CB")


@dataclass(frozen=True)
class ICN:
    index: int  # 1-based, NeuroMark order
    domain: str
    label: str
    abbreviation: str
    peak_mm: tuple[float, float, float]

    @property
    def name(self) -> str:
        """Modality name used in outputs, e.g. ``ICN01``."""
        return f"ICN{self.index:02d}"


def data_path(name: str) -> Path:
    """Path of a packaged NeuroMark reference file."""
    return Path(str(resources.files("vaefusion") / "data" / "neuromark" / name))


@lru_cache(maxsize=1)
def icns() -> tuple[ICN, ...]:
    """The 53 NeuroMark ICNs in template order."""
    with open(data_path("neuromark_fMRI_1.0_icn_labels.tsv"), newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return tuple(
        ICN(
            index=int(r["index"]),
            domain=r["domain"],
            label=r["label"],
            abbreviation=r.get("abbreviation") or "",
            peak_mm=(float(r["peak_x_mm"]), float(r["peak_y_mm"]), float(r["peak_z_mm"])),
        )
        for r in rows
    )


def modality_names(n_icn: int = N_ICN, with_gmv: bool = True) -> list[str]:
    """Modality names in stacking order: ICNs first, then GMV."""
    names = [f"ICN{i:02d}" for i in range(1, n_icn + 1)]
    return names + [GMV_MODALITY] if with_gmv else names


def modality_domain(name: str) -> str:
    """NeuroMark domain of a modality name (``GM`` for gray matter, ``NA`` if unknown)."""
    if name == GMV_MODALITY:
        return "GM"
    if name.startswith("ICN") and name[3:].isdigit():
        idx = int(name[3:])
        table = icns()
        if 1 <= idx <= len(table):
            return table[idx - 1].domain
    return "NA"


def template_10mm_path() -> Path:
    return data_path("NeuroMark_fMRI_1.0_10mm.nii.gz")


def mask_10mm_path() -> Path:
    return data_path("NeuroMark_mask_10mm.nii.gz")


def citation() -> str:
    """Text for logs/CITATION.md."""
    return (
        "Results were generated with *vaefusion*, which fuses NeuroMark intrinsic connectivity "
        "network (ICN) maps and gray-matter volume with one shared 3D variational autoencoder.\n\n"
        "- Du Y. et al. (2020) NeuroMark: an automated and adaptive ICA based pipeline to "
        "identify reproducible fMRI markers of brain disorders. NeuroImage: Clinical 28:102375.\n"
        "- Kingma D.P., Welling M. (2014) Auto-Encoding Variational Bayes. ICLR.\n"
        "- Gorgolewski K.J. et al. (2017) BIDS apps. PLoS Comput Biol 13(3):e1005209.\n"
    )

