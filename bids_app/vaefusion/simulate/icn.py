"""ICN templates (the real NeuroMark maps) and one subject's SimTB-style ICN maps."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import nibabel as nib
import numpy as np

from vaefusion.inputs import reference
from vaefusion.simulate.config import SimulationConfig
from vaefusion.simulate.grids import (
    Grid,
    bounding_box,
    icn_grid,
    resample,
    resample_separable,
    smooth_noise,
    spatial_transform,
    warp,
    warp_field,
)


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
                      fields: dict[int, np.ndarray], displacement_mm: np.ndarray | None,
                      site_field: np.ndarray | None, noise_sd: np.ndarray,
                      noise_fwhm_mm: float) -> np.ndarray:
    """One subject's 4D ICN maps ``(n, X, Y, Z)`` float32.

    Each template map is multiplied by its template-space field (shared factors and patient
    effects; 0-based key), moved by its own rigid+scale transform about ``centers_mm[c]`` plus
    its smooth displacement field ``displacement_mm[c]`` (``(n, 3, *box)`` mm, on the mask's
    bounding box: individual topography), scaled by its amplitude, multiplied by the site's
    image-space field (on the box), given smooth noise of sd ``noise_sd[c]`` (a number per
    component, or a map per component on the box) and masked.
    """
    # Only the mask's bounding box is computed (a quarter fewer voxels); the rest is zero.
    box = bounding_box(mask)
    n = templates.shape[0]
    box_shape = tuple(b.stop - b.start for b in box)
    inner = np.empty((n,) + box_shape, np.float32)
    ijk = np.indices(box_shape, dtype=np.float32)
    ijk += np.array([b.start for b in box], np.float32)[:, None, None, None]
    for c in range(n):
        src = templates[c] * fields[c] if c in fields else templates[c]
        t = spatial_transform(var.translation_mm[c], var.rotation_deg[c], var.scale[c],
                              centers_mm[c])
        if displacement_mm is None:
            inner[c] = warp(src, grid, t, box=box)
        else:
            inner[c] = warp_field(src, grid, t, ijk, displacement_mm[c])
        inner[c] *= np.float32(var.amplitude[c])
    if site_field is not None:
        inner *= site_field[None]
    if np.any(noise_sd > 0):
        noise = smooth_noise(rng, inner.shape, noise_fwhm_mm / grid.res_mm)
        noise *= (noise_sd.astype(np.float32) if noise_sd.ndim > 1
                  else noise_sd.astype(np.float32)[:, None, None, None])
        inner += noise
    inner *= mask[box]
    out = np.zeros(templates.shape, np.float32)
    out[(slice(None), *box)] = inner
    return out
