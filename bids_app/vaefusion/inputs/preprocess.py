"""Preprocessing as the paper does it: GMV onto the ICN grid, max-abs scaling, one stack.

The numerics are pure functions; :func:`preprocess_subject` does the I/O for one subject.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from vaefusion.disk.naming import subject_key
from vaefusion.errors import DataError, unreadable_input
from vaefusion.inputs.cache import SubjectMeta, write_subject
from vaefusion.inputs.reference import GMV_MODALITY
from vaefusion.inputs.resample import resample_to_grid
from vaefusion.inputs.template_checks import check_gmv_space, check_icn_identity

LOG = logging.getLogger("vaefusion.preprocess")


#: Largest ratio of a volume's peak to its 99th-percentile magnitude. Beyond it, max-abs
#: scaling would squeeze all but a few voxels below 1e-4 (and float16 resolution, the cache's
#: type), so an outlier would flatten the map; real ICN z-maps and GM volumes are near 2-10.
#: (A percentile, not the median of non-zero voxels: int16 data with scl_inter or smoothed
#: maps have a background of tiny non-zero values.)
MAX_DYNAMIC_RANGE = 1e4


def check_finite(data: np.ndarray, path: str) -> None:
    """A NaN or Inf voxel (or one beyond the float32 range) is an error that names the file."""
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise DataError(f"{path} has {bad} NaN or Inf voxel(s) (or values beyond the float32 "
                        f"range); fix or mask the file.")


def scale_maxabs(volumes: np.ndarray, names: list[str], paths: list[str]) -> np.ndarray:
    """Scale each volume (first axis) by its maximum absolute value into [-1, 1].

    An all-zero volume cannot be scaled, and a volume whose peak is an extreme outlier
    (:data:`MAX_DYNAMIC_RANGE`) would scale to nearly zero; both are errors (not a division by
    zero or a silently empty map) that name the volume's source file (``paths`` holds one per
    volume).
    """
    flat = np.abs(volumes.reshape(volumes.shape[0], -1))
    peak = flat.max(axis=1)
    zero = np.flatnonzero(peak == 0)
    if zero.size:
        raise DataError(
            f"{paths[zero[0]]}: volume {names[zero[0]]} is all zero; replace the file or drop "
            f"the subject."
        )
    # every 4th voxel estimates the percentile well enough for an outlier test, 4x cheaper
    top = np.percentile(flat[:, ::4], 99, axis=1) if flat.shape[1] >= 400 else peak
    for i in np.flatnonzero(peak > MAX_DYNAMIC_RANGE * top):
        if top[i] == 0:
            continue  # a sparse map (fewer than 1 % non-zero voxels): nothing to compare with
        raise DataError(
            f"{paths[i]}: volume {names[i]} has an extreme value ({peak[i]:.3g}, "
            f"{peak[i] / top[i]:.2g} times its 99th-percentile magnitude {top[i]:.3g}), so "
            f"scaling it to [-1, 1] would flatten the rest of the map; fix the outlier voxel(s)."
        )
    return (volumes / peak[:, None, None, None]).astype(np.float32)


def stack_subject(
    icn: np.ndarray, icn_affine: np.ndarray, gmv: np.ndarray | None, gmv_affine: np.ndarray | None,
) -> np.ndarray:
    """ICN volumes (X, Y, Z, n) and an optional GMV volume -> (n [+1], X, Y, Z) stack.

    GMV is resampled to the ICN grid and stacked last (ICNs first, then GMV).
    """
    volumes = np.moveaxis(np.asarray(icn, dtype=np.float32), -1, 0)
    if gmv is None:
        return np.ascontiguousarray(volumes)
    grid = volumes.shape[1:]
    if gmv.shape == grid and gmv_affine is not None and np.allclose(gmv_affine, icn_affine):
        resampled = np.asarray(gmv, dtype=np.float32)
    else:
        resampled = resample_to_grid(gmv, gmv_affine, icn_affine, grid)
    return np.concatenate([volumes, resampled[None]], axis=0)


def _load(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Voxels as float32 (scl_slope/scl_inter applied by nibabel) and the affine."""
    try:
        img = nib.load(path)
        with np.errstate(over="ignore", invalid="ignore"):  # check_finite reports these
            data = np.asanyarray(img.dataobj, dtype=np.float32)
    except MemoryError:
        raise
    except Exception as exc:  # truncated gzip (EOFError), bad header, short file (OSError) ...
        # vanished, a dangling link, no permission (nibabel's errors carry no errno): exit 66
        gone = unreadable_input(path) if isinstance(exc, OSError) else None
        if gone is not None:
            raise gone from None
        raise DataError(
            f"{path} cannot be read ({type(exc).__name__}: {exc}); the file is truncated or "
            f"corrupt, so copy it again from its source."
        ) from None
    check_finite(data, path)
    return data, img.affine


def preprocess_subject(
    icn_path: str, gmv_path: str | None, subject: str, session: str | None,
    label: str | None, cache_dir: Path, icn_order: Sequence[int] = (),
) -> tuple[Path, SubjectMeta]:
    """Read, check, resample, scale and stack one subject; write its training cache.

    ``icn_order`` (``--icn-order``) gives the template component of each volume: the volumes
    are put back in template order before anything else."""
    icn, icn_affine = _load(icn_path)
    if icn.ndim != 4:
        raise DataError(f"{icn_path} is {icn.ndim}D but 4D ICN maps are needed; fix the input.")
    if icn_order:
        if len(icn_order) != icn.shape[3]:
            raise DataError(f"{icn_path} has {icn.shape[3]} volumes but --icn-order lists "
                            f"{len(icn_order)}; give one component per volume.")
        icn = icn[..., np.argsort(np.asarray(icn_order))]
    gmv = gmv_affine = None
    if gmv_path is not None:
        gmv, gmv_affine = _load(gmv_path)
        gmv = gmv.reshape(gmv.shape[:3])
    names = [f"ICN{i:02d}" for i in range(1, icn.shape[3] + 1)]
    paths = [icn_path] * len(names)
    if gmv is not None:
        names.append(GMV_MODALITY)
        paths.append(str(gmv_path))
    stack = stack_subject(icn, icn_affine, gmv, gmv_affine)
    scaled = scale_maxabs(stack, names, paths)
    # after scaling, which names an all-zero or outlier volume more precisely
    key = subject_key(subject, session)
    check_icn_identity(icn, icn_affine, icn_path, key)
    if gmv is not None:
        check_gmv_space(gmv, gmv_affine, stack[-1], icn_affine, str(gmv_path), key)
    meta = SubjectMeta(
        subject=subject, session=session, modalities=names,
        affine=np.asarray(icn_affine).tolist(), shape=list(scaled.shape[1:]), label=label,
        sources=[p for p in (icn_path, gmv_path) if p],
    )
    npy = write_subject(cache_dir, scaled, meta)
    LOG.info("%s: preprocessed %d volumes onto %s", meta.key, len(names),
             "x".join(map(str, meta.shape)))
    return npy, meta

