"""Gray matter: the MNI152 GM template (from nilearn) and one subject's smwc1 map."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from vaefusion.errors import VaefusionError
from vaefusion.simulate.grids import (
    Grid,
    fwhm_to_sigma_vox,
    gm_grid,
    resample_separable,
    smooth_noise,
    warp,
)

#: GM values below this are written as 0 (far tails of the smoothing kernel).
GM_FLOOR = 1e-5


#: Centre of rotation/scaling for the whole-brain GM jitter (roughly the brain's centre).
BRAIN_CENTER_MM = (0.0, -18.0, 10.0)


_NILEARN_DATA = ("datasets", "data")


_GM_FILE = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"


def nilearn_file(name: str) -> Path:
    """Path of a template file that nilearn ships (the MNI152 2009 GM and T1)."""
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
    img = nib.load(nilearn_file(_GM_FILE))
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
