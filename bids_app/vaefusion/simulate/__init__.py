"""Simulated NeuroMark ICN + gray-matter BIDS datasets with planted patient-control effects.

The ICN shapes are the real NeuroMark fMRI 1.0 template (packaged at 10 mm) resampled onto the
ICN grid; the gray matter is the MNI152 GM probability map that nilearn ships. Subjects vary in
the style of SimTB (Erhardt et al. 2012): per-component translation, rotation, spread (isotropic
scaling about the peak) and amplitude, plus spatially smooth Gaussian noise and a site effect.
Patients get LOCAL effects (a Gaussian blob that changes an ICN near its peak, or the GM around a
coordinate), because the app scales every volume by its own maximum absolute value, which
would erase a global amplitude change.

Everything random comes from numpy Generators seeded from ``(seed, stream, subject, session)``,
so the same seed gives byte-identical files; a subject's maps come from its own streams (the
demographics and diagnosis assignment from one stream for the whole sample).

Output layout (``OUT`` = the raw BIDS root; ``[ses-K]`` only with ``sessions > 0``):

- ``OUT/participants.tsv`` (participant_id, diagnosis SZ/HC, age, sex, site), ``.json``
- ``OUT/sub-XX[/ses-K]/anat/sub-XX[_ses-K]_T1w.nii.gz`` (the MNI152 T1 at 4 mm, a placeholder)
- ``OUT/derivatives/neuromark/sub-XX[/ses-K]/func/
  sub-XX[_ses-K]_task-rest_space-MNI152NLin6Asym_res-<R>_desc-neuromark_components.nii.gz``
  (4D float32, one volume per ICN in NeuroMark order; ``<R>`` = :func:`res_label`)
- ``OUT/derivatives/spm/sub-XX[/ses-K]/anat/
  sub-XX[_ses-K]_space-MNI152NLin6Asym_label-GM_desc-smwc1_probseg.nii.gz`` (3D, GM grid)
- native names: ``OUT/derivatives/gift/neuromark_sub001_component_ica_s1_.nii`` with
  ``gift_subjects.tsv`` (gift_index, participant_id, session_id, gift_session), and
  ``OUT/derivatives/cat12/sub-XX[/ses-K]/anat/smwc1sub-XX[_ses-K]_T1w.nii``
- ``OUT/code/simulation.json``: the ground truth (config, grids, effects, participants, files).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from vaefusion import __version__
from vaefusion.errors import OutputError, UsageError, VaefusionError
from vaefusion.inputs import reference

SPACE = "MNI152NLin6Asym"


BIDS_VERSION = "1.10.0"


CODE_URL = "https://github.com/vaefusion/vaefusion"


GIFT_PREFIX = "neuromark"


NAMINGS = ("bids", "native", "both")


GM_NATIVE_PREFIXES = ("smwc1", "mwc1", "mwp1", "smwp1")


#: SPM12 Segment's default bounding box for normalised tissue maps (121x145x121 at 1.5 mm).
GM_BBOX_MM = ((-90.0, -126.0, -72.0), (90.0, 90.0, 108.0))


#: GM values below this are written as 0 (far tails of the smoothing kernel).
GM_FLOOR = 1e-5


#: Voxel size of the placeholder raw T1w (only there so the raw dataset is valid).
T1W_RES_MM = 4.0


#: Centre of rotation/scaling for the whole-brain GM jitter (roughly the brain's centre).
BRAIN_CENTER_MM = (0.0, -18.0, 10.0)


GROUND_TRUTH = Path("code") / "simulation.json"


_NILEARN_DATA = ("datasets", "data")


_GM_FILE = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"


_T1_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


# Random streams: (seed, stream, ...) keeps every draw independent of the others.
_STREAM_DEMOGRAPHICS, _STREAM_SITES, _STREAM_SUBJECT, _STREAM_SESSION = 0, 1, 2, 3


@dataclass(frozen=True)
class IcnEffect:
    """Patients' ICN ``index`` (1-based) is multiplied by ``1 + strength * blob`` around its
    peak; the blob is a Gaussian whose half maximum lies ``radius_mm`` from the centre."""

    index: int
    strength: float
    radius_mm: float = 8.0


@dataclass(frozen=True)
class GmEffect:
    """Patients' GM is multiplied by ``1 + strength * blob`` around ``center_mm`` (MNI mm);
    half maximum at ``radius_mm``."""

    center_mm: tuple[float, float, float]
    radius_mm: float
    strength: float


#: Defaults: reduced network strength near the peak of the anterior cingulate (DMN, ICN45)
#: and the insula (CC, ICN27) networks, and reduced GM in the left anterior insula and left
#: superior temporal gyrus, as often reported in schizophrenia. Sized (after per-volume
#: max-abs scaling) to be found voxelwise with about 20-40 subjects.
DEFAULT_ICN_EFFECTS: tuple[IcnEffect, ...] = (
    IcnEffect(45, -0.5, 8.0),
    IcnEffect(27, -0.5, 8.0),
)


DEFAULT_GM_EFFECTS: tuple[GmEffect, ...] = (
    GmEffect((-38.0, 12.0, 0.0), 12.0, -0.25),
    GmEffect((-54.0, -20.0, 6.0), 12.0, -0.25),
)


@dataclass(frozen=True)
class SimulationConfig:
    """Every choice of a simulation; ``simulation.json`` records it."""

    n_subjects: int = 20
    seed: int = 0
    patient_fraction: float = 0.5
    n_sites: int = 3
    sessions: int = 0
    icn_res: float = 3.0
    gm_res: float = 1.5
    n_components: int = reference.N_ICN
    icn_effects: tuple[IcnEffect, ...] | None = None  # None: the defaults that fit
    gm_effects: tuple[GmEffect, ...] | None = None  # None: the defaults
    effect_size: float = 1.0
    effect_variability: float = 0.2  # sd of the per-patient multiplier of every effect
    noise: float = 1.0  # multiplies every noise standard deviation below
    icn_noise: float = 0.12  # smooth noise sd, relative to each template map's max |value|
    icn_noise_fwhm_mm: float = 6.0
    gm_noise: float = 0.05  # sd of the smooth multiplicative regional GM variability
    gm_noise_fwhm_mm: float = 12.0
    gm_fwhm_mm: float = 8.0  # SPM smoothing of mwc1 into smwc1
    translation_mm: float = 1.0  # sd per axis, once per subject and again per component
    rotation_deg: float = 1.5  # sd per axis, per component, about its peak
    spread: float = 0.05  # sd of log isotropic scale per component, about its peak
    amplitude: float = 0.2  # sd of log amplitude per component
    naming: str = "bids"
    gm_native_prefix: str = "smwc1"

    def resolved_icn_effects(self) -> tuple[IcnEffect, ...]:
        """The ICN effects that apply (defaults outside ``n_components`` are dropped)."""
        if self.icn_effects is None:
            return tuple(e for e in DEFAULT_ICN_EFFECTS if e.index <= self.n_components)
        return self.icn_effects

    def resolved_gm_effects(self) -> tuple[GmEffect, ...]:
        return DEFAULT_GM_EFFECTS if self.gm_effects is None else self.gm_effects


def validate_config(config: SimulationConfig) -> None:
    """Raise :class:`UsageError` (one sentence) for an impossible configuration."""
    c = config
    checks = [
        (c.n_subjects >= 1, f"--n-subjects must be at least 1, not {c.n_subjects}"),
        (c.seed >= 0, f"--seed must be a non-negative integer, not {c.seed}"),
        (0.0 <= c.patient_fraction <= 1.0,
         f"--patient-fraction must be between 0 and 1, not {c.patient_fraction}"),
        (c.n_sites >= 1, f"--n-sites must be at least 1, not {c.n_sites}"),
        (c.sessions >= 0, f"--sessions must be 0 (no session level) or more, not {c.sessions}"),
        (1.0 <= c.icn_res <= 20.0, f"--icn-res must be between 1 and 20 mm, not {c.icn_res}"),
        (0.5 <= c.gm_res <= 20.0, f"--gm-res must be between 0.5 and 20 mm, not {c.gm_res}"),
        (1 <= c.n_components <= reference.N_ICN,
         f"--n-components must be between 1 and {reference.N_ICN}, not {c.n_components}"),
        (c.effect_size >= 0.0, f"--effect-size must be non-negative, not {c.effect_size}"),
        (c.noise >= 0.0, f"--noise must be non-negative, not {c.noise}"),
        (c.naming in NAMINGS, f"--naming must be one of {', '.join(NAMINGS)}, not {c.naming}"),
        (c.gm_native_prefix in GM_NATIVE_PREFIXES,
         f"--gm-native-prefix must be one of {', '.join(GM_NATIVE_PREFIXES)}"),
        (c.gm_fwhm_mm >= 0.0, f"--gm-fwhm must be non-negative, not {c.gm_fwhm_mm}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message + ".")
    lo, hi = GM_BBOX_MM
    for e in c.resolved_icn_effects():
        if not 1 <= e.index <= c.n_components:
            raise UsageError(f"--icn-effect index {e.index} is outside the {c.n_components} "
                             "simulated components (see --n-components).")
        _check_effect(e.strength * c.effect_size, e.radius_mm, f"--icn-effect {e.index}")
    for e in c.resolved_gm_effects():
        if not all(lo[a] <= e.center_mm[a] <= hi[a] for a in range(3)):
            raise UsageError(f"--gm-effect centre {e.center_mm} is outside the brain's bounding "
                             f"box {lo}..{hi} mm.")
        _check_effect(e.strength * c.effect_size, e.radius_mm, "--gm-effect")


def _check_effect(strength: float, radius: float, what: str) -> None:
    if not radius > 0:
        raise UsageError(f"{what}: the radius must be positive, not {radius}.")
    if not strength > -1.0:
        raise UsageError(f"{what}: strength x effect size is {strength:g}; a decrease must stay "
                         "above -1 (-1 would remove the signal entirely).")


@dataclass(frozen=True, eq=False)
class Grid:
    """A voxel grid: shape, voxel-to-MNI-mm affine and isotropic voxel size."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    res_mm: float

    def world(self) -> np.ndarray:
        """MNI mm coordinates of every voxel centre, shape ``shape + (3,)``, float32."""
        ijk = np.indices(self.shape, dtype=np.float32)
        return (np.tensordot(self.affine[:3, :3].astype(np.float32), ijk, axes=1)
                + self.affine[:3, 3, None, None, None].astype(np.float32)).transpose(1, 2, 3, 0)

    def voxel(self, xyz_mm: Sequence[float]) -> tuple[int, int, int]:
        """Nearest voxel of an MNI mm coordinate (may fall outside the grid)."""
        ijk = np.linalg.solve(self.affine, np.r_[np.asarray(xyz_mm, float), 1.0])[:3]
        return tuple(int(v) for v in np.rint(ijk))

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "affine": self.affine.tolist(), "res_mm": self.res_mm}


def icn_grid(res_mm: float = 3.0) -> Grid:
    """The ICN grid: NeuroMark's 3 mm grid (origin and field of view) at ``res_mm`` voxels.

    3 mm gives exactly ``reference.GRID_SHAPE``/``GRID_AFFINE``; coarser voxels keep the origin
    and as many voxels as fit in the 3 mm field of view (9 mm: 18x21x18).
    """
    extent = (np.array(reference.GRID_SHAPE) - 1) * 3.0
    shape = tuple(int(math.floor(e / res_mm + 1e-6)) + 1 for e in extent)
    affine = reference.GRID_AFFINE.astype(float).copy()
    affine[:3, :3] = np.diag([-res_mm, res_mm, res_mm])
    return Grid(shape, affine, float(res_mm))


def gm_grid(res_mm: float = 1.5) -> Grid:
    """The GM grid: SPM12's tissue bounding box at ``res_mm`` (1.5 mm: 121x145x121).

    Its origin differs from the ICN grid's, so the two never coincide, as in real data.
    """
    lo, hi = np.array(GM_BBOX_MM[0]), np.array(GM_BBOX_MM[1])
    shape = tuple(int(math.floor(e / res_mm + 1e-6)) + 1 for e in hi - lo)
    affine = np.diag([-res_mm, res_mm, res_mm, 1.0])
    affine[:3, 3] = (hi[0], lo[1], lo[2])  # x flipped like SPM's output (LAS voxel order)
    return Grid(shape, affine, float(res_mm))


def res_label(res_mm: float) -> str:
    """BIDS ``res-`` label of a voxel size: ``3`` for 3 mm, ``4p5`` for 4.5 mm."""
    return f"{res_mm:g}".replace(".", "p")


def resample(volume: np.ndarray, src_affine: np.ndarray, grid: Grid, order: int = 1
             ) -> np.ndarray:
    """Resample a 3D volume onto ``grid`` (zero outside the source), float32."""
    m = np.linalg.solve(src_affine, grid.affine)
    return ndimage.affine_transform(
        np.asarray(volume, np.float32), m[:3, :3], m[:3, 3], output_shape=grid.shape,
        order=order, mode="constant", cval=0.0, output=np.float32,
    )


def _axis_weights(n_in: int, coords: np.ndarray, order: int, mode: str, antialias: bool
                  ) -> np.ndarray:
    """``(n_out, n_in)`` interpolation weights of one axis at source ``coords`` (voxels)."""
    step = float(abs(coords[1] - coords[0])) if len(coords) > 1 else 1.0
    if antialias and step > 1.0:
        # Downsampling: a triangle filter as wide as the output spacing (area weighting), so
        # fine structure is averaged rather than aliased.
        w = np.clip(1.0 - np.abs(np.arange(n_in)[None, :] - coords[:, None]) / step, 0.0, None)
        return (w / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)).astype(np.float32)
    if order == 1 and mode in ("constant", "nearest"):
        # Linear interpolation in closed form (the same weights map_coordinates uses).
        if mode == "nearest":
            coords = np.clip(coords, 0, n_in - 1)
        w = np.clip(1.0 - np.abs(np.arange(n_in)[None, :] - coords[:, None]), 0.0, None)
        if mode == "constant":  # scipy does not interpolate beyond the edge voxels
            w[(coords < 0) | (coords > n_in - 1)] = 0.0
        return w.astype(np.float32)
    eye = np.eye(n_in)
    return np.stack([ndimage.map_coordinates(eye[i], coords[None], order=order, mode=mode)
                     for i in range(n_in)], axis=1).astype(np.float32)


def resample_separable(data: np.ndarray, src_affine: np.ndarray, grid: Grid, order: int = 3,
                       mode: str = "constant", antialias: bool = False) -> np.ndarray:
    """Resample ``(X, Y, Z[, N])`` data between axis-aligned grids, one axis at a time.

    Tensor-product splines are separable, so this equals ``affine_transform`` (same order and
    ``mode``) but costs three small matrix products instead of an interpolation per voxel and
    volume. ``antialias`` averages (triangle filter) along axes that are downsampled.
    """
    m = np.linalg.solve(src_affine, grid.affine)
    if not np.allclose(m[:3, :3], np.diag(np.diag(m[:3, :3]))):
        raise ValueError("resample_separable needs axis-aligned grids")
    out = np.asarray(data, np.float32)
    for axis in range(3):
        coords = m[axis, axis] * np.arange(grid.shape[axis]) + m[axis, 3]
        weights = _axis_weights(out.shape[axis], coords, order, mode, antialias)
        out = np.moveaxis(np.tensordot(weights, out, axes=(1, axis)), 0, axis)
    return np.ascontiguousarray(out, dtype=np.float32)


def spatial_transform(translation_mm: Sequence[float], rotation_deg: Sequence[float],
                      scale: float, center_mm: Sequence[float]) -> np.ndarray:
    """4x4 mm-space map ``y -> c + scale * R (y - c) + t`` (rotations about x, y, z)."""
    ax, ay, az = np.deg2rad(np.asarray(rotation_deg, float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    c = np.asarray(center_mm, float)
    out = np.eye(4)
    out[:3, :3] = scale * (rz @ ry @ rx)
    out[:3, 3] = c - out[:3, :3] @ c + np.asarray(translation_mm, float)
    return out


def warp(volume: np.ndarray, grid: Grid, transform_mm: np.ndarray, order: int = 1,
         box: tuple[slice, slice, slice] | None = None) -> np.ndarray:
    """Move a volume on ``grid`` by the mm-space map ``transform_mm``.

    The output is on the same grid, or only its sub-box ``box`` (slices) when given.
    """
    # out(x) = in(T^-1 x), in voxel coordinates: A^-1 T^-1 A.
    m = np.linalg.solve(grid.affine, np.linalg.solve(transform_mm, grid.affine))
    offset, shape = m[:3, 3], grid.shape
    if box is not None:
        offset = offset + m[:3, :3] @ np.array([b.start for b in box], float)
        shape = tuple(b.stop - b.start for b in box)
    return ndimage.affine_transform(volume, m[:3, :3], offset, output_shape=shape, order=order,
                                    mode="constant", cval=0.0, output=np.float32)


def bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """The smallest box of slices that holds every True voxel of ``mask``."""
    idx = np.argwhere(mask)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def gaussian_blob(grid: Grid, center_mm: Sequence[float], radius_mm: float) -> np.ndarray:
    """A Gaussian of height 1 at ``center_mm`` that falls to 1/2 at ``radius_mm``."""
    sigma = radius_mm / math.sqrt(2.0 * math.log(2.0))
    d2 = np.sum((grid.world() - np.asarray(center_mm, np.float32)) ** 2, axis=-1)
    return np.exp(-d2 / np.float32(2.0 * sigma * sigma)).astype(np.float32)


def fwhm_to_sigma_vox(fwhm_mm: float, res_mm: float) -> float:
    return fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / res_mm


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], fwhm_vox: float
                 ) -> np.ndarray:
    """Unit-variance Gaussian noise smoothed over the last three axes by ``fwhm_vox``."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    sigma = fwhm_vox / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    if sigma < 0.3:
        return noise
    lead = (0.0,) * (len(shape) - 3)
    noise = ndimage.gaussian_filter(noise, lead + (sigma,) * 3, truncate=3.0)
    # Exact variance of separably smoothed white noise: (sum of squared 1D weights)^3.
    radius = int(3.0 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    noise /= np.float32(np.sum(k * k) ** 1.5)
    return noise


@lru_cache(maxsize=4)
def icn_templates(res_mm: float, n_components: int = reference.N_ICN
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n_components`` NeuroMark template maps on the ICN grid, and its brain mask.

    Cubic-spline resampling of the 10 mm template gives smooth maps; they are masked with the
    (linearly resampled, thresholded) NeuroMark mask. Returns ``(maps (n, X, Y, Z), mask)``.
    """
    grid = icn_grid(res_mm)
    img = nib.load(reference.template_10mm_path())
    data = img.get_fdata(dtype=np.float32)
    mimg = nib.load(reference.mask_10mm_path())
    mask = resample(mimg.get_fdata(dtype=np.float32), mimg.affine, grid, order=1) > 0.5
    maps = np.moveaxis(resample_separable(data[..., :n_components], img.affine, grid), -1, 0)
    maps = np.ascontiguousarray(maps * mask)
    maps.setflags(write=False)
    mask.setflags(write=False)
    return maps, mask


def _nilearn_file(name: str) -> Path:
    # nilearn ships the MNI152 (2009) templates; importing nilearn.datasets costs ~1 s, so the
    # file is located without importing it (load_mni152_gm_template reads this same file).
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise VaefusionError("nilearn is not installed; it provides the MNI152 templates.")
    path = Path(list(spec.submodule_search_locations)[0], *_NILEARN_DATA, name)
    if not path.is_file():
        raise VaefusionError(f"{path} is missing from the nilearn installation.")
    return path


@lru_cache(maxsize=4)
def gm_template(res_mm: float) -> np.ndarray:
    """nilearn's MNI152 GM probability map (scaled to [0, 1]) on the GM grid (unsmoothed).

    Resampled from 1 mm with area weighting, so coarse grids do not alias the cortex.
    """
    img = nib.load(_nilearn_file(_GM_FILE))
    data = np.asarray(img.dataobj, dtype=np.float32)
    data /= data.max()
    out = resample_separable(data, img.affine, gm_grid(res_mm), order=1, antialias=True)
    out.setflags(write=False)
    return out


def gm_work_res(gm_res_mm: float, fwhm_mm: float) -> float:
    """Voxel size the GM maps are simulated at before resampling to ``gm_res_mm``.

    The maps end up smoothed by ``fwhm_mm``; sampling at a third of the FWHM loses nothing
    visible and makes 1.5 mm output several times cheaper.
    """
    return max(gm_res_mm, fwhm_mm / 3.0)


def _t1w_image() -> nib.Nifti1Image:
    img = nib.load(_nilearn_file(_T1_FILE))
    lo = img.affine[:3, 3]
    hi = lo + np.array(img.shape[:3]) - 1
    shape = tuple(int(math.floor(e / T1W_RES_MM)) + 1 for e in hi - lo)
    affine = np.diag([T1W_RES_MM] * 3 + [1.0])
    affine[:3, 3] = lo
    grid = Grid(shape, affine, T1W_RES_MM)
    data = resample(np.asarray(img.dataobj, np.float32), img.affine, grid, order=1)
    out = nib.Nifti1Image(np.clip(np.rint(data), 0, 255).astype(np.uint8), grid.affine)
    out.header.set_xyzt_units("mm")
    return out


def draw_participants(rng: np.random.Generator, n_subjects: int, patient_fraction: float,
                      n_sites: int) -> list[dict[str, Any]]:
    """Participants with diagnosis (exactly round(n * fraction) SZ), age, sex and site."""
    width = max(2, len(str(n_subjects)))
    n_sz = int(round(n_subjects * patient_fraction))
    patient = np.zeros(n_subjects, bool)
    patient[rng.permutation(n_subjects)[:n_sz]] = True
    age = np.clip(rng.normal(38.0, 11.0, n_subjects), 18, 65).round().astype(int)
    # Schizophrenia samples are usually male-skewed.
    male = rng.random(n_subjects) < np.where(patient, 0.65, 0.5)
    site = rng.integers(1, n_sites + 1, n_subjects)
    return [
        {"participant_id": f"sub-{i + 1:0{width}d}", "diagnosis": "SZ" if patient[i] else "HC",
         "age": int(age[i]), "sex": "M" if male[i] else "F", "site": f"site{site[i]}"}
        for i in range(n_subjects)
    ]


def draw_sites(rng: np.random.Generator, n_sites: int) -> dict[str, dict[str, float]]:
    """Site effects: ICN amplitude and noise factors, GM intensity factor."""
    return {
        f"site{s + 1}": {
            "icn_amplitude": float(np.exp(rng.normal(0.0, 0.1))),
            "icn_noise": float(rng.uniform(0.8, 1.25)),
            "gm_scale": float(np.exp(rng.normal(0.0, 0.03))),
        }
        for s in range(n_sites)
    }


@dataclass
class IcnVariability:
    """One subject/session's SimTB-style parameters for ``n`` components."""

    translation_mm: np.ndarray  # (n, 3)
    rotation_deg: np.ndarray  # (n, 3)
    scale: np.ndarray  # (n,)
    amplitude: np.ndarray  # (n,)


def draw_icn_variability(rng: np.random.Generator, n: int, config: SimulationConfig,
                         subject_shift_mm: np.ndarray) -> IcnVariability:
    """Per-component jitter around the subject's own shift (residual normalisation error)."""
    return IcnVariability(
        translation_mm=subject_shift_mm + rng.normal(0.0, config.translation_mm, (n, 3)),
        rotation_deg=rng.normal(0.0, config.rotation_deg, (n, 3)),
        scale=np.exp(rng.normal(0.0, config.spread, n)),
        amplitude=np.exp(rng.normal(0.0, config.amplitude, n)),
    )


def simulate_icn_maps(rng: np.random.Generator, templates: np.ndarray, mask: np.ndarray,
                      grid: Grid, centers_mm: np.ndarray, var: IcnVariability,
                      effects: dict[int, np.ndarray], noise_sd: np.ndarray,
                      noise_fwhm_mm: float) -> np.ndarray:
    """One subject's 4D ICN maps ``(n, X, Y, Z)`` float32.

    Each template map is multiplied by its patient effect field (if any; 0-based key), moved
    by its own rigid+scale transform about ``centers_mm[c]``, scaled by its amplitude, given
    smooth noise of sd ``noise_sd[c]`` and masked.
    """
    # Only the mask's bounding box is computed (a quarter fewer voxels); the rest is zero.
    box = bounding_box(mask)
    n = templates.shape[0]
    inner = np.empty((n,) + tuple(b.stop - b.start for b in box), np.float32)
    for c in range(n):
        src = templates[c] * effects[c] if c in effects else templates[c]
        t = spatial_transform(var.translation_mm[c], var.rotation_deg[c], var.scale[c],
                              centers_mm[c])
        inner[c] = warp(src, grid, t, box=box)
        inner[c] *= np.float32(var.amplitude[c])
    if np.any(noise_sd > 0):
        noise = smooth_noise(rng, inner.shape, noise_fwhm_mm / grid.res_mm)
        noise *= noise_sd.astype(np.float32)[:, None, None, None]
        inner += noise
    inner *= mask[box]
    out = np.zeros(templates.shape, np.float32)
    out[(slice(None), *box)] = inner
    return out


def simulate_gm_map(rng: np.random.Generator, template: np.ndarray, grid: Grid,
                    transform_mm: np.ndarray, scale: float, effect: np.ndarray | None,
                    noise_sd: float, noise_fwhm_mm: float, fwhm_mm: float,
                    out_grid: Grid | None = None) -> np.ndarray:
    """One subject's smoothed modulated GM map (``smwc1``), float32, non-negative.

    The template (on ``grid``) is warped (global rigid+scale jitter), multiplied by the
    global GM scale, the patient effect field and ``1 + smooth regional variability``, then
    smoothed like SPM, and finally resampled (linear) onto ``out_grid`` when given.
    """
    gm = warp(np.asarray(template), grid, transform_mm)
    factor = np.full(grid.shape, np.float32(scale))
    if effect is not None:
        factor *= effect
    if noise_sd > 0:
        factor *= 1.0 + np.float32(noise_sd) * smooth_noise(
            rng, grid.shape, noise_fwhm_mm / grid.res_mm)
    gm *= np.clip(factor, 0.0, None)
    if fwhm_mm > 0:
        gm = ndimage.gaussian_filter(gm, fwhm_to_sigma_vox(fwhm_mm, grid.res_mm), truncate=3.0)
    if out_grid is not None and out_grid.shape != grid.shape:
        gm = resample_separable(gm, grid.affine, out_grid, order=1, mode="nearest")
    # Smoothing tails far outside the brain (< 1e-5) are set to 0: nothing real is lost and
    # the files compress a third faster.
    gm[gm < GM_FLOOR] = 0.0
    return gm


def effect_field(blob: np.ndarray, strength: float) -> np.ndarray:
    """Multiplicative field ``max(0, 1 + strength * blob)``."""
    return np.clip(1.0 + np.float32(strength) * blob, 0.0, None).astype(np.float32)


def _save(data: np.ndarray, affine: np.ndarray, path: Path, description: str) -> None:
    img = nib.Nifti1Image(np.asarray(data, np.float32), affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=4)  # 4 = MNI_152: these maps live in template space
    img.set_sform(affine, code=4)
    img.header["descrip"] = description.encode()[:79]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _write_tsv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, columns, delimiter="\t", lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _generated_by() -> list[dict[str, str]]:
    return [{"Name": "vaefusion-simulate", "Version": __version__, "CodeURL": CODE_URL,
             "Description": "Simulated data; see code/simulation.json in the raw dataset."}]


def _derivative_description(pipeline: str, name: str) -> dict[str, Any]:
    # GeneratedBy[0].Name is the pipeline name pybids uses as the scope; it is the folder name
    # (neuromark, spm, gift, cat12) so each derivative can be selected on its own.
    generated_by = [{"Name": pipeline, "Description": f"simulated {pipeline} outputs"},
                    *_generated_by()]
    return {"Name": name, "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
            "License": "CC0", "GeneratedBy": generated_by,
            # The raw dataset is two levels up (derivatives/<name>/).
            "DatasetLinks": {"raw": "../../"}, "SourceDatasets": [{"URL": "bids:raw:"}]}


def _prepare_output(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} exists and is not a directory.")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise OutputError(f"{out_dir} is not empty; choose a new folder or pass --overwrite.")
        if not (out_dir / GROUND_TRUTH).is_file():
            raise OutputError(f"{out_dir} is not empty and was not written by vaefusion-simulate "
                              f"(no {GROUND_TRUTH}); refusing to overwrite it.")
        shutil.rmtree(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out_dir}: {exc.strerror}.") from None


def _readme(config: SimulationConfig, n_sz: int) -> str:
    c = config
    sessions = f", {c.sessions} session{'s' if c.sessions > 1 else ''} each" if c.sessions else ""
    where = []
    if c.naming in ("bids", "both"):
        where.append("`derivatives/neuromark` (ICN maps, BIDS names) and `derivatives/spm` "
                     "(gray matter, BIDS names)")
    if c.naming in ("native", "both"):
        where.append("`derivatives/gift` (ICN maps, GIFT names, with `gift_subjects.tsv`) and "
                     f"`derivatives/cat12` (gray matter, `{c.gm_native_prefix}` names)")
    return (
        "# vaefusion simulated dataset\n\n"
        f"Written by vaefusion-simulate {__version__} with seed {c.seed}: {c.n_subjects} "
        f"participants ({n_sz} SZ, {c.n_subjects - n_sz} HC){sessions}.\n\n"
        "Every value is simulated. The ICN maps (4D, one volume per ICN in NeuroMark fMRI 1.0 "
        "order) are made from the real NeuroMark template with SimTB-style per-subject "
        "variability; the gray-matter maps are smoothed modulated GM (smwc1) made from the "
        f"MNI152 GM template. They are in {' and in '.join(where)}. Patients (SZ) carry local "
        "planted effects; `code/simulation.json` is the ground truth. The T1w images are the "
        "MNI152 template at 4 mm, present only to make the raw dataset valid.\n"
    )


def simulate_dataset(out_dir: str | Path, config: SimulationConfig | None = None, *,
                     overwrite: bool = False, **overrides: Any) -> dict[str, Any]:
    """Write a simulated BIDS dataset to ``out_dir`` and return its ground truth.

    ``overrides`` are :class:`SimulationConfig` fields (e.g. ``n_subjects=8, icn_res=9``).
    The ground truth is also written to ``out_dir/code/simulation.json``.
    """
    config = replace(config or SimulationConfig(), **overrides)
    if isinstance(config.icn_effects, list):
        config = replace(config, icn_effects=tuple(config.icn_effects))
    if isinstance(config.gm_effects, list):
        config = replace(config, gm_effects=tuple(config.gm_effects))
    validate_config(config)
    out = Path(out_dir)
    _prepare_output(out, overwrite)

    c = config
    igrid, ggrid = icn_grid(c.icn_res), gm_grid(c.gm_res)
    n = c.n_components
    templates, mask = icn_templates(c.icn_res, n)
    wgrid = gm_grid(gm_work_res(c.gm_res, c.gm_fwhm_mm))  # GM is simulated here, then resampled
    gm_base = gm_template(wgrid.res_mm)
    table = reference.icns()
    centers = np.array([table[i].peak_mm for i in range(n)])
    max_abs = np.abs(templates).reshape(n, -1).max(axis=1)

    people = draw_participants(np.random.default_rng([c.seed, _STREAM_DEMOGRAPHICS]),
                               c.n_subjects, c.patient_fraction, c.n_sites)
    sites = draw_sites(np.random.default_rng([c.seed, _STREAM_SITES]), c.n_sites)

    icn_effects = c.resolved_icn_effects()
    gm_effects = c.resolved_gm_effects()
    icn_blobs = [gaussian_blob(igrid, table[e.index - 1].peak_mm, e.radius_mm)
                 for e in icn_effects]
    gm_blobs = [gaussian_blob(wgrid, e.center_mm, e.radius_mm) for e in gm_effects]

    sessions = [f"ses-{k}" for k in range(1, c.sessions + 1)] or [None]
    naming_bids = c.naming in ("bids", "both")
    naming_native = c.naming in ("native", "both")
    deriv = out / "derivatives"
    files: list[dict[str, Any]] = []
    gift_rows: list[dict[str, Any]] = []
    t1w_bytes: bytes | None = None
    # Compressing a subject's files (zlib releases the GIL) overlaps simulating the next one;
    # only the previous subject's writes may be pending, so memory stays bounded.
    writer = ThreadPoolExecutor(max_workers=2)
    pending: list[Future[None]] = []

    def save(data: np.ndarray, affine: np.ndarray, path: Path, description: str) -> None:
        pending.append(writer.submit(_save, data, affine, path, description))

    try:
        for i, person in enumerate(people):
            sub = person["participant_id"]
            patient = person["diagnosis"] == "SZ"
            site = sites[person["site"]]
            rng = np.random.default_rng([c.seed, _STREAM_SUBJECT, i])
            # Subject level: stable across sessions (anatomy, network topography, disease).
            # Drawn for everyone, so a subject's other draws do not depend on the diagnosis.
            k = float(rng.normal(1.0, c.effect_variability))
            k_effect = max(0.0, k) if patient else 0.0
            person["effect_scale"] = k_effect if c.effect_size > 0 else 0.0
            shift = rng.normal(0.0, c.translation_mm, 3)
            subject_var = draw_icn_variability(rng, n, c, shift)
            gm_scale = (site["gm_scale"] * float(np.exp(rng.normal(0.0, 0.05)))
                        * (1.0 - 0.004 * (person["age"] - 40)))  # GM declines with age
            gm_t = spatial_transform(rng.normal(0.0, c.translation_mm, 3),
                                     rng.normal(0.0, 1.0, 3), float(np.exp(rng.normal(0.0, 0.02))),
                                     BRAIN_CENTER_MM)
            effects: dict[int, np.ndarray] = {}
            gm_effect = None
            if patient and c.effect_size > 0 and k_effect > 0:
                for e, blob in zip(icn_effects, icn_blobs, strict=True):
                    f = effect_field(blob, e.strength * c.effect_size * k_effect)
                    effects[e.index - 1] = effects[e.index - 1] * f if e.index - 1 in effects else f
                for e, blob in zip(gm_effects, gm_blobs, strict=True):
                    f = effect_field(blob, e.strength * c.effect_size * k_effect)
                    gm_effect = f if gm_effect is None else gm_effect * f

            for k, ses in enumerate(sessions, start=1):
                srng = np.random.default_rng([c.seed, _STREAM_SESSION, i, k])
                # Session level: small test-retest jitter and fresh noise.
                var = IcnVariability(
                    translation_mm=subject_var.translation_mm + srng.normal(0.0, 0.5, (n, 3)),
                    rotation_deg=subject_var.rotation_deg + srng.normal(0.0, 0.5, (n, 3)),
                    scale=subject_var.scale * np.exp(srng.normal(0.0, 0.01, n)),
                    amplitude=subject_var.amplitude * np.exp(srng.normal(0.0, 0.05, n))
                    * site["icn_amplitude"],
                )
                noise_sd = c.noise * c.icn_noise * site["icn_noise"] * max_abs
                icn = simulate_icn_maps(srng, templates, mask, igrid, centers, var, effects,
                                        noise_sd, c.icn_noise_fwhm_mm)
                gm = simulate_gm_map(srng, gm_base, wgrid, gm_t, gm_scale, gm_effect,
                                     c.noise * c.gm_noise, c.gm_noise_fwhm_mm, c.gm_fwhm_mm,
                                     out_grid=ggrid)
                _check_volumes(icn, gm, sub, ses)
                for future in pending:  # the previous subject's files are written by now
                    future.result()
                pending.clear()

                stem = f"{sub}_{ses}" if ses else sub
                sdir = Path(sub, ses) if ses else Path(sub)
                record: dict[str, Any] = {"participant_id": sub, "session_id": ses or "n/a"}
                # Raw placeholder T1w: identical bytes for everyone, so encode once.
                t1_path = out / sdir / "anat" / f"{stem}_T1w.nii.gz"
                t1_path.parent.mkdir(parents=True, exist_ok=True)
                if t1w_bytes is None:
                    nib.save(_t1w_image(), t1_path)
                    t1w_bytes = t1_path.read_bytes()
                else:
                    t1_path.write_bytes(t1w_bytes)
                record["t1w"] = t1_path.relative_to(out).as_posix()
                icn_4d = np.moveaxis(icn, 0, -1)
                if naming_bids:
                    p = (deriv / "neuromark" / sdir / "func" /
                         f"{stem}_task-rest_space-{SPACE}_res-{res_label(c.icn_res)}"
                         "_desc-neuromark_components.nii.gz")
                    save(icn_4d, igrid.affine, p, f"vaefusion-simulate ICNs {stem}")
                    record["icn"] = p.relative_to(out).as_posix()
                    p = (deriv / "spm" / sdir / "anat" /
                         f"{stem}_space-{SPACE}_label-GM_desc-smwc1_probseg.nii.gz")
                    save(gm, ggrid.affine, p, f"vaefusion-simulate smwc1 {stem}")
                    record["gm"] = p.relative_to(out).as_posix()
                if naming_native:
                    p = deriv / "gift" / f"{GIFT_PREFIX}_sub{i + 1:03d}_component_ica_s{k}_.nii"
                    save(icn_4d, igrid.affine, p, f"GIFT-style back-reconstruction {stem}")
                    record["icn_native"] = p.relative_to(out).as_posix()
                    gift_rows.append({"gift_index": i + 1, "participant_id": sub,
                                      "session_id": ses or "n/a", "gift_session": k})
                    p = deriv / "cat12" / sdir / "anat" / f"{c.gm_native_prefix}{stem}_T1w.nii"
                    save(gm, ggrid.affine, p, f"vaefusion-simulate {c.gm_native_prefix} {stem}")
                    record["gm_native"] = p.relative_to(out).as_posix()
                files.append(record)
        for future in pending:
            future.result()
    finally:
        writer.shutdown(wait=True)

    truth = _ground_truth(c, igrid, ggrid, icn_effects, gm_effects, people, sites, files)
    _write_raw_metadata(out, c, people)
    _write_derivative_metadata(deriv, c, naming_bids, naming_native, gift_rows)
    _write_json(out / GROUND_TRUTH, truth)
    return truth


def _check_volumes(icn: np.ndarray, gm: np.ndarray, sub: str, ses: str | None) -> None:
    # The app treats an all-zero or non-finite volume as bad data; never write one.
    flat = icn.reshape(icn.shape[0], -1)
    if not (np.isfinite(icn).all() and np.isfinite(gm).all()
            and (np.abs(flat).max(axis=1) > 0).all() and gm.max() > 0):
        raise RuntimeError(f"simulated a degenerate volume for {sub} {ses or ''}")


def _ground_truth(c: SimulationConfig, igrid: Grid, ggrid: Grid,
                  icn_effects: tuple[IcnEffect, ...], gm_effects: tuple[GmEffect, ...],
                  people: list[dict[str, Any]], sites: dict[str, Any],
                  files: list[dict[str, Any]]) -> dict[str, Any]:
    table = reference.icns()
    cfg = {f.name: getattr(c, f.name) for f in fields(c)
           if f.name not in ("icn_effects", "gm_effects")}
    return {
        "generator": {"name": "vaefusion-simulate", "version": __version__},
        "seed": c.seed,
        "config": cfg,
        "space": SPACE,
        "icn_grid": igrid.to_dict(),
        "gm_grid": ggrid.to_dict(),
        "gm_simulated_at_res_mm": gm_work_res(c.gm_res, c.gm_fwhm_mm),
        "res_label": res_label(c.icn_res),
        "components": [table[i].name for i in range(c.n_components)],
        "effect_definition": "patients' map x max(0, 1 + strength * effect_scale * "
                             "exp(-d^2 / (2 sigma^2))), sigma = radius_mm / sqrt(2 ln 2); "
                             "strength already includes --effect-size",
        "icn_effects": [
            {"index": e.index, "modality": table[e.index - 1].name,
             "domain": table[e.index - 1].domain, "label": table[e.index - 1].label,
             "center_mm": list(table[e.index - 1].peak_mm),
             "center_voxel": list(igrid.voxel(table[e.index - 1].peak_mm)),
             "radius_mm": e.radius_mm, "strength": e.strength * c.effect_size}
            for e in icn_effects
        ] if c.effect_size > 0 else [],
        "gm_effects": [
            {"center_mm": list(e.center_mm), "center_voxel": list(ggrid.voxel(e.center_mm)),
             "radius_mm": e.radius_mm, "strength": e.strength * c.effect_size}
            for e in gm_effects
        ] if c.effect_size > 0 else [],
        "sites": sites,
        "participants": people,
        "files": files,
    }


def _write_raw_metadata(out: Path, c: SimulationConfig, people: list[dict[str, Any]]) -> None:
    _write_json(out / "dataset_description.json", {
        "Name": "vaefusion simulated NeuroMark ICN and gray-matter dataset",
        "BIDSVersion": BIDS_VERSION, "DatasetType": "raw", "License": "CC0",
        "Authors": ["vaefusion-simulate"], "GeneratedBy": _generated_by(),
    })
    n_sz = sum(p["diagnosis"] == "SZ" for p in people)
    (out / "README").write_text(_readme(c, n_sz))
    _write_tsv(out / "participants.tsv", people,
               ["participant_id", "diagnosis", "age", "sex", "site"])
    _write_json(out / "participants.json", {
        "participant_id": {"Description": "Participant label"},
        "diagnosis": {"Description": "Simulated diagnostic group",
                      "Levels": {"SZ": "schizophrenia (simulated patient, planted effects)",
                                 "HC": "healthy control"}},
        "age": {"Description": "Age at scan", "Units": "year"},
        "sex": {"Description": "Sex", "Levels": {"M": "male", "F": "female"}},
        "site": {"Description": "Acquisition site (carries a simulated site effect)"},
    })


def _write_derivative_metadata(deriv: Path, c: SimulationConfig, bids: bool, native: bool,
                               gift_rows: list[dict[str, Any]]) -> None:
    # Per-dataset .bidsignore files list what BIDS cannot name yet (a 4D stack of ICA
    # components, GIFT's and SPM's own file names). bids-validator reads them when it
    # validates a derivative dataset on its own (3.0.2's --recursive does not yet).
    datasets: list[tuple[str, str, str]] = []  # folder, Name, .bidsignore
    if bids:
        datasets += [
            ("neuromark", "NeuroMark ICN maps (simulated)", "*_components.nii.gz\n"),
            ("spm", "SPM12 smoothed modulated gray matter (simulated)", ""),
        ]
    if native:
        datasets += [
            ("gift", "GIFT NeuroMark back-reconstruction (simulated)",
             "*_component_ica_*\ngift_subjects.tsv\n"),
            ("cat12", "SPM/CAT12 gray matter with native names (simulated)",
             f"{c.gm_native_prefix}sub-*\n"),
        ]
        _write_tsv(deriv / "gift" / "gift_subjects.tsv", gift_rows,
                   ["gift_index", "participant_id", "session_id", "gift_session"])
    for folder, name, ignore in datasets:
        _write_json(deriv / folder / "dataset_description.json",
                    _derivative_description(folder, name))
        if ignore:
            (deriv / folder / ".bidsignore").write_text(ignore)


__all__ = [
    "DEFAULT_GM_EFFECTS", "DEFAULT_ICN_EFFECTS", "GmEffect", "Grid", "IcnEffect",
    "SimulationConfig", "draw_participants", "gaussian_blob", "gm_grid", "gm_template",
    "icn_grid", "icn_templates", "res_label", "simulate_dataset", "simulate_gm_map",
    "simulate_icn_maps", "validate_config",
]

