"""The arm's truth in voxel space: the expected HC - SZ difference of every modality after
vaefusion's own preprocessing (GM resampled to the ICN grid, every volume max-abs scaled).

Decoded group-difference maps are scored against this, not against the planted blob: max-abs
scaling changes what a planted effect looks like (a change at a map's peak becomes a global
gain), and only the preprocessed difference is what a model can see.

It is computed for the template subject (no topography, no trait factors, no site field, no
noise) at the mean effect scale (1): a control and a patient that differ only by the arm. The
subject-level variability averages to this to first order (it blurs it slightly).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vaefusion.inputs import reference
from vaefusion.inputs.preprocess import scale_maxabs, stack_subject
from vaefusion.simulate.bids import save_nifti
from vaefusion.simulate.config import SimulationConfig
from vaefusion.simulate.effects import PlantedEffects
from vaefusion.simulate.gm import BRAIN_CENTER_MM, simulate_gm_map
from vaefusion.simulate.grids import Grid, spatial_transform, warp
from vaefusion.simulate.structure import FactorModel

#: Where the expected difference is written, relative to the dataset root.
EXPECTED_DIFFERENCE = "code/expected_difference.nii.gz"


#: Directions that the random-direction shift arm is averaged over (the 6 axes and the 8
#: diagonals): the expectation over a uniform direction, to within the spread of these 14.
_DIRECTIONS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]
                       + [[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
_DIRECTIONS /= np.linalg.norm(_DIRECTIONS, axis=1, keepdims=True)


DEFINITION = ("HC - SZ difference of the preprocessed (GM resampled to the ICN grid, every "
              "volume scaled by its maximum |value|) maps of the template subject: a control "
              "and a patient at effect scale 1 that differ only by the arm; 4D, one volume per "
              "modality in stacking order (ICNs, then GMV)")


def _template_icns(templates: np.ndarray, fields: dict[int, np.ndarray]) -> np.ndarray:
    out = templates.copy()
    for c, f in fields.items():
        out[c] = out[c] * f
    return out


def _shifted(templates: np.ndarray, grid: Grid, centers: np.ndarray, planted: PlantedEffects,
             config: SimulationConfig) -> np.ndarray:
    """The expected (over random directions) patient maps of the shift arm."""
    out = templates.copy()
    for index in planted.shift_icns:
        c = index - 1
        dirs = ([planted.directions[index]] if planted.directions else list(_DIRECTIONS))
        scale = (1.0 + config.widen)
        acc = np.zeros_like(templates[c])
        for d in dirs:
            t = spatial_transform(config.shift_mm * np.asarray(d), (0.0, 0.0, 0.0), scale,
                                  centers[c])
            acc += warp(np.ascontiguousarray(templates[c]), grid, t)
        out[c] = acc / len(dirs)
    return out


def expected_difference(config: SimulationConfig, planted: PlantedEffects,
                        factors: FactorModel, templates: np.ndarray, igrid: Grid,
                        gm_base: np.ndarray, wgrid: Grid, ggrid: Grid, centers: np.ndarray
                        ) -> np.ndarray:
    """``(n_modalities, X, Y, Z)``: HC - SZ after preprocessing (see :data:`DEFINITION`)."""
    c = config
    hc_scores = np.zeros(factors.n)
    sz_scores = hc_scores.copy()
    if c.arm == "fusion":
        sz_scores[0] = c.fusion_shift
    effect = planted.for_subject(True, 1.0, np.random.default_rng(0))
    sz_fields = factors.icn_fields(sz_scores)
    for i, f in effect.icn_fields.items():
        sz_fields[i] = sz_fields[i] * f if i in sz_fields else f
    hc_icn = _template_icns(templates, factors.icn_fields(hc_scores))
    if c.arm == "shift":
        sz_icn = _shifted(templates, igrid, centers, planted, c)
    else:
        sz_icn = _template_icns(templates, sz_fields)
    identity = spatial_transform((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 1.0, BRAIN_CENTER_MM)

    def gm(field: np.ndarray | None) -> np.ndarray:
        return simulate_gm_map(np.random.default_rng(0), gm_base, wgrid, identity, 1.0, field,
                               0.0, 8.0, c.gm_fwhm_mm, out_grid=ggrid)

    sz_gm_field = factors.gm_field(sz_scores)
    if effect.gm_field is not None:
        sz_gm_field = effect.gm_field if sz_gm_field is None else sz_gm_field * effect.gm_field
    names = reference.modality_names(templates.shape[0])
    stacks = []
    for icn, g in ((hc_icn, gm(factors.gm_field(hc_scores))), (sz_icn, gm(sz_gm_field))):
        stack = stack_subject(np.moveaxis(icn, 0, -1), igrid.affine, g, ggrid.affine)
        stacks.append(scale_maxabs(stack, names, ["template subject"] * len(names)))
    return (stacks[0] - stacks[1]).astype(np.float32)


def write_expected_difference(out: Path, config: SimulationConfig, planted: PlantedEffects,
                              factors: FactorModel, templates: np.ndarray,
                              igrid: Grid, gm_base: np.ndarray, wgrid: Grid, ggrid: Grid,
                              centers: np.ndarray) -> dict[str, Any]:
    """Write :data:`EXPECTED_DIFFERENCE` and return its ``simulation.json`` entry: the file,
    the definition and, per modality, the largest |difference| and where it is."""
    diff = expected_difference(config, planted, factors, templates, igrid, gm_base, wgrid,
                               ggrid, centers)
    save_nifti(np.moveaxis(diff, 0, -1), igrid.affine, out / EXPECTED_DIFFERENCE,
               "vaefusion-simulate expected HC-SZ difference")
    names = reference.modality_names(templates.shape[0])
    summary = []
    for name, d in zip(names, diff, strict=True):
        peak = float(np.abs(d).max())
        if peak < 1e-4:
            continue
        ijk = np.unravel_index(int(np.argmax(np.abs(d))), d.shape)
        summary.append({"modality": name, "max_abs": round(peak, 5),
                        "voxels_above_0.01": int((np.abs(d) > 0.01).sum()),
                        "peak_voxel": [int(v) for v in ijk],
                        "peak_value": round(float(d[ijk]), 5)})
    return {"file": EXPECTED_DIFFERENCE, "definition": DEFINITION, "modalities": names,
            "affected": summary}
