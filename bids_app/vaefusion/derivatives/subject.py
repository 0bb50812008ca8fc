"""Per-subject derivatives: the preprocessed stack (NIfTI + sidecar) and the latents TSV."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from vaefusion.derivatives.io import atomic_write_text, tsv_text, write_nifti_atomic
from vaefusion.derivatives.naming import entity_prefix, subject_dir
from vaefusion.inputs.reference import modality_domain


def stack_image(stack: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A (n, X, Y, Z) stack in [-1, 1] as a 4D int16 NIfTI with a scale factor.

    int16 with a scale factor keeps 5 significant digits of a [-1, 1] volume at half
    the size of float32, and is plain NIfTI-1 (float16 is not).
    """
    # nibabel picks the scale factor from the data on save, so values round-trip within
    # one int16 step and never leave [-1, 1]
    img = nib.Nifti1Image(np.moveaxis(np.asarray(stack, dtype=np.float32), 0, -1), affine)
    img.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm")
    return img


def write_subject_stack(
    out: Path, subject: str, session: str | None, stack: np.ndarray, affine: np.ndarray,
    modalities: list[str], sources: list[str],
) -> Path:
    """Write the preprocessed stack of one subject and its JSON sidecar."""
    prefix = entity_prefix(subject, session)
    base = subject_dir(out, subject, session) / f"{prefix}_desc-preproc_stack"
    nii = base.with_name(base.name + ".nii.gz")
    write_nifti_atomic(nii, stack_image(stack, affine))
    sidecar = {
        "Description": "Preprocessed vaefusion input: GMV resampled to the ICN grid, each "
                       "volume scaled by its maximum absolute value to [-1, 1], ICNs first.",
        "Modalities": modalities,
        "Domains": [modality_domain(m) for m in modalities],
        "Sources": [Path(s).name for s in sources],
    }
    atomic_write_text(base.with_name(base.name + ".json"), json.dumps(sidecar, indent=2) + "\n")
    return nii


def write_latents_tsv(
    out: Path, subject: str, session: str | None, modalities: list[str], mu: np.ndarray,
    desc: str = "vae", meta: dict | None = None,
) -> Path:
    """``sub-<label>_desc-vae_latents.tsv``: a row per modality; modality, domain, z000..."""
    prefix = entity_prefix(subject, session)
    path = subject_dir(out, subject, session) / f"{prefix}_desc-{desc}_latents.tsv"
    columns = ["modality", "domain", *[f"z{j:03d}" for j in range(mu.shape[1])]]
    rows = [{"modality": name, "domain": modality_domain(name),
             **{f"z{j:03d}": float(v) for j, v in enumerate(row)}}
            for name, row in zip(modalities, mu, strict=True)]
    atomic_write_text(path, tsv_text(rows, columns))
    if meta:
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return path

