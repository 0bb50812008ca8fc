"""Writing the simulated BIDS dataset: NIfTI files, raw and derivative metadata, the README,
the placeholder T1w and the ground truth.

Output layout (``OUT`` = the raw BIDS root; ``[ses-K]`` only with ``sessions > 0``):

- ``OUT/participants.tsv`` (participant_id, diagnosis SZ/HC, age, sex, site), ``.json``
- ``OUT/sub-XX[/ses-K]/anat/sub-XX[_ses-K]_T1w.nii.gz`` (the MNI152 T1 at 4 mm, a placeholder)
- ``OUT/derivatives/neuromark/sub-XX[/ses-K]/func/
  sub-XX[_ses-K]_task-rest_space-MNI152NLin6Asym_res-<R>_desc-neuromark_components.nii.gz``
  (4D float32, one volume per ICN in NeuroMark order; ``<R>`` = :func:`res_label`)
- ``OUT/derivatives/spm/sub-XX[/ses-K]/anat/
  sub-XX[_ses-K]_space-MNI152NLin6Asym_label-GM_desc-smwc1_probseg.nii.gz`` (3D, GM grid)
- native names: ``OUT/derivatives/gift/neuromark_sub001_component_ica_s1_.nii`` with
  ``gift_subjects.tsv`` (gift_index, participant_id, session_id, gift_session), and
  ``OUT/derivatives/cat12/sub-XX[/ses-K]/anat/smwc1sub-XX[_ses-K]_T1w.nii``
- ``OUT/code/simulation.json``: the ground truth (config, grids, effects, participants, files).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from vaefusion import __version__
from vaefusion.errors import OutputError
from vaefusion.inputs import reference
from vaefusion.simulate.config import SimulationConfig
from vaefusion.simulate.effects import AMPLITUDE_DEFINITION, PlantedEffects
from vaefusion.simulate.gm import gm_work_res, nilearn_file
from vaefusion.simulate.grids import Grid, res_label, resample

SPACE = "MNI152NLin6Asym"


BIDS_VERSION = "1.10.0"


CODE_URL = "https://github.com/vaefusion/vaefusion"


GIFT_PREFIX = "neuromark"


#: Voxel size of the placeholder raw T1w (only there so the raw dataset is valid).
T1W_RES_MM = 4.0


GROUND_TRUTH = Path("code") / "simulation.json"


_T1_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def t1w_image() -> nib.Nifti1Image:
    img = nib.load(nilearn_file(_T1_FILE))
    lo = img.affine[:3, 3]
    hi = lo + np.array(img.shape[:3]) - 1
    shape = tuple(int(math.floor(e / T1W_RES_MM)) + 1 for e in hi - lo)
    affine = np.diag([T1W_RES_MM] * 3 + [1.0])
    affine[:3, 3] = lo
    grid = Grid(shape, affine, T1W_RES_MM)
    data = resample(np.asarray(img.dataobj, np.float32), img.affine, grid, order=1)
    out = nib.Nifti1Image(np.clip(np.rint(data), 0, 255).astype(np.uint8), grid.affine)
    out.header.set_xyzt_units("mm")
    return out


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, description: str) -> None:
    img = nib.Nifti1Image(np.asarray(data, np.float32), affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=4)  # 4 = MNI_152: these maps live in template space
    img.set_sform(affine, code=4)
    img.header["descrip"] = description.encode()[:79]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def write_tsv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, columns, delimiter="\t", lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def simulator_generated_by() -> list[dict[str, str]]:
    return [{"Name": "vaefusion-simulate", "Version": __version__, "CodeURL": CODE_URL,
             "Description": "Simulated data; see code/simulation.json in the raw dataset."}]


def derivative_description(pipeline: str, name: str) -> dict[str, Any]:
    # GeneratedBy[0].Name is the pipeline name pybids uses as the scope; it is the folder name
    # (neuromark, spm, gift, cat12) so each derivative can be selected on its own.
    generated_by = [{"Name": pipeline, "Description": f"simulated {pipeline} outputs"},
                    *simulator_generated_by()]
    return {"Name": name, "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
            "License": "CC0", "GeneratedBy": generated_by,
            # The raw dataset is two levels up (derivatives/<name>/).
            "DatasetLinks": {"raw": "../../"}, "SourceDatasets": [{"URL": "bids:raw:"}]}


def prepare_output(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} exists and is not a directory.")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise OutputError(f"{out_dir} is not empty; choose a new folder or pass --overwrite.")
        if not (out_dir / GROUND_TRUTH).is_file():
            raise OutputError(f"{out_dir} is not empty and was not written by vaefusion-simulate "
                              f"(no {GROUND_TRUTH}); refusing to overwrite it.")
        shutil.rmtree(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out_dir}: {exc.strerror}.") from None


#: What the README says patients carry, per arm.
_ARM_SENTENCE = {
    "amplitude": "Patients (SZ) carry local planted effects",
    "null": "Patients (SZ) carry no planted effect (the null arm: SZ and HC maps are drawn alike)",
    "shift": "Patients (SZ) have chosen ICNs displaced by a few millimetres (the shift arm)",
    "fusion": "Patients (SZ) differ in one shared subject factor that changes many ICNs and "
              "the gray matter a little each (the fusion arm)",
}


def readme(config: SimulationConfig, n_sz: int) -> str:
    """The raw dataset's README (Markdown)."""
    c = config
    sessions = f", {c.sessions} session{'s' if c.sessions > 1 else ''} each" if c.sessions else ""
    where = []
    if c.naming in ("bids", "both"):
        where.append("`derivatives/neuromark` (ICN maps, BIDS names) and `derivatives/spm` "
                     "(gray matter, BIDS names)")
    if c.naming in ("native", "both"):
        where.append("`derivatives/gift` (ICN maps, GIFT names, with `gift_subjects.tsv`) and "
                     f"`derivatives/cat12` (gray matter, `{c.gm_native_prefix}` names)")
    return (
        "# vaefusion simulated dataset\n\n"
        f"Written by vaefusion-simulate {__version__} with seed {c.seed}: {c.n_subjects} "
        f"participants ({n_sz} SZ, {c.n_subjects - n_sz} HC){sessions}.\n\n"
        "Every value is simulated. The ICN maps (4D, one volume per ICN in NeuroMark fMRI 1.0 "
        "order) are made from the real NeuroMark template with SimTB-style per-subject "
        "variability; the gray-matter maps are smoothed modulated GM (smwc1) made from the "
        f"MNI152 GM template. They are in {' and in '.join(where)}. {_ARM_SENTENCE[c.arm]}; "
        "`code/simulation.json` is the ground truth. The T1w images are the "
        "MNI152 template at 4 mm, present only to make the raw dataset valid.\n"
    )


def ground_truth(c: SimulationConfig, igrid: Grid, ggrid: Grid, planted: PlantedEffects,
                 people: list[dict[str, Any]], sites: dict[str, Any],
                 files: list[dict[str, Any]]) -> dict[str, Any]:
    """The content of ``code/simulation.json``: what was simulated and what was planted."""
    table = reference.icns()
    # The effects and shifted ICNs are recorded resolved, below, rather than as options.
    cfg = {f.name: getattr(c, f.name) for f in fields(c)
           if f.name not in ("icn_effects", "gm_effects", "shift_icns")}
    icn_effects, gm_effects = planted.icn_effects, planted.gm_effects
    return {
        "generator": {"name": "vaefusion-simulate", "version": __version__},
        "seed": c.seed,
        "config": cfg,
        "space": SPACE,
        "icn_grid": igrid.to_dict(),
        "gm_grid": ggrid.to_dict(),
        "gm_simulated_at_res_mm": gm_work_res(c.gm_res, c.gm_fwhm_mm),
        "res_label": res_label(c.icn_res),
        "components": [table[i].name for i in range(c.n_components)],
        "effect_definition": AMPLITUDE_DEFINITION,
        "icn_effects": [
            {"index": e.index, "modality": table[e.index - 1].name,
             "domain": table[e.index - 1].domain, "label": table[e.index - 1].label,
             "center_mm": list(m), "center_voxel": list(igrid.voxel(m)),
             "network_peak_mm": list(table[e.index - 1].peak_mm),
             "radius_mm": e.radius_mm, "strength": e.strength * c.effect_size}
            for e, m in zip(icn_effects, planted.icn_centers, strict=True)
        ] if c.effect_size > 0 else [],
        "gm_effects": [
            {"center_mm": list(e.center_mm), "center_voxel": list(ggrid.voxel(e.center_mm)),
             "radius_mm": e.radius_mm, "strength": e.strength * c.effect_size}
            for e in gm_effects
        ] if c.effect_size > 0 else [],
        "arm": planted.truth(igrid),
        "sites": sites,
        "participants": people,
        "files": files,
    }


def write_raw_metadata(out: Path, c: SimulationConfig, people: list[dict[str, Any]]) -> None:
    write_json(out / "dataset_description.json", {
        "Name": "vaefusion simulated NeuroMark ICN and gray-matter dataset",
        "BIDSVersion": BIDS_VERSION, "DatasetType": "raw", "License": "CC0",
        "Authors": ["vaefusion-simulate"], "GeneratedBy": simulator_generated_by(),
    })
    n_sz = sum(p["diagnosis"] == "SZ" for p in people)
    (out / "README").write_text(readme(c, n_sz))
    write_tsv(out / "participants.tsv", people,
              ["participant_id", "diagnosis", "age", "sex", "site"])
    carries = "no planted effect" if c.arm == "null" else "planted effects"
    write_json(out / "participants.json", {
        "participant_id": {"Description": "Participant label"},
        "diagnosis": {"Description": "Simulated diagnostic group",
                      "Levels": {"SZ": f"schizophrenia (simulated patient, {carries})",
                                 "HC": "healthy control"}},
        "age": {"Description": "Age at scan", "Units": "year"},
        "sex": {"Description": "Sex", "Levels": {"M": "male", "F": "female"}},
        "site": {"Description": "Acquisition site (carries a simulated site effect)"},
    })


def write_derivative_metadata(deriv: Path, c: SimulationConfig, bids: bool, native: bool,
                              gift_rows: list[dict[str, Any]]) -> None:
    # Per-dataset .bidsignore files list what BIDS cannot name yet (a 4D stack of ICA
    # components, GIFT's and SPM's own file names). bids-validator reads them when it
    # validates a derivative dataset on its own (3.0.2's --recursive does not yet).
    datasets: list[tuple[str, str, str]] = []  # folder, Name, .bidsignore
    if bids:
        datasets += [
            ("neuromark", "NeuroMark ICN maps (simulated)", "*_components.nii.gz\n"),
            ("spm", "SPM12 smoothed modulated gray matter (simulated)", ""),
        ]
    if native:
        datasets += [
            ("gift", "GIFT NeuroMark back-reconstruction (simulated)",
             "*_component_ica_*\ngift_subjects.tsv\n"),
            ("cat12", "SPM/CAT12 gray matter with native names (simulated)",
             f"{c.gm_native_prefix}sub-*\n"),
        ]
        write_tsv(deriv / "gift" / "gift_subjects.tsv", gift_rows,
                  ["gift_index", "participant_id", "session_id", "gift_session"])
    for folder, name, ignore in datasets:
        write_json(deriv / folder / "dataset_description.json",
                   derivative_description(folder, name))
        if ignore:
            (deriv / folder / ".bidsignore").write_text(ignore)
