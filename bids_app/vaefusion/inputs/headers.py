"""Header checks of the discovered inputs: dimensions, component counts, grids, affines.

Only headers are read (cheap), for every subject, before any voxel is; voxel values are
checked during preprocessing.
"""

from __future__ import annotations

from collections import defaultdict

import nibabel as nib
import numpy as np

from vaefusion.errors import DataError
from vaefusion.inputs.types import SubjectInputs


def _header(path: str) -> nib.Nifti1Image:
    try:
        return nib.load(path)
    except Exception as exc:  # nibabel raises several types for a broken file
        raise DataError(f"{path} cannot be read as NIfTI ({exc}); replace the file.") from None


def check_headers(subjects: list[SubjectInputs], n_components: int) -> None:
    """4D ICN files with the expected component count, on one grid for every subject.

    Only headers are read. Component counts are compared across all subjects first, so that
    one odd subject is named as the odd one rather than the whole dataset as wrong.
    """
    icns = [(s.icn, _header(s.icn)) for s in subjects if s.icn is not None]
    by_count: dict[int, list[str]] = defaultdict(list)
    for path, img in icns:
        if len(img.shape) != 4:
            raise DataError(
                f"{path} is {len(img.shape)}D but NeuroMark ICN maps must be 4D (one volume per "
                f"component); give the subject's 4D component file."
            )
        by_count[img.shape[3]].append(path)
    if len(by_count) > 1:
        common = max(by_count, key=lambda n: len(by_count[n]))
        odd = min((n for n in by_count if n != common), key=lambda n: len(by_count[n]))
        raise DataError(
            f"{by_count[odd][0]} has {odd} components but {len(by_count[common])} other "
            f"subject(s) have {common} (e.g. {by_count[common][0]}); every subject's ICN maps "
            f"must come from the same NeuroMark template."
        )
    for count, paths in by_count.items():
        if count != n_components:
            raise DataError(
                f"{paths[0]} has {count} components but {n_components} are expected; give "
                f"NeuroMark's {n_components}-component maps or set --n-components {count}."
            )
    ref_path, ref_img = icns[0] if icns else (None, None)
    for path, img in icns:
        if img.shape[:3] != ref_img.shape[:3] or not np.allclose(img.affine, ref_img.affine,
                                                                  atol=1e-3):
            raise DataError(
                f"{path} has grid {img.shape[:3]} / affine "
                f"{np.round(img.affine[:3], 2).tolist()} but {ref_path} has {ref_img.shape[:3]} "
                f"/ {np.round(ref_img.affine[:3], 2).tolist()}; resample all ICN maps to one grid."
            )
    for s in subjects:
        if s.gmv is None:
            continue
        gimg = _header(s.gmv)
        gshape = gimg.shape
        if len(gshape) == 4 and gshape[3] == 1:
            gshape = gshape[:3]
        if len(gshape) != 3:
            raise DataError(f"{s.gmv} is {len(gshape)}D but a GMV volume must be 3D; give one "
                            f"gray-matter volume per file.")
        if abs(np.linalg.det(gimg.affine[:3, :3])) < 1e-6:
            raise DataError(f"{s.gmv} has a singular affine; fix its header.")
