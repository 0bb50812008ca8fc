"""Every choice of a simulation (:class:`SimulationConfig`), the planted effects' types and
defaults, and the validation that turns an impossible choice into one :class:`UsageError`."""

from __future__ import annotations

from dataclasses import dataclass

from vaefusion.errors import UsageError
from vaefusion.inputs import reference
from vaefusion.simulate.grids import GM_BBOX_MM

NAMINGS = ("bids", "native", "both")


GM_NATIVE_PREFIXES = ("smwc1", "mwc1", "mwp1", "smwp1")


#: What distinguishes patients from controls (the known answer a method should find):
#: ``amplitude`` local multiplicative ICN and GM effects away from each map's peak; ``null``
#: nothing at all (every method must land at chance); ``shift`` chosen ICNs displaced and
#: widened, a non-linear change of the voxel values; ``fusion`` patients differ in one shared
#: subject factor that loads weakly on many ICNs and the gray matter, so that no single
#: modality separates the groups well but all of them together do.
ARMS = ("amplitude", "null", "shift", "fusion")


#: ``random``: each patient's ICN moves in its own direction (uniform on the sphere), so the
#: patients' mean map barely moves and the difference is how far a map sits from where it
#: belongs; ``fixed``: one direction per ICN (drawn from the seed) for every patient.
SHIFT_DIRECTIONS = ("random", "fixed")


@dataclass(frozen=True)
class IcnEffect:
    """Patients' ICN ``index`` (1-based) is multiplied by ``1 + strength * blob``; the blob is a
    Gaussian whose half maximum lies ``radius_mm`` from its centre, the strongest point of the
    network at least 2.5 radii from the map's peak, so that the map's maximum (and with it the
    max-abs scaling) does not move: the effect stays local after preprocessing."""

    index: int
    strength: float
    radius_mm: float = 8.0


@dataclass(frozen=True)
class GmEffect:
    """Patients' GM is multiplied by ``1 + strength * blob`` around ``center_mm`` (MNI mm);
    half maximum at ``radius_mm``."""

    center_mm: tuple[float, float, float]
    radius_mm: float
    strength: float


#: Defaults: reduced network strength in a secondary node of the anterior cingulate (DMN,
#: ICN45) and the insula (CC, ICN27) networks, and reduced GM in the left anterior insula and
#: left superior temporal gyrus, as often reported in schizophrenia. The strengths are set so
#: that each effect's Cohen's d after preprocessing, at the core of its blob, is about 0.45:
#: the size published for the most affected regions (benchmarks/effect_sizes.py measures it;
#: docs/simulation.md). An ICN's d depends on how noisy the map is where the blob sits, hence
#: two strengths; GM is measured with far less noise, hence a much smaller change.
DEFAULT_ICN_EFFECTS: tuple[IcnEffect, ...] = (
    IcnEffect(45, -0.35, 8.0),
    IcnEffect(27, -0.25, 8.0),
)


DEFAULT_GM_EFFECTS: tuple[GmEffect, ...] = (
    GmEffect((-38.0, 12.0, 0.0), 12.0, -0.06),
    GmEffect((-54.0, -20.0, 6.0), 12.0, -0.06),
)


#: The shift arm moves the same networks the amplitude arm changes, so the arms compare.
DEFAULT_SHIFT_ICNS: tuple[int, ...] = tuple(e.index for e in DEFAULT_ICN_EFFECTS)


@dataclass(frozen=True)
class SimulationConfig:
    """Every choice of a simulation; ``simulation.json`` records it."""

    n_subjects: int = 20
    seed: int = 0
    patient_fraction: float = 0.5
    n_sites: int = 3
    sessions: int = 0
    icn_res: float = 3.0
    gm_res: float = 1.5
    n_components: int = reference.N_ICN
    icn_effects: tuple[IcnEffect, ...] | None = None  # None: the defaults that fit
    gm_effects: tuple[GmEffect, ...] | None = None  # None: the defaults
    effect_size: float = 1.0
    effect_variability: float = 0.2  # sd of the per-patient multiplier of every effect
    noise: float = 1.0  # multiplies every session-level (measurement) noise sd below
    icn_noise: float = 0.28  # smooth noise sd, relative to each template map's max |value|
    icn_noise_fwhm_mm: float = 14.0
    gm_noise: float = 0.06  # sd of the smooth multiplicative regional GM variability (a trait)
    gm_noise_fwhm_mm: float = 12.0
    gm_error: float = 0.09  # sd of the smooth multiplicative GM measurement noise (per session)
    gm_error_fwhm_mm: float = 8.0
    gm_fwhm_mm: float = 8.0  # SPM smoothing of mwc1 into smwc1
    translation_mm: float = 1.0  # sd per axis, once per subject and again per component
    rotation_deg: float = 1.5  # sd per axis, per component, about its peak
    spread: float = 0.05  # sd of log isotropic scale per component, about its peak
    amplitude: float = 0.2  # sd of log amplitude per component
    topography_mm: float = 1.5  # sd per axis of each ICN's smooth displacement field
    topography_fwhm_mm: float = 25.0
    subject_warp_mm: float = 1.0  # sd per axis of the displacement shared by a subject's ICNs
    n_factors: int = 5  # shared subject factors (factor 0 is the fusion arm's)
    factor_strength: float = 0.25  # multiplicative change per SD at a trait factor's bump centre
    fusion_strength: float = 0.13  # the same for the (weak, widespread) fusion factor
    fusion_shift: float = 2.0  # fusion arm: patients' mean of the fusion factor, in SDs
    site_field: float = 0.08  # sd of each site's smooth multiplicative field on ICN maps
    site_gm_field: float = 0.06  # the same on gray matter
    site_fwhm_mm: float = 60.0
    naming: str = "bids"
    gm_native_prefix: str = "smwc1"
    arm: str = "amplitude"  # one of ARMS
    shift_icns: tuple[int, ...] | None = None  # shift arm; None: the defaults that fit
    shift_mm: float = 8.0  # shift arm: displacement of a patient's ICN (x its effect scale)
    shift_direction: str = "random"  # one of SHIFT_DIRECTIONS
    widen: float = 0.25  # shift arm: a patient's ICN spread x (1 + widen) ^ its effect scale

    def resolved_icn_effects(self) -> tuple[IcnEffect, ...]:
        """The ICN effects that apply (defaults outside ``n_components`` are dropped; none
        outside the amplitude arm)."""
        if self.arm != "amplitude":
            return ()
        if self.icn_effects is None:
            return tuple(e for e in DEFAULT_ICN_EFFECTS if e.index <= self.n_components)
        return self.icn_effects

    def resolved_gm_effects(self) -> tuple[GmEffect, ...]:
        if self.arm != "amplitude":
            return ()
        return DEFAULT_GM_EFFECTS if self.gm_effects is None else self.gm_effects

    def resolved_shift_icns(self) -> tuple[int, ...]:
        """The ICNs (1-based) the shift arm moves (defaults outside ``n_components`` dropped)."""
        if self.arm != "shift":
            return ()
        if self.shift_icns is None:
            return tuple(i for i in DEFAULT_SHIFT_ICNS if i <= self.n_components)
        return self.shift_icns


def validate_config(config: SimulationConfig) -> None:
    """Raise :class:`UsageError` (one sentence) for an impossible configuration."""
    c = config
    checks = [
        (c.n_subjects >= 1, f"--n-subjects must be at least 1, not {c.n_subjects}"),
        (c.seed >= 0, f"--seed must be a non-negative integer, not {c.seed}"),
        (0.0 <= c.patient_fraction <= 1.0,
         f"--patient-fraction must be between 0 and 1, not {c.patient_fraction}"),
        (c.n_sites >= 1, f"--n-sites must be at least 1, not {c.n_sites}"),
        (c.sessions >= 0, f"--sessions must be 0 (no session level) or more, not {c.sessions}"),
        (1.0 <= c.icn_res <= 20.0, f"--icn-res must be between 1 and 20 mm, not {c.icn_res}"),
        (0.5 <= c.gm_res <= 20.0, f"--gm-res must be between 0.5 and 20 mm, not {c.gm_res}"),
        (1 <= c.n_components <= reference.N_ICN,
         f"--n-components must be between 1 and {reference.N_ICN}, not {c.n_components}"),
        (c.effect_size >= 0.0, f"--effect-size must be non-negative, not {c.effect_size}"),
        (c.noise >= 0.0, f"--noise must be non-negative, not {c.noise}"),
        (c.naming in NAMINGS, f"--naming must be one of {', '.join(NAMINGS)}, not {c.naming}"),
        (c.gm_native_prefix in GM_NATIVE_PREFIXES,
         f"--gm-native-prefix must be one of {', '.join(GM_NATIVE_PREFIXES)}"),
        (c.gm_fwhm_mm >= 0.0, f"--gm-fwhm must be non-negative, not {c.gm_fwhm_mm}"),
        (1 <= c.n_factors <= 12, f"--n-factors must be between 1 and 12, not {c.n_factors}"),
        (c.fusion_shift >= 0.0, f"--fusion-shift must be non-negative, not {c.fusion_shift}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message + ".")
    _validate_arm(c)
    lo, hi = GM_BBOX_MM
    for e in c.resolved_icn_effects():
        if not 1 <= e.index <= c.n_components:
            raise UsageError(f"--icn-effect index {e.index} is outside the {c.n_components} "
                             "simulated components (see --n-components).")
        _check_effect(e.strength * c.effect_size, e.radius_mm, f"--icn-effect {e.index}")
    for e in c.resolved_gm_effects():
        if not all(lo[a] <= e.center_mm[a] <= hi[a] for a in range(3)):
            raise UsageError(f"--gm-effect centre {e.center_mm} is outside the brain's bounding "
                             f"box {lo}..{hi} mm.")
        _check_effect(e.strength * c.effect_size, e.radius_mm, "--gm-effect")


def _validate_arm(c: SimulationConfig) -> None:
    if c.arm not in ARMS:
        raise UsageError(f"--arm must be one of {', '.join(ARMS)}, not {c.arm}.")
    if c.arm != "amplitude" and (c.icn_effects or c.gm_effects):
        raise UsageError(f"--icn-effect and --gm-effect plant amplitude effects; use them with "
                         f"--arm amplitude, not --arm {c.arm}.")
    if c.arm != "shift":
        if c.shift_icns:
            raise UsageError(f"--shift-icn moves ICNs in the shift arm; add --arm shift "
                             f"(not --arm {c.arm}).")
        return
    checks = [
        (c.shift_direction in SHIFT_DIRECTIONS, "--shift-direction must be one of "
         f"{', '.join(SHIFT_DIRECTIONS)}, not {c.shift_direction}"),
        (0.0 <= c.shift_mm <= 30.0, f"--shift-mm must be between 0 and 30 mm, not {c.shift_mm}"),
        (-0.5 < c.widen <= 1.0, f"--widen must be above -0.5 and at most 1, not {c.widen}"),
        (c.shift_mm > 0 or c.widen != 0, "--arm shift with --shift-mm 0 and --widen 0 plants "
         "nothing; use --arm null for a null dataset"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message + ".")
    icns = c.resolved_shift_icns()
    if not icns:
        raise UsageError(f"--arm shift moves no ICN: the default ICNs "
                         f"{', '.join(map(str, DEFAULT_SHIFT_ICNS))} are outside the "
                         f"{c.n_components} simulated components; choose one with --shift-icn.")
    for index in icns:
        if not 1 <= index <= c.n_components:
            raise UsageError(f"--shift-icn index {index} is outside the {c.n_components} "
                             "simulated components (see --n-components).")
    if len(set(icns)) != len(icns):
        raise UsageError("--shift-icn names an ICN twice; give each ICN once.")


def _check_effect(strength: float, radius: float, what: str) -> None:
    if not radius > 0:
        raise UsageError(f"{what}: the radius must be positive, not {radius}.")
    if not strength > -1.0:
        raise UsageError(f"{what}: strength x effect size is {strength:g}; a decrease must stay "
                         "above -1 (-1 would remove the signal entirely).")
