"""Subject-level structure shared by every arm.

Real back-reconstructed NeuroMark maps differ between people in reliable ways: each person's
networks have their own topography (boundaries and extent move by a few mm, not rigidly), a
few shared subject factors (scanner, motion, age, global connectivity) move several networks
and the gray matter together, and sites leave spatially varying fields. This module draws
those pieces; ``dataset`` combines them with the templates and the session-level noise.

- :func:`smooth_fields`: unit-variance smooth random fields (displacements, site fields).
- :class:`FactorModel`: low-rank shared factors, each with local loading maps (Gaussian
  bumps inside several ICNs, away from each map's peak, and in cortical gray matter), so a
  factor changes maps locally and survives per-volume max-abs scaling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from vaefusion.inputs import reference
from vaefusion.simulate.config import SimulationConfig
from vaefusion.simulate.grids import Grid, gaussian_blob

#: A bump's centre lies at least this many radii from its map's peak: the bump is then below
#: 1/40 of its height at the peak, so the map's maximum (what max-abs scaling divides by)
#: moves by well under 2 % even at twice the nominal strength.
PEAK_CLEARANCE = 2.5


#: The fusion factor's gray-matter bumps are this much weaker than its ICN bumps: gray matter
#: is measured with far less noise than an ICN map, and at equal strength it alone would
#: separate the groups (the fusion arm is the case where no single modality does).
FUSION_GM_SCALE = 0.15


#: ICNs per domain that the fusion factor loads on (7 domains): many weak loadings, so that
#: the modalities together separate the fusion arm's groups while none does alone.
FUSION_PER_DOMAIN = 5


#: Radius (half maximum, mm) of a factor's bump in an ICN and in gray matter.
FACTOR_RADIUS_MM = 10.0
GM_FACTOR_RADIUS_MM = 12.0


def _axis_weights(n_out: int, res_mm: float, sigma_mm: float) -> np.ndarray:
    """``(n_out, n_nodes)`` Gaussian weights from coarse nodes (spacing ``sigma_mm``, with a
    3-sigma margin) to the output voxels; each row has unit sum of squares."""
    extent = (n_out - 1) * res_mm
    nodes = np.arange(-3 * sigma_mm, extent + 3 * sigma_mm + 1e-6, sigma_mm)
    x = np.arange(n_out)[:, None] * res_mm
    w = np.exp(-0.5 * ((x - nodes[None, :]) / sigma_mm) ** 2)
    return (w / np.sqrt((w * w).sum(axis=1, keepdims=True))).astype(np.float32)


def smooth_fields(rng: np.random.Generator, n: int, shape: tuple[int, int, int],
                  res_mm: float, fwhm_mm: float) -> np.ndarray:
    """``n`` independent Gaussian random fields on ``shape`` voxels of ``res_mm``, each of unit
    variance at every voxel and smoothness ``fwhm_mm`` (float32, ``(n, *shape)``).

    White noise on a coarse lattice (spacing sigma) convolved with a Gaussian: separable, so
    three small matrix products instead of a filter over every voxel and field.
    """
    sigma = fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    wa, wb, wc = (_axis_weights(s, res_mm, sigma) for s in shape)
    x = rng.standard_normal((n, wa.shape[1], wb.shape[1], wc.shape[1]), dtype=np.float32)
    # Batched matrix products along each axis, every operand contiguous.
    x = x @ wc.T  # (n, A, B, c)
    x = wb @ x  # (n, A, b, c)
    x = (wa @ x.reshape(n, wa.shape[1], -1)).reshape(n, *shape)  # (n, a, b, c)
    return np.ascontiguousarray(x, dtype=np.float32)


def away_from_peak(template: np.ndarray, grid: Grid, radius_mm: float,
                   rng: np.random.Generator | None = None, floor: float = 0.3,
                   ceiling: float = 0.65) -> tuple[float, float, float]:
    """An MNI point inside a map, where it is between ``floor`` and ``ceiling`` of its maximum
    and at least :data:`PEAK_CLEARANCE` radii from every voxel at 80 % of the maximum or more
    (a bilateral network has two near-equal peaks, and a subject's own variability can make
    either the maximum): the strongest such point, or (with ``rng``) one drawn with
    probability proportional to the map's value there. Falls back to the in-network point
    farthest from the peaks when no point qualifies (a very compact network)."""
    value = np.abs(template) / max(float(np.abs(template).max()), 1e-12)
    dist = ndimage.distance_transform_edt(value < 0.8, sampling=grid.res_mm)
    ok = (value >= floor) & (value <= ceiling) & (dist >= PEAK_CLEARANCE * radius_mm)
    if not ok.any():
        ijk = np.unravel_index(int(np.argmax(np.where(value >= floor, dist, -1.0))),
                               template.shape)
    elif rng is None:
        ijk = np.unravel_index(int(np.argmax(np.where(ok, value, -1.0))), template.shape)
    else:
        idx = np.flatnonzero(ok)
        p = value.ravel()[idx]
        ijk = np.unravel_index(int(rng.choice(idx, p=p / p.sum())), template.shape)
    world = grid.affine[:3, :3] @ np.asarray(ijk, float) + grid.affine[:3, 3]
    return tuple(round(float(v), 1) for v in world)  # type: ignore[return-value]


@dataclass(frozen=True)
class Factor:
    """One shared subject factor: which ICNs (0-based) it loads on, with which sign and weight,
    where (MNI mm), and its gray-matter bumps."""

    name: str
    strength: float  # multiplicative change at a bump's centre per SD of the factor
    icns: tuple[int, ...]
    weights: tuple[float, ...]
    centers_mm: tuple[tuple[float, float, float], ...]
    gm_centers_mm: tuple[tuple[float, float, float], ...]
    gm_weights: tuple[float, ...]

    def to_dict(self) -> dict[str, object]:
        table = reference.icns()
        return {
            "name": self.name, "strength": self.strength,
            "icns": [{"modality": table[c].name, "domain": table[c].domain, "weight": w,
                      "center_mm": list(m)}
                     for c, w, m in zip(self.icns, self.weights, self.centers_mm, strict=True)],
            "gm": [{"center_mm": list(m), "weight": w}
                   for m, w in zip(self.gm_centers_mm, self.gm_weights, strict=True)],
            "radius_mm": {"icn": FACTOR_RADIUS_MM, "gm": GM_FACTOR_RADIUS_MM},
        }


def _draw_factor(rng: np.random.Generator, name: str, strength: float,
                 templates: np.ndarray, grid: Grid, gm_points: np.ndarray, n_domains: int,
                 per_domain: int, n_gm: int, gm_scale: float = 1.0,
                 even: bool = False) -> Factor:
    """A factor's loadings. ``even``: every ICN loading has weight 1 (random sign) and sits at
    the strongest qualifying point of its network (:func:`away_from_peak`), so each loaded
    network carries about the same share of the factor, and no single one dominates it."""
    table = reference.icns()[:templates.shape[0]]
    domains = sorted({t.domain for t in table})
    chosen: list[int] = []
    for d in rng.permutation(domains)[:n_domains]:
        members = [t.index - 1 for t in table if t.domain == d]
        chosen += [int(c) for c in rng.permutation(members)[:per_domain]]
    # only the simulated ICNs (the table is cut to the templates): nothing to filter later
    chosen = sorted(chosen)
    weights = tuple(round(float(rng.choice([-1.0, 1.0]) * (1.0 if even else rng.uniform(0.6,
                                                                                          1.0))),
                          3) for _ in chosen)
    centers = tuple(away_from_peak(templates[c], grid, FACTOR_RADIUS_MM,
                                   None if even else rng) for c in chosen)
    gm_idx = rng.choice(len(gm_points), size=min(n_gm, len(gm_points)), replace=False)
    gm_centers = tuple(tuple(round(float(v), 1) for v in gm_points[i]) for i in gm_idx)
    gm_weights = tuple(round(float(rng.choice([-1.0, 1.0]) * gm_scale
                                   * (1.0 if even else rng.uniform(0.6, 1.0))), 3)
                       for _ in gm_idx)
    return Factor(name, strength, tuple(chosen), weights, centers,
                  gm_centers, gm_weights)  # type: ignore[arg-type]


class FactorModel:
    """The shared subject factors of a simulation and their loading maps.

    Factor 0 (``fusion``) is weak and spread over many ICNs of several domains and the gray
    matter; the fusion arm shifts it in patients. The others are stronger and each move a
    handful of networks in two or three domains and one or two gray-matter regions together
    (site/scanner, motion, age and connectivity-strength-like traits). Factor 1 follows age.
    """

    def __init__(self, rng: np.random.Generator, templates: np.ndarray, icn_grid: Grid,
                 gm_template: np.ndarray, gm_work_grid: Grid, n_factors: int,
                 strength: float, fusion_strength: float) -> None:
        world = gm_work_grid.world()
        gm_peak = world[np.unravel_index(int(np.argmax(gm_template)), gm_template.shape)]
        # Cortical-looking gray matter far from the GM map's maximum.
        far = np.linalg.norm(world - gm_peak, axis=-1) >= PEAK_CLEARANCE * GM_FACTOR_RADIUS_MM
        good = (gm_template > 0.5 * float(gm_template.max())) & far
        gm_points = world[good]
        self.factors: list[Factor] = []
        for k in range(n_factors):
            if k == 0:
                f = _draw_factor(rng, "fusion", fusion_strength, templates, icn_grid,
                                 gm_points, n_domains=7, per_domain=FUSION_PER_DOMAIN, n_gm=3,
                                 gm_scale=FUSION_GM_SCALE, even=True)
            else:
                f = _draw_factor(rng, f"trait{k}", strength, templates, icn_grid, gm_points,
                                 n_domains=int(rng.integers(2, 4)), per_domain=3, n_gm=2)
            self.factors.append(f)
        # Loading maps: per ICN a list of (factor, map); gray matter one map per factor.
        self.icn_loadings: dict[int, list[tuple[int, np.ndarray]]] = {}
        for k, f in enumerate(self.factors):
            for c, w, m in zip(f.icns, f.weights, f.centers_mm, strict=True):
                blob = np.float32(w) * gaussian_blob(icn_grid, m, FACTOR_RADIUS_MM)
                self.icn_loadings.setdefault(c, []).append((k, blob))
        self.gm_loadings: list[np.ndarray | None] = []
        for f in self.factors:
            if not f.gm_centers_mm:
                self.gm_loadings.append(None)
                continue
            acc = np.zeros(gm_work_grid.shape, np.float32)
            for m, w in zip(f.gm_centers_mm, f.gm_weights, strict=True):
                acc += np.float32(w) * gaussian_blob(gm_work_grid, m, GM_FACTOR_RADIUS_MM)
            self.gm_loadings.append(acc)

    @property
    def n(self) -> int:
        return len(self.factors)

    def draw(self, rng: np.random.Generator, age_z: float) -> np.ndarray:
        """One subject's factor scores (standard normal; factor 1 correlates 0.5 with age)."""
        f = rng.standard_normal(self.n)
        if self.n > 1:
            f[1] = 0.5 * age_z + math.sqrt(0.75) * f[1]
        return f

    def icn_fields(self, scores: np.ndarray) -> dict[int, np.ndarray]:
        """Multiplicative template-space fields ``1 + sum_k strength_k f_k L_kc`` per ICN."""
        out = {}
        for c, items in self.icn_loadings.items():
            acc = np.ones_like(items[0][1])
            for k, blob in items:
                acc += np.float32(self.factors[k].strength * scores[k]) * blob
            out[c] = np.clip(acc, 0.05, None)
        return out

    def gm_field(self, scores: np.ndarray) -> np.ndarray | None:
        """The multiplicative gray-matter field of the factors (``None`` without GM bumps)."""
        acc: np.ndarray | None = None
        for k, load in enumerate(self.gm_loadings):
            if load is None:
                continue
            term = np.float32(self.factors[k].strength * scores[k]) * load
            acc = 1.0 + term if acc is None else acc + term
        return None if acc is None else np.clip(acc, 0.05, None)

    def to_list(self) -> list[dict[str, object]]:
        return [f.to_dict() for f in self.factors]


#: Smoothness of the displacement shared by all of a subject's networks (residual
#: normalisation error, coarser than each network's own topography).
SUBJECT_WARP_FWHM_MM = 40.0


def draw_topography(rng: np.random.Generator, n: int, config: SimulationConfig,
                    box_shape: tuple[int, int, int], res_mm: float) -> np.ndarray | None:
    """A subject's displacement fields ``(n, 3, *box)`` in mm: one shared by all its networks
    plus one of each network's own (boundaries and extent move, not the whole map)."""
    c = config
    if c.topography_mm <= 0 and c.subject_warp_mm <= 0:
        return None
    out = np.zeros((n, 3, *box_shape), np.float32)
    if c.topography_mm > 0:
        out += np.float32(c.topography_mm) * smooth_fields(
            rng, 3 * n, box_shape, res_mm, c.topography_fwhm_mm).reshape(out.shape)
    if c.subject_warp_mm > 0:
        out += np.float32(c.subject_warp_mm) * smooth_fields(
            rng, 3, box_shape, res_mm, SUBJECT_WARP_FWHM_MM)[None]
    return out


def draw_site_fields(rng: np.random.Generator, config: SimulationConfig, sites: list[str],
                     box_shape: tuple[int, int, int], res_mm: float, gm_work_grid: Grid
                     ) -> dict[str, tuple[np.ndarray | None, np.ndarray | None]]:
    """Each site's smooth multiplicative fields: on the ICN maps' bounding box and on the gray
    matter's work grid. Spatially varying, so per-volume max-abs scaling keeps them."""
    c = config
    out: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = {}
    for s in sites:
        icn = (1.0 + np.float32(c.site_field) * smooth_fields(
            rng, 1, box_shape, res_mm, c.site_fwhm_mm)[0]) if c.site_field > 0 else None
        gm = (1.0 + np.float32(c.site_gm_field) * smooth_fields(
            rng, 1, gm_work_grid.shape, gm_work_grid.res_mm, c.site_fwhm_mm)[0]
              ) if c.site_gm_field > 0 else None
        out[s] = (None if icn is None else np.clip(icn, 0.05, None),
                  None if gm is None else np.clip(gm, 0.05, None))
    return out


def combine_fields(*fields: np.ndarray | None) -> np.ndarray | None:
    """The product of the multiplicative fields that are given (``None`` if none is)."""
    out: np.ndarray | None = None
    for f in fields:
        if f is not None:
            out = f.astype(np.float32) if out is None else out * f
    return out
