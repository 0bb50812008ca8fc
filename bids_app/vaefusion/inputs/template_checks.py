"""Inputs that look right but are wrong: checks of each subject against the NeuroMark template.

- **ICN identity**: volume k of a subject's ICN file must correlate best with NeuroMark
  component k (GIFT's sorted output or another template's 53 components would not).
- **GMV space**: the grey matter must lie inside the NeuroMark brain mask and overlap the
  MNI152 grey-matter template (a native-space or misregistered map does not).

Both are cheap (they run for every subject): the ICN maps are sampled at the 10 mm template's
in-brain voxel centres, and the GMV check reuses the GMV already resampled onto the ICN grid.
The thresholds come from ``benchmarks/input_sanity.py`` (recorded in docs/reliability.md).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from vaefusion.errors import DataError
from vaefusion.inputs.reference import N_ICN, data_path, mask_10mm_path, template_10mm_path
from vaefusion.inputs.resample import resample_to_grid

LOG = logging.getLogger("vaefusion.inputs")

#: A volume is mismatched when another template component correlates better than its own by
#: more than this (benchmarks/input_sanity.py: simulated subjects of every arm and the real
#: template at most +0.03; permuted or swapped volumes and random maps +0.28 and more).
ICN_MARGIN = 0.15
#: ... or when its own component correlates less than this (simulated volumes down to 0.17:
#: noisy maps of weak components, so this catches only sign flips and unrelated maps).
ICN_MIN_R = 0.05
#: Mismatched volumes a subject may have with a warning instead of a stop: one network can
#: be displaced enough to resemble a neighbour (the simulator's shift arm at 9 mm: +0.19),
#: while a permuted, swapped or foreign set mismatches two volumes or more.
ICN_TOLERATED = 1
#: Least fraction of the grey matter inside the NeuroMark brain mask (MNI GM: 0.87 and more;
#: the origin at a corner: 0.00; rotated, rescaled and moved 30 mm: 0.65).
GM_MIN_INSIDE = 0.75
#: Least correlation with the MNI152 GM template (MNI GM: 0.86 and more; shifted by 12 mm or
#: more, or native-like: 0.755 and less).
GM_MIN_R = 0.76
#: ... below this (but above GM_MIN_R) a map is probably in another MNI template, or shifted
#: by a few mm (9 mm: 0.76 to 0.82): warn once.
GM_WARN_R = 0.8

#: The ``space-`` labels NeuroMark's MNI grid matches (SPM's and FSL's MNI templates).
TEMPLATE_SPACES = frozenset({"MNI152NLin6Asym", "MNI152Lin", "IXI549Space", "MNI"})
#: ``space-`` labels that are not a standard space at all: native images.
NATIVE_SPACES = frozenset({"T1w", "T2w", "anat", "func", "native", "orig", "scanner",
                           "individual", "fsnative", "boldref"})

_SPACE = re.compile(r"_space-([A-Za-z0-9]+)")


@lru_cache(maxsize=1)
def _icn_template() -> tuple[np.ndarray, np.ndarray]:
    """The 10 mm NeuroMark template's in-mask voxels: (world mm (m, 3), z-scored maps (53, m))."""
    img = nib.load(template_10mm_path())
    mask = np.asarray(nib.load(mask_10mm_path()).dataobj) > 0
    ijk = np.argwhere(mask)
    world = ijk @ img.affine[:3, :3].T + img.affine[:3, 3]
    maps = np.asarray(img.dataobj, dtype=np.float64)[mask].T
    return world, _zscore(maps)


def _zscore(rows: np.ndarray) -> np.ndarray:
    rows = rows - rows.mean(axis=1, keepdims=True)
    sd = np.sqrt((rows**2).mean(axis=1, keepdims=True))
    return rows / np.where(sd > 0, sd, 1.0)


#: FWHM (mm) the subject maps are smoothed to before sampling: the template's voxel size
TEMPLATE_FWHM_MM = 10.0


def _block_mean(icn: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxels averaged in blocks of about 6 mm (2 x 2 x 2 at 3 mm): 8 times less to smooth,
    and the average is part of the smoothing anyway. Returns the maps and their affine."""
    vox = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    b = max(1, int(6.0 // float(vox.max())))
    if b == 1:
        return icn, affine
    x, y, z = (n // b * b for n in icn.shape[:3])
    blocks = icn[:x, :y, :z].reshape(x // b, b, y // b, b, z // b, b, -1)
    step = np.diag([b, b, b, 1.0])
    step[:3, 3] = (b - 1) / 2.0  # the block's centre, in the old voxels
    return blocks.mean(axis=(1, 3, 5)), affine @ step


def icn_correlations(icn: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Correlation of each subject volume (rows, ``icn`` is X x Y x Z x n) with each of the 53
    template components (columns), over the template's in-brain 10 mm voxel centres."""
    world, template = _icn_template()
    maps, aff = _block_mean(np.asarray(icn, dtype=np.float32), np.asarray(affine, float))
    ijk = (world - aff[:3, 3]) @ np.linalg.inv(aff[:3, :3]).T
    # each map is smoothed to about the template's 10 mm before sampling, so that one voxel's
    # noise does not stand for a 10 mm cube (a block mean already smoothed by its width)
    vox = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    done = (vox - np.sqrt((affine[:3, :3] ** 2).sum(axis=0))) / np.sqrt(12.0)
    sigma = np.sqrt(np.clip((TEMPLATE_FWHM_MM / 2.355) ** 2 - done**2, 0.0, None)) / vox
    sampled = np.stack([
        ndimage.map_coordinates(ndimage.gaussian_filter(maps[..., k], sigma, mode="constant"),
                                ijk.T, order=1, mode="constant")
        for k in range(maps.shape[3])
    ])
    return _zscore(sampled) @ template.T / template.shape[1]


@dataclass(frozen=True)
class IcnMismatch:
    volume: int  # 1-based
    best: int  # 1-based template component it correlates best with
    r_own: float
    r_best: float


def icn_mismatches(r: np.ndarray, order: list[int] | None = None) -> list[IcnMismatch]:
    """The volumes of a correlation matrix (:func:`icn_correlations`) that are not their
    template component: another correlates better by more than :data:`ICN_MARGIN`, or their
    own less than :data:`ICN_MIN_R`. ``order[k]`` (1-based) is volume k's component when the
    volumes are documented as reordered."""
    own_idx = np.asarray(order) - 1 if order else np.arange(r.shape[0])
    out = []
    for k, own in enumerate(own_idx):
        best = int(np.argmax(r[k]))
        r_own = float(r[k, own])
        if r[k, best] - r_own > ICN_MARGIN or r_own < ICN_MIN_R:
            out.append(IcnMismatch(k + 1, best + 1, r_own, float(r[k, best])))
    return out


def read_icn_order(path: Path) -> list[int]:
    """``--icn-order``: whole numbers separated by spaces, commas or lines (exit 64 if not)."""
    from vaefusion.errors import UsageError, option_file_error

    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise option_file_error("--icn-order", path, exc, "text") from None
    except UnicodeDecodeError:
        raise UsageError(f"--icn-order {path} is not UTF-8 text; save it as text.") from None
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise UsageError(f"--icn-order {path} must hold whole numbers (the NeuroMark component "
                         f"of each volume, e.g. 12 3 7 ...), separated by spaces, commas or "
                         f"lines.") from None


def check_icn_identity(icn: np.ndarray, affine: np.ndarray, path: str, subject: str) -> None:
    """Exit 65 when a subject's ICN volumes are not NeuroMark's components in template order."""
    if icn.shape[3] > N_ICN:
        raise DataError(f"{path}: {subject} has {icn.shape[3]} ICN volumes but the NeuroMark "
                        f"fMRI 1.0 template has {N_ICN} components; give NeuroMark's maps.")
    bad = icn_mismatches(icn_correlations(icn, affine))
    if not bad:
        return
    m = bad[0]
    looks = (f"looks like template component {m.best} (r = {m.r_best:.2f}, against "
             f"{m.r_own:.2f} with component {m.volume})" if m.best != m.volume else
             f"matches no NeuroMark component (r = {m.r_own:.2f} with component {m.volume})")
    if len(bad) <= ICN_TOLERATED < icn.shape[3] - 1:
        LOG.warning("%s: %s's volume %d %s; only this volume, so the maps are taken to be "
                    "NeuroMark's in its order (a displaced network can look like a neighbour).",
                    path, subject, m.volume, looks)
        return
    raise DataError(
        f"{path}: {subject}'s volume {m.volume} {looks}, and {len(bad)} of {icn.shape[3]} "
        f"volumes do not match their NeuroMark fMRI 1.0 component; give the maps of the "
        f"NeuroMark template in its order, or their order with --icn-order (maps of another "
        f"ICA cannot be used).")


@lru_cache(maxsize=8)
def _gm_reference(shape: tuple[int, int, int], affine_key: tuple[float, ...]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The MNI152 GM template and the NeuroMark brain mask on an ICN grid (cached per grid)."""
    affine = np.asarray(affine_key).reshape(4, 4)
    gimg = nib.load(gm_template_path())
    gm = resample_to_grid(np.asarray(gimg.dataobj, dtype=np.float32) * gimg.dataobj.slope,
                          gimg.affine, affine, shape)
    mimg = nib.load(mask_10mm_path())
    mask = resample_to_grid(np.asarray(mimg.dataobj, dtype=np.float32), mimg.affine, affine,
                            shape) > 0.5
    return gm, mask


def gm_template_path() -> Path:
    return data_path("MNI152_GM_3mm.nii.gz")


@dataclass(frozen=True)
class GmScores:
    inside: float  # fraction of the GM mass inside the NeuroMark brain mask
    r: float  # correlation with the MNI152 GM template on the ICN grid


def gm_scores(gmv: np.ndarray, gmv_affine: np.ndarray, on_grid: np.ndarray,
              grid_affine: np.ndarray) -> GmScores:
    """Scores of one GMV map: ``gmv`` on its own grid, ``on_grid`` the same resampled onto the
    ICN grid (whose voxels outside the field of view are lost, so the total comes from
    ``gmv``)."""
    template, mask = _gm_reference(on_grid.shape, tuple(np.asarray(grid_affine, float).ravel()))
    vol = abs(np.linalg.det(np.asarray(gmv_affine)[:3, :3]))
    grid_vol = abs(np.linalg.det(np.asarray(grid_affine)[:3, :3]))
    total = float(np.clip(gmv, 0, None).sum(dtype=np.float64)) * vol
    inside = float(np.clip(on_grid[mask], 0, None).sum(dtype=np.float64)) * grid_vol
    a, b = on_grid.ravel().astype(np.float64), template.ravel().astype(np.float64)
    r = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 else 0.0
    return GmScores(min(inside / total, 1.0) if total > 0 else 0.0, r)


def space_label(path: str) -> str | None:
    """The ``space-`` entity of a file name, or None."""
    m = _SPACE.search(Path(path).name)
    return m.group(1) if m else None


_warned_spaces: set[str] = set()


def check_gmv_space(gmv: np.ndarray, gmv_affine: np.ndarray, on_grid: np.ndarray,
                    grid_affine: np.ndarray, path: str, subject: str) -> GmScores:
    """Exit 65 for a GMV map in native space or misregistered; a warning (once per run) for a
    map that fits but less well than NeuroMark's MNI space (another MNI template)."""
    space = space_label(path)
    if space in NATIVE_SPACES:
        raise DataError(f"{path} is in space-{space}, not MNI; give {subject}'s grey matter "
                        f"normalised to MNI (SPM's smwc1 output).")
    s = gm_scores(gmv, gmv_affine, on_grid, grid_affine)
    if s.inside < GM_MIN_INSIDE or s.r < GM_MIN_R:
        raise DataError(
            f"{path}: only {s.inside:.0%} of {subject}'s grey matter lies inside the NeuroMark "
            f"brain mask and it correlates {s.r:.2f} with the MNI152 grey-matter template "
            f"(MNI maps: at least {GM_MIN_INSIDE:.0%} and {GM_MIN_R}), so it is in native "
            f"space or misregistered; give the grey matter normalised to MNI.")
    other = space is not None and space not in TEMPLATE_SPACES
    key = space or "?"
    if (other or s.r < GM_WARN_R) and key not in _warned_spaces:
        _warned_spaces.add(key)
        LOG.warning("%s (space-%s) correlates %.2f with the MNI152 grey-matter template; it is "
                    "probably another MNI template than NeuroMark's, which shifts the grey "
                    "matter by a few mm against the ICNs (warned once)", path, key, s.r)
    return s
