"""Preprocessing numerics: max-abs scaling, resampling accuracy, stacking order."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from vaefusion.errors import DataError
from vaefusion.inputs.preprocess import resample_to_grid, scale_maxabs, stack_subject
from vaefusion.inputs.reference import GRID_AFFINE, GRID_SHAPE


def _affine(voxel: float) -> np.ndarray:
    aff = np.diag([-voxel, voxel, voxel, 1.0])
    aff[:3, 3] = GRID_AFFINE[:3, 3]
    return aff


def test_maxabs_range_and_sign():
    rng = np.random.default_rng(0)
    vols = rng.normal(size=(5, 6, 7, 8)).astype(np.float32) * np.arange(1, 6)[:, None, None, None]
    out = scale_maxabs(vols, [f"v{i}" for i in range(5)], ["f"] * 5)
    assert out.min() >= -1.0 and out.max() <= 1.0
    np.testing.assert_allclose(np.abs(out).reshape(5, -1).max(axis=1), 1.0, rtol=1e-6)
    # scaling preserves sign and shape of each volume
    np.testing.assert_array_equal(np.sign(out), np.sign(vols))


def test_all_zero_volume_names_file_and_volume():
    vols = np.ones((3, 4, 4, 4), np.float32)
    vols[2] = 0
    with pytest.raises(DataError, match=r"gm\.nii.*GMV is all zero") as err:
        scale_maxabs(vols, ["ICN01", "ICN02", "GMV"], ["icn.nii", "icn.nii", "gm.nii"])
    assert err.value.code == 65


def _world_centroid(vol: np.ndarray, affine: np.ndarray) -> np.ndarray:
    com = np.array(ndimage.center_of_mass(np.clip(vol, 0, None)))
    return affine[:3, :3] @ com + affine[:3, 3]


@pytest.mark.parametrize("source_voxel", [1.5, 2.0])
def test_resampling_keeps_gm_centroid_within_a_voxel(source_voxel):
    """A GM-like blob at 1.5/2 mm resampled to 3 mm keeps its centroid (< 1 target voxel)."""
    src_aff = _affine(source_voxel)
    shape = tuple(int(round(n * 3 / source_voxel)) for n in GRID_SHAPE)
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = ijk @ src_aff[:3, :3].T + src_aff[:3, 3]
    centre = np.array([-30.0, 12.0, 20.0])  # left frontal
    blob = np.exp(-((xyz - centre) ** 2).sum(1) / (2 * 12.0**2)).reshape(shape).astype(np.float32)
    out = resample_to_grid(blob, src_aff, GRID_AFFINE, GRID_SHAPE)
    assert out.shape == GRID_SHAPE
    shift = np.linalg.norm(_world_centroid(out, GRID_AFFINE) - _world_centroid(blob, src_aff))
    assert shift < 3.0, f"centroid moved {shift:.2f} mm (one voxel is 3 mm)"
    # the resampled peak sits where the blob's centre is
    peak = np.unravel_index(out.argmax(), out.shape)
    peak_mm = GRID_AFFINE[:3, :3] @ np.array(peak) + GRID_AFFINE[:3, 3]
    assert np.linalg.norm(peak_mm - centre) <= 3.0 * np.sqrt(3)


def test_stack_order_icns_first_then_gmv():
    rng = np.random.default_rng(1)
    icn = rng.normal(size=(6, 7, 5, 3)).astype(np.float32)
    aff = _affine(9.0)
    gmv = rng.random((12, 14, 10)).astype(np.float32)
    stack = stack_subject(icn, aff, gmv, _affine(4.5))
    assert stack.shape == (4, 6, 7, 5)
    np.testing.assert_array_equal(stack[1], icn[..., 1])
    # same grid: GMV passes through untouched
    same = stack_subject(icn, aff, icn[..., 0], aff)
    np.testing.assert_array_equal(same[-1], icn[..., 0])


def test_outlier_check_ignores_a_tiny_background_but_not_a_spike():
    """int16 with scl_inter or smoothing leaves ~1e-6 everywhere: no false alarm; a spike is."""
    rng = np.random.default_rng(2)
    vol = np.full((1, 20, 20, 20), 1e-6, np.float32)
    vol[0, 5:15, 5:15, 5:15] = rng.normal(scale=5.0, size=(10, 10, 10))
    out = scale_maxabs(vol, ["ICN01"], ["icn.nii"])
    assert np.abs(out).max() == pytest.approx(1.0)
    vol[0, 7, 7, 7] = 1e5 * np.abs(vol).max()
    with pytest.raises(DataError, match=r"icn\.nii: volume ICN01 has an extreme value"):
        scale_maxabs(vol, ["ICN01"], ["icn.nii"])
