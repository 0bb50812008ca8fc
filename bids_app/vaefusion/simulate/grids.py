"""Voxel grids and the volume operations the simulator builds maps with.

Resampling between grids, rigid+scale warps about a centre, Gaussian blobs and spatially smooth
noise of known variance; nothing here knows about ICNs, gray matter or subjects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from vaefusion.inputs import reference

#: SPM12 Segment's default bounding box for normalised tissue maps (121x145x121 at 1.5 mm).
GM_BBOX_MM = ((-90.0, -126.0, -72.0), (90.0, 90.0, 108.0))


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


def warp_field(volume: np.ndarray, grid: Grid, transform_mm: np.ndarray, ijk: np.ndarray,
               displacement_mm: np.ndarray) -> np.ndarray:
    """Like :func:`warp` at the output voxels ``ijk`` (``(3, ...)``, voxel indices), with a
    displacement field ``displacement_mm`` (``(3, ...)``, mm, where each output voxel reads
    from) added after the rigid map: a smooth, non-rigid change of shape."""
    m = np.linalg.solve(grid.affine, np.linalg.solve(transform_mm, grid.affine))
    shape = ijk.shape[1:]
    # Both linear maps act on flat (3, voxels) arrays: one small matrix product each. The
    # displacement goes mm -> voxels through the grid's linear part.
    lin = np.linalg.inv(grid.affine[:3, :3]).astype(np.float32)
    coords = m[:3, :3].astype(np.float32) @ ijk.reshape(3, -1)
    coords += lin @ displacement_mm.reshape(3, -1)
    coords += m[:3, 3].astype(np.float32)[:, None]
    return ndimage.map_coordinates(volume, coords, order=1, mode="constant", cval=0.0,
                                   output=np.float32).reshape(shape)
