"""Resampling a volume onto another grid in the same world space (anti-aliased, trilinear).

Its own module so that the template checks (``inputs/template_checks.py``) and preprocessing
share it without importing each other.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths (mm) of an affine."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def resample_to_grid(
    data: np.ndarray, source_affine: np.ndarray, target_affine: np.ndarray,
    target_shape: tuple[int, int, int], order: int = 1,
) -> np.ndarray:
    """Resample a 3D volume onto another grid in the same world space.

    When the target voxels are larger, the source is first smoothed with a Gaussian whose
    width matches the voxel-size ratio (anti-aliasing), so downsampling averages rather than
    picks voxels; then trilinear interpolation (``order=1``) maps target voxel centres into
    the source. Voxels outside the source field of view become 0.
    """
    data = np.asarray(data, dtype=np.float32)
    ratio = voxel_sizes(target_affine) / voxel_sizes(source_affine)
    sigma = np.sqrt(np.clip(ratio**2 - 1.0, 0.0, None)) / 2.0  # ~FWHM of the target voxel
    if np.any(sigma > 0.1):
        data = ndimage.gaussian_filter(data, sigma=sigma, mode="nearest")
    # target voxel -> world -> source voxel
    mapping = np.linalg.solve(source_affine, target_affine)
    return ndimage.affine_transform(
        data, mapping[:3, :3], offset=mapping[:3, 3], output_shape=tuple(target_shape),
        order=order, mode="constant", cval=0.0, prefilter=False,
    ).astype(np.float32)
