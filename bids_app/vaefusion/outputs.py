"""The BIDS-Derivatives output dataset: description, .bidsignore, logs and per-subject files.

Every file is written atomically (a temporary file in the same folder, then a rename), so a
reader never sees a half-written output, and an interrupted run leaves no broken file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from vaefusion import __version__
from vaefusion.cache import atomic_write_text
from vaefusion.config import Config
from vaefusion.errors import OutputError
from vaefusion.reference import citation, modality_domain

CODE_URL = "https://github.com/vaefusion/vaefusion"
CONTAINER_IMAGE = "vaefusion/vaefusion"

#: What BIDS cannot name yet; the validator skips these.
BIDSIGNORE = """\
# vaefusion outputs that BIDS has no name for yet
logs/
group/
*_stack.nii.gz
*_stack.json
*_latents.tsv
*_latents.json
"""


def dataset_description(cfg: Config) -> dict:
    """``dataset_description.json`` of the output (BIDS-Derivatives)."""
    container = {"Type": "docker", "Tag": f"{CONTAINER_IMAGE}:{__version__}"}
    if os.environ.get("SINGULARITY_NAME") or os.environ.get("APPTAINER_NAME"):
        container = {"Type": "singularity", "Tag": f"{CONTAINER_IMAGE}:{__version__}"}
    desc = {
        "Name": "vaefusion: multimodal VAE fusion of NeuroMark ICN maps and gray matter",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "vaefusion",
            "Version": __version__,
            "CodeURL": CODE_URL,
            "Description": "Shared 3D VAE over ICN and GMV volumes; cross-validated SVM.",
            "Container": container,
        }],
        "HowToAcknowledge": "Please cite the references in logs/CITATION.md.",
    }
    if cfg.bids_dir is not None:
        source = {"URL": Path(cfg.bids_dir).resolve().as_uri()}
        src_desc = Path(cfg.bids_dir) / "dataset_description.json"
        try:
            doi = json.loads(src_desc.read_text()).get("DatasetDOI")
        except (OSError, ValueError):
            doi = None
        if doi:
            source["DOI"] = doi
        desc["SourceDatasets"] = [source]
    return desc


def init_output_dir(cfg: Config) -> Path:
    """Create OUTPUT_DIR with its description, .bidsignore, logs/CITATION.md and config."""
    out = cfg.output_dir
    assert out is not None
    try:
        (out / "logs").mkdir(parents=True, exist_ok=True)
        probe = out / "logs" / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"Cannot write to the output folder {out} ({exc.strerror}); give a writable path."
        ) from None
    atomic_write_text(out / "dataset_description.json",
                      json.dumps(dataset_description(cfg), indent=2) + "\n")
    atomic_write_text(out / ".bidsignore", BIDSIGNORE)
    atomic_write_text(out / "logs" / "CITATION.md", "# Citing vaefusion\n\n" + citation())
    atomic_write_text(out / "logs" / f"config-{cfg.analysis_level}.toml", cfg.to_toml())
    return out


def subject_dir(out: Path, subject: str, session: str | None) -> Path:
    path = out / f"sub-{subject}"
    return path / f"ses-{session}" if session else path


def entity_prefix(subject: str, session: str | None) -> str:
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


def write_nifti_atomic(path: Path, img: nib.Nifti1Image) -> None:
    """Save a NIfTI through a temporary name and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part{suffix}")
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def stack_image(stack: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A (n, X, Y, Z) stack in [-1, 1] as a 4D int16 NIfTI with a scale factor.

    int16 with ``scl_slope = 1/32767`` keeps 5 significant digits of a [-1, 1] volume at half
    the size of float32, and is plain NIfTI-1 (float16 is not).
    """
    data = np.moveaxis(stack, 0, -1)
    img = nib.Nifti1Image(np.round(data * 32767).astype(np.int16), affine)
    img.header.set_slope_inter(1.0 / 32767, 0.0)
    img.header.set_xyzt_units("mm")
    return img


def write_subject_stack(
    out: Path, subject: str, session: str | None, stack: np.ndarray, affine: np.ndarray,
    modalities: list[str], sources: list[str],
) -> Path:
    """Write the preprocessed stack of one subject and its JSON sidecar."""
    base = subject_dir(out, subject, session) / f"{entity_prefix(subject, session)}_desc-preproc_stack"
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
    """``sub-<label>_desc-vae_latents.tsv``: one row per modality, columns modality, domain, z000..."""
    prefix = entity_prefix(subject, session)
    path = subject_dir(out, subject, session) / f"{prefix}_desc-{desc}_latents.tsv"
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(["modality", "domain", *[f"z{j:03d}" for j in range(mu.shape[1])]])
    for name, row in zip(modalities, mu, strict=True):
        writer.writerow([name, modality_domain(name), *[f"{v:.6g}" for v in row]])
    atomic_write_text(path, buf.getvalue())
    if meta:
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return path
