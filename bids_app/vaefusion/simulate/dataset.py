"""``simulate_dataset``: the orchestration of one simulated dataset."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from vaefusion.inputs import reference
from vaefusion.simulate.bids import (
    GIFT_PREFIX,
    GROUND_TRUTH,
    SPACE,
    ground_truth,
    prepare_output,
    save_nifti,
    t1w_image,
    write_derivative_metadata,
    write_json,
    write_raw_metadata,
)
from vaefusion.simulate.config import SimulationConfig, validate_config
from vaefusion.simulate.effects import PlantedEffects
from vaefusion.simulate.gm import BRAIN_CENTER_MM, gm_template, gm_work_res, simulate_gm_map
from vaefusion.simulate.grids import (
    bounding_box,
    gm_grid,
    icn_grid,
    res_label,
    spatial_transform,
)
from vaefusion.simulate.icn import (
    IcnVariability,
    draw_icn_variability,
    icn_templates,
    simulate_icn_maps,
)
from vaefusion.simulate.participants import draw_participants, draw_sites
from vaefusion.simulate.structure import (
    FactorModel,
    combine_fields,
    draw_site_fields,
    draw_topography,
    smooth_fields,
)
from vaefusion.simulate.truth import write_expected_difference

# Random streams: (seed, stream, ...) keeps every draw independent of the others.
_STREAM_DEMOGRAPHICS, _STREAM_SITES, _STREAM_SUBJECT, _STREAM_SESSION = 0, 1, 2, 3
_STREAM_ARM, _STREAM_ARM_SUBJECT = 4, 5
_STREAM_FACTORS, _STREAM_STRUCTURE, _STREAM_SITE_FIELDS = 6, 7, 8

#: Share of the ICN noise sd present far from a network (the rest scales with the template).
NOISE_FLOOR = 0.4


def simulate_dataset(out_dir: str | Path, config: SimulationConfig | None = None, *,
                     overwrite: bool = False,
                     progress: Callable[[int, int], None] | None = None,
                     **overrides: Any) -> dict[str, Any]:
    """Write a simulated BIDS dataset to ``out_dir`` and return its ground truth.

    ``overrides`` are :class:`SimulationConfig` fields (e.g. ``n_subjects=8, icn_res=9``).
    The ground truth is also written to ``out_dir/code/simulation.json``. ``progress(done,
    total)`` is called before each subject (a long simulation can say how far it is).
    """
    config = replace(config or SimulationConfig(), **overrides)
    if isinstance(config.icn_effects, list):
        config = replace(config, icn_effects=tuple(config.icn_effects))
    if isinstance(config.gm_effects, list):
        config = replace(config, gm_effects=tuple(config.gm_effects))
    validate_config(config)
    out = Path(out_dir)
    prepare_output(out, overwrite)

    c = config
    igrid, ggrid = icn_grid(c.icn_res), gm_grid(c.gm_res)
    n = c.n_components
    templates, mask = icn_templates(c.icn_res, n)
    wgrid = gm_grid(gm_work_res(c.gm_res, c.gm_fwhm_mm))  # GM is simulated here, then resampled
    gm_base = gm_template(wgrid.res_mm)
    table = reference.icns()
    centers = np.array([table[i].peak_mm for i in range(n)])
    max_abs = np.abs(templates).reshape(n, -1).max(axis=1)
    # Noise is stronger where a network is (its amplitude fluctuates with it) and present
    # everywhere in the brain: sd = icn_noise x peak x (floor + (1 - floor) |template| / peak).
    noise_profile = (max_abs[:, None, None, None]
                     * (NOISE_FLOOR + (1.0 - NOISE_FLOOR) * np.abs(templates)
                        / max_abs[:, None, None, None]))[(slice(None), *bounding_box(mask))]

    people = draw_participants(np.random.default_rng([c.seed, _STREAM_DEMOGRAPHICS]),
                               c.n_subjects, c.patient_fraction, c.n_sites)
    sites = draw_sites(np.random.default_rng([c.seed, _STREAM_SITES]), c.n_sites)

    planted = PlantedEffects(c, igrid, wgrid, np.random.default_rng([c.seed, _STREAM_ARM]),
                             templates)
    factors = FactorModel(np.random.default_rng([c.seed, _STREAM_FACTORS]), templates, igrid,
                          gm_base, wgrid, c.n_factors, c.factor_strength, c.fusion_strength)
    box = bounding_box(mask)
    box_shape = tuple(b.stop - b.start for b in box)
    site_fields = draw_site_fields(np.random.default_rng([c.seed, _STREAM_SITE_FIELDS]), c,
                                   sorted(sites), box_shape, igrid.res_mm, wgrid)
    ages = np.array([p["age"] for p in people], float)
    age_mean, age_sd = float(ages.mean()), max(float(ages.std()), 1.0)

    sessions = [f"ses-{k}" for k in range(1, c.sessions + 1)] or [None]
    naming_bids = c.naming in ("bids", "both")
    naming_native = c.naming in ("native", "both")
    deriv = out / "derivatives"
    files: list[dict[str, Any]] = []
    gift_rows: list[dict[str, Any]] = []
    t1w_bytes: bytes | None = None
    # Compressing a subject's files (zlib releases the GIL) overlaps simulating the next one;
    # only the previous subject's writes may be pending, so memory stays bounded.
    writer = ThreadPoolExecutor(max_workers=2)
    pending: list[Future[None]] = []

    def save(data: np.ndarray, affine: np.ndarray, path: Path, description: str) -> None:
        pending.append(writer.submit(save_nifti, data, affine, path, description))

    try:
        for i, person in enumerate(people):
            if progress is not None:
                progress(i, len(people))
            sub = person["participant_id"]
            patient = person["diagnosis"] == "SZ"
            site = sites[person["site"]]
            rng = np.random.default_rng([c.seed, _STREAM_SUBJECT, i])
            # Subject level: stable across sessions (anatomy, network topography, disease).
            # Drawn for everyone, so a subject's other draws do not depend on the diagnosis.
            k = float(rng.normal(1.0, c.effect_variability))
            k_effect = max(0.0, k) if patient else 0.0
            person["effect_scale"] = k_effect if planted.active else 0.0
            shift = rng.normal(0.0, c.translation_mm, 3)
            subject_var = draw_icn_variability(rng, n, c, shift)
            gm_scale = (site["gm_scale"] * float(np.exp(rng.normal(0.0, 0.05)))
                        * (1.0 - 0.004 * (person["age"] - 40)))  # GM declines with age
            gm_t = spatial_transform(rng.normal(0.0, c.translation_mm, 3),
                                     rng.normal(0.0, 1.0, 3), float(np.exp(rng.normal(0.0, 0.02))),
                                     BRAIN_CENTER_MM)
            # Stable traits from their own stream: topography, shared factors, regional GM.
            trng = np.random.default_rng([c.seed, _STREAM_STRUCTURE, i])
            scores = factors.draw(trng, (person["age"] - age_mean) / age_sd)
            if c.arm == "fusion" and patient:
                scores[0] += c.fusion_shift * k_effect
            person["factor_scores"] = [round(float(v), 4) for v in scores]
            displacement = draw_topography(trng, n, c, box_shape, igrid.res_mm)
            gm_regional = (smooth_fields(trng, 1, wgrid.shape, wgrid.res_mm,
                                         c.gm_noise_fwhm_mm)[0] * np.float32(c.gm_noise)
                           if c.gm_noise > 0 else None)
            # The arm's own stream: what it draws never changes the subject's other draws.
            effect = planted.for_subject(
                patient, k_effect, np.random.default_rng([c.seed, _STREAM_ARM_SUBJECT, i]))
            person.update(planted.participant_truth(effect))
            subject_var = effect.move(subject_var)
            icn_fields = factors.icn_fields(scores)
            for ci, f in effect.icn_fields.items():
                icn_fields[ci] = icn_fields[ci] * f if ci in icn_fields else f
            gm_field = combine_fields(factors.gm_field(scores), effect.gm_field,
                                      None if gm_regional is None else 1.0 + gm_regional,
                                      site_fields[person["site"]][1])

            for k, ses in enumerate(sessions, start=1):
                srng = np.random.default_rng([c.seed, _STREAM_SESSION, i, k])
                # Session level: small test-retest jitter and fresh noise.
                var = IcnVariability(
                    translation_mm=subject_var.translation_mm + srng.normal(0.0, 0.5, (n, 3)),
                    rotation_deg=subject_var.rotation_deg + srng.normal(0.0, 0.5, (n, 3)),
                    scale=subject_var.scale * np.exp(srng.normal(0.0, 0.01, n)),
                    amplitude=subject_var.amplitude * np.exp(srng.normal(0.0, 0.05, n))
                    * site["icn_amplitude"],
                )
                noise_sd = c.noise * c.icn_noise * site["icn_noise"] * noise_profile
                icn = simulate_icn_maps(srng, templates, mask, igrid, centers, var,
                                        icn_fields, displacement,
                                        site_fields[person["site"]][0], noise_sd,
                                        c.icn_noise_fwhm_mm)
                gm = simulate_gm_map(srng, gm_base, wgrid, gm_t, gm_scale, gm_field,
                                     c.noise * c.gm_error, c.gm_error_fwhm_mm, c.gm_fwhm_mm,
                                     out_grid=ggrid)
                _check_volumes(icn, gm, sub, ses)
                for future in pending:  # the previous subject's files are written by now
                    future.result()
                pending.clear()

                stem = f"{sub}_{ses}" if ses else sub
                sdir = Path(sub, ses) if ses else Path(sub)
                record: dict[str, Any] = {"participant_id": sub, "session_id": ses or "n/a"}
                # Raw placeholder T1w: identical bytes for everyone, so encode once.
                t1_path = out / sdir / "anat" / f"{stem}_T1w.nii.gz"
                t1_path.parent.mkdir(parents=True, exist_ok=True)
                if t1w_bytes is None:
                    nib.save(t1w_image(), t1_path)
                    t1w_bytes = t1_path.read_bytes()
                else:
                    t1_path.write_bytes(t1w_bytes)
                record["t1w"] = t1_path.relative_to(out).as_posix()
                icn_4d = np.moveaxis(icn, 0, -1)
                if naming_bids:
                    p = (deriv / "neuromark" / sdir / "func" /
                         f"{stem}_task-rest_space-{SPACE}_res-{res_label(c.icn_res)}"
                         "_desc-neuromark_components.nii.gz")
                    save(icn_4d, igrid.affine, p, f"vaefusion-simulate ICNs {stem}")
                    record["icn"] = p.relative_to(out).as_posix()
                    p = (deriv / "spm" / sdir / "anat" /
                         f"{stem}_space-{SPACE}_label-GM_desc-smwc1_probseg.nii.gz")
                    save(gm, ggrid.affine, p, f"vaefusion-simulate smwc1 {stem}")
                    record["gm"] = p.relative_to(out).as_posix()
                if naming_native:
                    p = deriv / "gift" / f"{GIFT_PREFIX}_sub{i + 1:03d}_component_ica_s{k}_.nii"
                    save(icn_4d, igrid.affine, p, f"GIFT-style back-reconstruction {stem}")
                    record["icn_native"] = p.relative_to(out).as_posix()
                    gift_rows.append({"gift_index": i + 1, "participant_id": sub,
                                      "session_id": ses or "n/a", "gift_session": k})
                    p = deriv / "cat12" / sdir / "anat" / f"{c.gm_native_prefix}{stem}_T1w.nii"
                    save(gm, ggrid.affine, p, f"vaefusion-simulate {c.gm_native_prefix} {stem}")
                    record["gm_native"] = p.relative_to(out).as_posix()
                files.append(record)
        for future in pending:
            future.result()
    finally:
        writer.shutdown(wait=True)

    truth = ground_truth(c, igrid, ggrid, planted, people, sites, files)
    truth["factors"] = factors.to_list()
    truth["expected_difference"] = write_expected_difference(
        out, c, planted, factors, templates, igrid, gm_base, wgrid, ggrid, centers)
    write_raw_metadata(out, c, people)
    write_derivative_metadata(deriv, c, naming_bids, naming_native, gift_rows)
    write_json(out / GROUND_TRUTH, truth)
    return truth


def _check_volumes(icn: np.ndarray, gm: np.ndarray, sub: str, ses: str | None) -> None:
    # The app treats an all-zero or non-finite volume as bad data; never write one.
    flat = icn.reshape(icn.shape[0], -1)
    if not (np.isfinite(icn).all() and np.isfinite(gm).all()
            and (np.abs(flat).max(axis=1) > 0).all() and gm.max() > 0):
        raise RuntimeError(f"simulated a degenerate volume for {sub} {ses or ''}")
