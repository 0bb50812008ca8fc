"""Per-subject derivatives: the preprocessed stack (NIfTI + sidecar), its gray-matter volume
as a BIDS probseg (which the validator checks), and the latents TSV.

Latents have one schema wherever they come from (a cross-validation fold's model or
``--model``): a row per modality with ``modality``, ``domain``, ``z000``...; the JSON sidecar
names the model that embedded the subject (:class:`LatentsSource`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from vaefusion.disk import naming
from vaefusion.disk.io import write_json, write_nifti_atomic, write_tsv
from vaefusion.inputs.reference import modality_domain


def stack_image(stack: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A (n, X, Y, Z) stack in [-1, 1] as a 4D int16 NIfTI with a scale factor.

    int16 with a scale factor keeps 5 significant digits of a [-1, 1] volume at half
    the size of float32, and is plain NIfTI-1 (float16 is not).
    """
    return volume_image(np.moveaxis(np.asarray(stack, dtype=np.float32), 0, -1), affine)


def volume_image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A 3D (or last-axis 4D) image in [-1, 1] as int16 with a scale factor (see
    :func:`stack_image`)."""
    # nibabel picks the scale factor from the data on save, so values round-trip within
    # one int16 step and never leave [-1, 1]
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm")
    return img


def write_subject_stack(
    out: Path, subject: str, session: str | None, stack: np.ndarray, affine: np.ndarray,
    modalities: list[str], sources: list[str], links: dict[str, str] | None = None,
) -> Path:
    """Write the preprocessed stack of one subject and its JSON sidecar; ``Sources`` are BIDS
    URIs through ``links`` (the output's ``DatasetLinks``, name -> folder)."""
    nii = naming.preproc_stack(out, subject, session)
    write_nifti_atomic(nii, stack_image(stack, affine))
    write_json(naming.sidecar(nii), {
        "Description": "Preprocessed vaefusion input: GMV resampled to the ICN grid, each "
                       "volume scaled by its maximum absolute value to [-1, 1], ICNs first.",
        "Modalities": modalities,
        "Domains": [modality_domain(m) for m in modalities],
        "Sources": [naming.bids_uri(s, links or {}) for s in sources],
    })
    return nii


def _voxel_text(affine: np.ndarray) -> str:
    """``3 mm isotropic`` or ``3 x 3 x 3.5 mm``: the voxel size of an affine."""
    sizes = [f"{v:g}" for v in np.round(np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)), 3)]
    return f"{sizes[0]} mm isotropic" if len(set(sizes)) == 1 else " x ".join(sizes) + " mm"


def write_preproc_gm(
    out: Path, subject: str, session: str | None, volume: np.ndarray, affine: np.ndarray,
    icn_source: str, gmv_source: str, links: dict[str, str] | None = None,
) -> Path:
    """The GMV volume of the preprocessed stack as a BIDS-Derivatives probseg in
    ``sub-<label>/anat/``, named with the ICN input's ``space``/``res`` (its grid), and its
    sidecar (``Resolution``, ``Sources`` as BIDS URIs, ``SpatialReference``, the scaling)."""
    res = naming.input_entities(icn_source).get("res")
    nii = naming.preproc_gm(out, subject, session, icn_source)
    write_nifti_atomic(nii, volume_image(volume, affine))
    grid = _voxel_text(affine)
    resolution = f"{grid}: the grid of the NeuroMark ICN input (SpatialReference)"
    links = links or {}
    write_json(naming.sidecar(nii), {
        "Description": "Gray-matter volume as vaefusion feeds it to the VAE (the last volume of "
                       "the desc-preproc stack): the GMV input resampled to the ICN grid "
                       "(Gaussian anti-aliasing, then trilinear interpolation) and divided by "
                       "its maximum absolute value, so a non-negative input lies in [0, 1]. "
                       "Relative, not a probability: the peak voxel is 1.",
        "Resolution": {res: resolution} if res else resolution,
        "SpatialReference": naming.bids_uri(icn_source, links),
        "Sources": [naming.bids_uri(gmv_source, links), naming.bids_uri(icn_source, links)],
    })
    return nii


# --------------------------------------------------------------------------- latents
@dataclass(frozen=True)
class LatentsSource:
    """The model that embedded a subject: what the latents' JSON sidecar records."""

    latent_dim: int
    model: str  # group/models/<unit> (relative to OUTPUT_DIR) or the --model path
    seed: int | None = None
    fold: int | None = None
    # True: the subject was in the test set of the model's fold (the model never saw it);
    # None: unknown (a --model trained elsewhere)
    out_of_fold: bool | None = None

    def sidecar(self) -> dict[str, Any]:
        return {"LatentDim": self.latent_dim, "Seed": self.seed, "Fold": self.fold,
                "Model": self.model, "OutOfFold": self.out_of_fold}


@dataclass(frozen=True)
class SubjectLatents:
    """One subject's posterior means, ``mu`` (n_modalities, latent_dim), and their source."""

    subject: str
    session: str | None
    modalities: list[str]
    mu: np.ndarray
    source: LatentsSource

    def __post_init__(self) -> None:
        if self.mu.shape != (len(self.modalities), self.source.latent_dim):
            raise ValueError(f"latents of shape {self.mu.shape} for {len(self.modalities)} "
                             f"modalities at latent dim {self.source.latent_dim}")


def latent_columns(latent_dim: int) -> list[str]:
    """``z000``, ``z001``, ...: one column per latent dimension."""
    return [f"z{j:03d}" for j in range(latent_dim)]


#: the columns of every latents table before ``z000``...: per subject, and (after the
#: participant, session and fold columns) in the group tables
LATENT_ROW_COLUMNS = ["modality", "domain"]


def latent_rows(item: SubjectLatents) -> list[dict[str, Any]]:
    """A row per modality: modality, its NeuroMark domain, and the latent means."""
    names = latent_columns(item.source.latent_dim)
    return [{"modality": m, "domain": modality_domain(m),
             **{c: float(v) for c, v in zip(names, row, strict=True)}}
            for m, row in zip(item.modalities, item.mu, strict=True)]


def write_subject_latents(out: Path, item: SubjectLatents) -> Path:
    """``sub-<label>[_ses-<label>]_desc-vae_latents.tsv`` and its JSON sidecar."""
    path = naming.subject_latents(out, item.subject, item.session)
    write_tsv(path, latent_rows(item),
              [*LATENT_ROW_COLUMNS, *latent_columns(item.source.latent_dim)])
    write_json(naming.sidecar(path), item.source.sidecar())
    return path
