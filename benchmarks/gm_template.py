"""Write the packaged grey-matter template: nilearn's MNI152 (2009a) GM probability map on
NeuroMark's 3 mm grid, as uint8 with scl_slope 1/255 (the GMV space check compares each
subject's grey matter with it; see docs/reliability.md).

    python benchmarks/gm_template.py bids_app/vaefusion/data/neuromark/MNI152_GM_3mm.nii.gz
"""

from __future__ import annotations

import argparse

import nibabel as nib
import numpy as np

from vaefusion.simulate.gm import _GM_FILE, nilearn_file
from vaefusion.simulate.grids import icn_grid, resample_separable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    out = parser.parse_args().out
    img = nib.load(nilearn_file(_GM_FILE))
    data = np.asarray(img.dataobj, dtype=np.float32)
    grid = icn_grid(3.0)
    gm = np.clip(resample_separable(data / data.max(), img.affine, grid, order=1,
                                    antialias=True), 0.0, 1.0)
    out_img = nib.Nifti1Image(np.rint(gm * 255).astype(np.uint8), grid.affine)
    out_img.header.set_slope_inter(1 / 255, 0.0)
    out_img.header.set_xyzt_units("mm")
    nib.save(out_img, out)
    print(f"{out}: {grid.shape}, GM sum {gm.sum():.0f} voxels")


if __name__ == "__main__":
    main()
