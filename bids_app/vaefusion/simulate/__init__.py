"""Simulated NeuroMark ICN + gray-matter BIDS datasets with planted patient-control effects.

The ICN shapes are the real NeuroMark fMRI 1.0 template (packaged at 10 mm) resampled onto the
ICN grid; the gray matter is the MNI152 GM probability map that nilearn ships. Subjects vary in
the style of SimTB (Erhardt et al. 2012): per-component translation, rotation, spread (isotropic
scaling about the peak) and amplitude, plus spatially smooth Gaussian noise and a site effect.
What distinguishes patients is the arm (``effects``): local amplitude effects (a Gaussian blob
that changes an ICN near its peak, or the GM around a coordinate: local, because the app scales
every volume by its own maximum absolute value, which would erase a global change), nothing (the
null arm), or ICNs displaced by a few millimetres (the shift arm, a non-linear change).

Everything random comes from numpy Generators seeded from ``(seed, stream, subject, session)``,
so the same seed gives byte-identical files; a subject's maps come from its own streams (the
demographics and diagnosis assignment from one stream for the whole sample).

Modules: ``config`` (what to simulate and its validation), ``grids`` (grids, resampling, warps,
blobs, noise), ``icn`` and ``gm`` (one subject's maps), ``participants`` (demographics and
sites), ``effects`` (planted patient effects), ``bids`` (files, metadata and the ground truth;
its docstring lists the output layout) and ``dataset`` (:func:`simulate_dataset`).
"""

from __future__ import annotations

from vaefusion.simulate.bids import GROUND_TRUTH, SPACE
from vaefusion.simulate.config import (
    ARMS,
    DEFAULT_GM_EFFECTS,
    DEFAULT_ICN_EFFECTS,
    DEFAULT_SHIFT_ICNS,
    GM_NATIVE_PREFIXES,
    NAMINGS,
    SHIFT_DIRECTIONS,
    GmEffect,
    IcnEffect,
    SimulationConfig,
    validate_config,
)
from vaefusion.simulate.dataset import simulate_dataset
from vaefusion.simulate.gm import gm_template, simulate_gm_map
from vaefusion.simulate.grids import Grid, gaussian_blob, gm_grid, icn_grid, res_label
from vaefusion.simulate.icn import icn_templates, simulate_icn_maps
from vaefusion.simulate.participants import draw_participants

__all__ = [
    "ARMS", "DEFAULT_GM_EFFECTS", "DEFAULT_ICN_EFFECTS", "DEFAULT_SHIFT_ICNS",
    "GM_NATIVE_PREFIXES", "GROUND_TRUTH", "NAMINGS", "SHIFT_DIRECTIONS", "SPACE", "GmEffect",
    "Grid", "IcnEffect", "SimulationConfig", "draw_participants", "gaussian_blob", "gm_grid",
    "gm_template", "icn_grid", "icn_templates", "res_label", "simulate_dataset",
    "simulate_gm_map", "simulate_icn_maps", "validate_config",
]
