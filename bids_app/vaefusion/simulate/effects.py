"""Planted patient effects: what each arm changes in a patient, and the arm's ground truth.

- ``amplitude``: patients' ICN maps (and GM) are multiplied by ``1 + strength * blob`` near a
  chosen point away from each map's peak. The app scales every volume by its own maximum
  absolute value: a change at the peak would lower the divisor and brighten the whole map (a
  global gain), so the blob is placed where the peak does not feel it and stays local.
- ``fusion``: patients' fusion factor (see ``structure.FactorModel``) has mean
  ``fusion_shift`` instead of 0; the factor loads weakly on many ICNs and the gray matter.
- ``null``: nothing; a patient's maps are drawn exactly as if it were a control.
- ``shift``: chosen ICNs of patients are displaced by ``shift_mm`` (and their spread about the
  peak optionally widened) on top of every subject's own jitter, so one map's shape does not
  separate the groups. A displacement moves values between voxels: no voxelwise (linear)
  difference describes it once it is comparable to the map's smoothness, and with random
  directions the patients' mean map hardly differs from the controls'.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vaefusion.inputs import reference
from vaefusion.simulate.config import SimulationConfig
from vaefusion.simulate.grids import Grid, gaussian_blob
from vaefusion.simulate.icn import IcnVariability
from vaefusion.simulate.structure import away_from_peak

AMPLITUDE_DEFINITION = ("patients' map x max(0, 1 + strength * effect_scale * "
                        "exp(-d^2 / (2 sigma^2))), sigma = radius_mm / sqrt(2 ln 2), centred "
                        "at center_mm (for ICNs the strongest point of the network at least "
                        "2.5 radii from its peak, so max-abs scaling leaves the effect local); "
                        "strength already includes --effect-size")


FUSION_DEFINITION = ("patients' score on the shared fusion factor is drawn from "
                     "N(fusion_shift * effect_scale, 1) instead of N(0, 1); the factor "
                     "multiplies each ICN it loads on by 1 + strength * score * weight * blob "
                     "(blobs away from the peaks) and the gray matter likewise")


SHIFT_DEFINITION = ("a patient's ICN is moved by shift_mm * effect_scale along a unit direction "
                    "(random: the patient's own, uniform on the sphere; fixed: one per ICN) and "
                    "its spread about its peak is multiplied by (1 + widen) ^ effect_scale, on "
                    "top of the subject's own translation, rotation and spread; the "
                    "displacement of each patient is in participants[].icn_shift_mm")


NULL_DEFINITION = ("no patient-control difference: a patient's maps are drawn exactly as a "
                   "control's would be")


def effect_field(blob: np.ndarray, strength: float) -> np.ndarray:
    """Multiplicative field ``max(0, 1 + strength * blob)``."""
    return np.clip(1.0 + np.float32(strength) * blob, 0.0, None).astype(np.float32)


def unit_vector(rng: np.random.Generator) -> np.ndarray:
    """A direction uniform on the sphere (an isotropic normal draw, normalised)."""
    v = rng.standard_normal(3)
    return v / max(float(np.linalg.norm(v)), 1e-12)


@dataclass(frozen=True)
class PatientEffect:
    """What one subject carries; empty for controls and in the null arm.

    Keys are 0-based ICN indices; fields are multiplicative (ICN grid, GM work grid).
    """

    icn_fields: dict[int, np.ndarray] = field(default_factory=dict)
    gm_field: np.ndarray | None = None
    icn_shift_mm: dict[int, np.ndarray] = field(default_factory=dict)
    icn_spread: dict[int, float] = field(default_factory=dict)

    def move(self, var: IcnVariability) -> IcnVariability:
        """``var`` with the shift arm's displacement and widening added (``var`` if none)."""
        if not self.icn_shift_mm and not self.icn_spread:
            return var
        translation, scale = var.translation_mm.copy(), var.scale.copy()
        for c, d in self.icn_shift_mm.items():
            translation[c] += d
        for c, s in self.icn_spread.items():
            scale[c] *= s
        return replace(var, translation_mm=translation, scale=scale)


class PlantedEffects:
    """The effects of one simulation's arm, prepared once and drawn per subject."""

    def __init__(self, config: SimulationConfig, icn_grid: Grid, gm_work_grid: Grid,
                 rng: np.random.Generator, templates: np.ndarray) -> None:
        """``rng`` draws the fixed shift directions (only used by ``--shift-direction fixed``)."""
        c = self.config = config
        self.icn_effects = c.resolved_icn_effects()
        self.gm_effects = c.resolved_gm_effects()
        self.icn_centers = [away_from_peak(templates[e.index - 1], icn_grid, e.radius_mm)
                            for e in self.icn_effects]
        self.icn_blobs = [gaussian_blob(icn_grid, m, e.radius_mm)
                          for e, m in zip(self.icn_effects, self.icn_centers, strict=True)]
        self.gm_blobs = [gaussian_blob(gm_work_grid, e.center_mm, e.radius_mm)
                         for e in self.gm_effects]
        self.shift_icns = c.resolved_shift_icns()
        self.directions: dict[int, np.ndarray] = (
            {i: unit_vector(rng) for i in self.shift_icns}
            if c.shift_direction == "fixed" else {})

    @property
    def active(self) -> bool:
        """Whether the arm plants anything at all (patients carry an effect scale)."""
        c = self.config
        return ((c.arm == "amplitude" and c.effect_size > 0) or c.arm == "shift"
                or (c.arm == "fusion" and c.fusion_shift > 0))

    def for_subject(self, patient: bool, k_effect: float, rng: np.random.Generator
                    ) -> PatientEffect:
        """One subject's effect; ``k_effect`` is its multiplier (0 for controls), ``rng`` its
        own stream for random shift directions."""
        c = self.config
        if not (patient and self.active and k_effect > 0) or c.arm == "fusion":
            return PatientEffect()
        if c.arm == "shift":
            shifts = {i - 1: c.shift_mm * k_effect
                      * (self.directions[i] if self.directions else unit_vector(rng))
                      for i in self.shift_icns}
            spread = ({i - 1: (1.0 + c.widen) ** k_effect for i in self.shift_icns}
                      if c.widen else {})
            return PatientEffect(icn_shift_mm=shifts, icn_spread=spread)
        effects: dict[int, np.ndarray] = {}
        gm_effect = None
        for e, blob in zip(self.icn_effects, self.icn_blobs, strict=True):
            f = effect_field(blob, e.strength * c.effect_size * k_effect)
            effects[e.index - 1] = effects[e.index - 1] * f if e.index - 1 in effects else f
        for e, blob in zip(self.gm_effects, self.gm_blobs, strict=True):
            f = effect_field(blob, e.strength * c.effect_size * k_effect)
            gm_effect = f if gm_effect is None else gm_effect * f
        return PatientEffect(icn_fields=effects, gm_field=gm_effect)

    def truth(self, icn_grid: Grid) -> dict[str, Any]:
        """The arm's section of ``simulation.json``: its name, parameters and definition."""
        c = self.config
        if c.arm == "null":
            return {"name": "null", "definition": NULL_DEFINITION}
        if c.arm == "amplitude":
            return {"name": "amplitude", "effect_size": c.effect_size,
                    "effect_variability": c.effect_variability,
                    "definition": AMPLITUDE_DEFINITION}
        if c.arm == "fusion":
            return {"name": "fusion", "fusion_shift": c.fusion_shift,
                    "effect_variability": c.effect_variability, "factor": 0,
                    "definition": FUSION_DEFINITION}
        table = reference.icns()
        return {
            "name": "shift", "shift_mm": c.shift_mm, "shift_direction": c.shift_direction,
            "widen": c.widen, "effect_variability": c.effect_variability,
            "definition": SHIFT_DEFINITION,
            "icns": [
                {"index": i, "modality": table[i - 1].name, "domain": table[i - 1].domain,
                 "label": table[i - 1].label, "center_mm": list(table[i - 1].peak_mm),
                 "center_voxel": list(icn_grid.voxel(table[i - 1].peak_mm)),
                 "direction": (_rounded(self.directions[i]) if self.directions else "random")}
                for i in self.shift_icns
            ],
        }

    def participant_truth(self, effect: PatientEffect) -> dict[str, Any]:
        """Per-participant truth beyond the effect scale (the shift arm's displacements)."""
        if self.config.arm != "shift":
            return {}
        table = reference.icns()
        return {"icn_shift_mm": {table[i - 1].name: _rounded(effect.icn_shift_mm[i - 1])
                                 if i - 1 in effect.icn_shift_mm else [0.0, 0.0, 0.0]
                                 for i in self.shift_icns}}


def _rounded(v: np.ndarray) -> list[float]:
    # 0.1 micrometre is precise enough for a truth file and keeps it readable.
    return [round(float(x), 4) for x in v]

