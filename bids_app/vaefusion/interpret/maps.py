"""Group maps (paper Fig. 3) on the input grid and affine.

* decoded centres: the mean posterior mean of the controls and of the patients, per modality,
  decoded by the explained model (at a reduced ``--downsample`` decoded on the model grid and
  resized trilinearly to the input grid);
* the decoded difference, controls minus patients (``decodedHCminusSZ`` with the default
  labels), and the voxelwise mean difference of the preprocessed inputs (``inputHCminusSZ``);
* their spatial correlation per modality inside the brain mask (voxels nonzero in any input);
* on simulated data (a ``code/expected_difference.nii.gz`` written by ``vaefusion-simulate``),
  the decoded difference's correlation with the known expected difference after
  preprocessing, the truth the input difference only estimates;
* the top-5 map: the decoded differences of the five most important modalities, each kept
  where its absolute value reaches the 99th percentile of absolute values inside the mask,
  sign kept (a decrease in patients is as much a finding as an increase), then summed.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from vaefusion.disk import naming
from vaefusion.disk.io import write_json, write_nifti_atomic, write_tsv
from vaefusion.evaluation.manifest import Manifest
from vaefusion.inputs.cache import load_stack, read_meta
from vaefusion.inputs.reference import modality_domain
from vaefusion.interpret.explain import ExplainedModel

LOG = logging.getLogger("vaefusion.interpret")

#: The top-k modalities summed into the combined map, and the percentile each is cut at.
TOP_K = 5
PERCENTILE = 99.0
MASK_DESC = "brain"


@dataclass(frozen=True)
class GroupMaps:
    """Every group map as arrays ``(n_modalities, X, Y, Z)`` on the input grid."""

    modalities: list[str]
    affine: np.ndarray
    negative: str  # the control label (HC)
    positive: str  # the patient label (SZ)
    n_negative: int
    n_positive: int
    centre_negative: np.ndarray  # (n_modalities, latent_dim)
    centre_positive: np.ndarray
    decoded_negative: np.ndarray
    decoded_positive: np.ndarray
    input_difference: np.ndarray  # mean(controls) - mean(patients)
    mask: np.ndarray  # (X, Y, Z) bool
    top_modalities: list[str] = field(default_factory=list)
    top_map: np.ndarray | None = None  # (X, Y, Z)
    expected_difference: np.ndarray | None = None  # simulated data: the known truth

    @property
    def decoded_difference(self) -> np.ndarray:
        return self.decoded_negative - self.decoded_positive

    @property
    def correlations(self) -> list[float]:
        """Per modality: the spatial correlation of decoded and input differences."""
        diff = self.decoded_difference
        return [spatial_correlation(diff[i], self.input_difference[i], self.mask)
                for i in range(len(self.modalities))]

    @property
    def expected_correlations(self) -> list[float]:
        """Per modality: the spatial correlation of the decoded difference with the simulated
        expected difference (NaN where there is none, or no planted difference)."""
        return self._with_expected(self.decoded_difference)

    @property
    def input_expected_correlations(self) -> list[float]:
        """Per modality: how well the *input* difference of these subjects follows the
        expected difference: with noise and few subjects even the data fall short of the
        truth, and a decoded map is read against this, not against 1."""
        return self._with_expected(self.input_difference)

    def _with_expected(self, diff: np.ndarray) -> list[float]:
        if self.expected_difference is None:
            return [float("nan")] * len(self.modalities)
        return [spatial_correlation(diff[i], self.expected_difference[i], self.mask)
                for i in range(len(self.modalities))]


# --------------------------------------------------------------------------- pure maths
def spatial_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of two volumes over the ``mask`` voxels (NaN if one is flat)."""
    x = np.asarray(a, dtype=np.float64)[mask]
    y = np.asarray(b, dtype=np.float64)[mask]
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def threshold_sum(volumes: np.ndarray, mask: np.ndarray,
                  percentile: float = PERCENTILE) -> np.ndarray:
    """Each volume kept where its absolute value reaches its ``percentile`` of absolute values
    inside ``mask``, with its sign (0 elsewhere and outside the mask), then summed:
    ``(k, X, Y, Z)`` -> ``(X, Y, Z)``."""
    out = np.zeros(volumes.shape[1:], dtype=np.float64)
    for vol in np.asarray(volumes, dtype=np.float64):
        cut = np.percentile(np.abs(vol[mask]), percentile)
        out += np.where(mask & (np.abs(vol) >= cut), vol, 0.0)
    return out.astype(np.float32)


def expected_difference(bids_dir: Path | None, modalities: list[str],
                        grid: tuple[int, ...]) -> np.ndarray | None:
    """The simulator's expected HC - SZ difference for ``modalities`` (``vaefusion-simulate``
    writes it to ``code/``), or None for real data or a grid it was not made for."""
    if bids_dir is None:
        return None
    truth = Path(bids_dir) / "code" / "simulation.json"
    if not truth.is_file():
        return None
    try:
        import json

        entry = json.loads(truth.read_text())["expected_difference"]
        data = np.asarray(nib.load(Path(bids_dir) / entry["file"]).dataobj, dtype=np.float32)
        names = list(entry["modalities"])
    except (KeyError, OSError, ValueError):
        return None
    if data.shape[:3] != tuple(grid) or not all(m in names for m in modalities):
        return None
    return np.stack([data[..., names.index(m)] for m in modalities])


def group_centres(latents: dict[str, np.ndarray], keys: list[str], labels: list[int]
                  ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Mean posterior means of the controls (label 0) and patients (label 1), per modality."""
    neg = [latents[k] for k, y in zip(keys, labels, strict=True) if y == 0]
    pos = [latents[k] for k, y in zip(keys, labels, strict=True) if y == 1]
    return np.mean(neg, axis=0), np.mean(pos, axis=0), len(neg), len(pos)


def input_difference(files: list[str], labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Voxelwise mean of the controls' inputs minus the patients', ``(n_mod, X, Y, Z)``, and
    the brain mask (voxels nonzero in any input volume of these subjects)."""
    sums: dict[int, np.ndarray] = {}
    counts = {0: 0, 1: 0}
    mask: np.ndarray | None = None
    for path, y in zip(files, labels, strict=True):
        if y not in counts:
            continue
        stack = np.asarray(load_stack(Path(path)), dtype=np.float64)
        sums[y] = stack if y not in sums else sums[y] + stack
        counts[y] += 1
        nonzero = (stack != 0).any(axis=0)
        mask = nonzero if mask is None else mask | nonzero
    assert mask is not None and counts[0] and counts[1], "both groups need subjects"
    diff = sums[0] / counts[0] - sums[1] / counts[1]
    return diff.astype(np.float32), mask


def decode_to_grid(model, z: np.ndarray, grid: tuple[int, int, int],
                   modalities: list[str]) -> np.ndarray:
    """Decode latent points ``(m, latent_dim)`` of these modalities (one per point) and resize
    to ``grid``: ``(m, X, Y, Z)``."""
    import torch

    from vaefusion.model.network import resize_volumes
    from vaefusion.training.inference import decode_latents

    vols = decode_latents(model, z, modalities=modalities)
    full = resize_volumes(torch.from_numpy(vols)[:, None], grid)[:, 0]
    return full.numpy().astype(np.float32)


# --------------------------------------------------------------------------- compute
def compute_group_maps(model, explained: ExplainedModel, manifest: Manifest,
                       top_modalities: list[str], negative: str, positive: str,
                       bids_dir: Path | None = None) -> GroupMaps:
    """Every map of one explained model, from the classified subjects of ``manifest``
    (and, on simulated data in ``bids_dir``, the expected difference)."""
    idx = manifest.classified
    keys = [manifest.keys[i] for i in idx]
    labels = [manifest.labels[i] for i in idx]
    files = [manifest.files[i] for i in idx]
    c_neg, c_pos, n_neg, n_pos = group_centres(explained.latents, keys, labels)
    meta = read_meta(Path(files[0]))
    grid = tuple(int(n) for n in meta.shape)
    n_mod = len(manifest.modalities)
    decoded = decode_to_grid(model, np.concatenate([c_neg, c_pos]), grid,  # type: ignore[arg-type]
                             list(manifest.modalities) * 2)
    diff_in, mask = input_difference(files, labels)
    maps = GroupMaps(modalities=list(manifest.modalities), affine=np.asarray(meta.affine),
                     negative=negative, positive=positive, n_negative=n_neg, n_positive=n_pos,
                     centre_negative=c_neg, centre_positive=c_pos,
                     decoded_negative=decoded[:n_mod], decoded_positive=decoded[n_mod:],
                     input_difference=diff_in, mask=mask,
                     expected_difference=expected_difference(bids_dir, list(manifest.modalities),
                                                             grid))
    top = [m for m in top_modalities if m in maps.modalities][:TOP_K]
    rows = [maps.modalities.index(m) for m in top]
    top_map = threshold_sum(maps.decoded_difference[rows], mask) if rows else None
    return dataclasses.replace(maps, top_modalities=top, top_map=top_map)


# --------------------------------------------------------------------------- write
@dataclass(frozen=True)
class MapFiles:
    """The written maps (paths), in the order the report lists them."""

    decoded_negative: Path
    decoded_positive: Path
    decoded_difference: Path
    input_difference: Path
    top: Path | None
    mask: Path
    centres: Path

    def all(self) -> list[Path]:
        return [p for p in (self.decoded_negative, self.decoded_positive,
                            self.decoded_difference, self.input_difference, self.top,
                            self.mask) if p]


def voxel_mm(affine: np.ndarray) -> float:
    """The (mean) voxel size of an affine, in mm."""
    return float(np.mean(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)))


def _image(volumes: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    data = np.asarray(volumes, dtype=np.float32)
    img = nib.Nifti1Image(np.moveaxis(data, 0, -1) if data.ndim == 4 else data, affine)
    img.header.set_xyzt_units("mm")
    return img


def map_descriptions(negative: str, positive: str) -> dict[str, str]:
    """``desc-`` label -> what it means, for ``descriptions.tsv``."""
    return {
        naming.map_desc("decoded", negative): f"Decoded latent group centre of the {negative} "
        f"subjects (mean posterior mean per modality, decoded by the explained VAE).",
        naming.map_desc("decoded", positive): f"Decoded latent group centre of the {positive} "
        f"subjects (mean posterior mean per modality, decoded by the explained VAE).",
        naming.map_desc("decoded", negative, positive): f"Decoded {negative} centre minus "
        f"decoded {positive} centre, per modality.",
        naming.map_desc("input", negative, positive): f"Voxelwise mean of the preprocessed "
        f"inputs of the {negative} subjects minus that of the {positive} subjects.",
        naming.map_desc(f"top{TOP_K}"): f"Sum of the decoded differences of the {TOP_K} most "
        f"important modalities, each thresholded at its {PERCENTILE:g}th percentile.",
        naming.map_desc(MASK_DESC): "Brain mask of the group maps (voxels nonzero in any input "
        "volume of the classified subjects): where spatial correlations and percentiles are "
        "computed.",
    }


def write_group_maps(group: Path, maps: GroupMaps, explained: ExplainedModel,
                     decoded_grid: tuple[int, ...]) -> MapFiles:
    """Every map as NIfTI with a JSON sidecar naming its volumes' modalities in order."""
    res = naming.res_label(voxel_mm(maps.affine))
    neg, pos = maps.negative, maps.positive
    r = explained.result
    common = {
        "Space": naming.MAP_SPACE,
        "Resolution": f"{voxel_mm(maps.affine):g} mm voxels: the grid of the inputs",
        "Model": f"{naming.GROUP}/{naming.MODELS}/{explained.unit}",
        "LatentDim": r.latent_dim, "Seed": r.seed, "Repeat": getattr(r, "repeat", 0),
        "Fold": r.fold,
        "Groups": {neg: maps.n_negative, pos: maps.n_positive},
    }
    decoded_note = ("decoded on the model grid " + "x".join(map(str, decoded_grid))
                    + (", resized trilinearly to the input grid"
                       if tuple(decoded_grid) != maps.mask.shape else ""))
    domains = [modality_domain(m) for m in maps.modalities]

    def put(path: Path, volumes: np.ndarray, sidecar: dict) -> Path:
        write_nifti_atomic(path, _image(volumes, maps.affine))
        write_json(naming.sidecar(path), {**sidecar, **common})
        return path

    files = {}
    for key, label, vols in (("decoded_negative", neg, maps.decoded_negative),
                             ("decoded_positive", pos, maps.decoded_positive)):
        files[key] = put(naming.group_map(group, naming.map_desc("decoded", label), res), vols,
                         {"Description": f"Decoded latent centre of the {label} subjects, one "
                          f"volume per modality ({decoded_note}).",
                          "Modalities": maps.modalities, "Domains": domains})
    corr = maps.correlations
    files["decoded_difference"] = put(
        naming.group_map(group, naming.map_desc("decoded", neg, pos), res, "effect"),
        maps.decoded_difference,
        {"Description": f"Decoded {neg} centre minus decoded {pos} centre, one volume per "
         f"modality ({decoded_note}).", "Modalities": maps.modalities, "Domains": domains,
         "SpatialCorrelationWithInput": {m: None if np.isnan(c) else round(c, 6)
                                         for m, c in zip(maps.modalities, corr, strict=True)},
         "SpatialCorrelationMask": "voxels nonzero in any input volume of the classified "
                                   "subjects",
         **({"SpatialCorrelationWithExpected": {
             m: None if np.isnan(c) else round(c, 6)
             for m, c in zip(maps.modalities, maps.expected_correlations, strict=True)},
             "Expected": "the simulator's expected difference after preprocessing "
                         "(code/expected_difference.nii.gz of the input dataset)"}
            if maps.expected_difference is not None else {})})
    files["input_difference"] = put(
        naming.group_map(group, naming.map_desc("input", neg, pos), res, "effect"),
        maps.input_difference,
        {"Description": f"Voxelwise mean of the preprocessed inputs of the {neg} subjects minus "
         f"that of the {pos} subjects, one volume per modality.",
         "Modalities": maps.modalities, "Domains": domains,
         **({"SpatialCorrelationWithExpected": {
             m: None if np.isnan(c) else round(c, 6)
             for m, c in zip(maps.modalities, maps.input_expected_correlations, strict=True)}}
            if maps.expected_difference is not None else {})})
    top = None
    if maps.top_map is not None:
        top = put(naming.group_map(group, naming.map_desc(f"top{TOP_K}"), res, "effect"),
                  maps.top_map,
                  {"Description": f"Sum of the decoded {neg}-minus-{pos} differences of the "
                   f"{len(maps.top_modalities)} most important modalities, each kept where its "
                   f"absolute value reaches its {PERCENTILE:g}th percentile of absolute values "
                   f"inside the brain mask, sign kept (0 elsewhere).",
                   "Modalities": maps.top_modalities,
                   "Percentile": PERCENTILE})
    mask = naming.group_map(group, naming.map_desc(MASK_DESC), res, suffix="mask")
    write_nifti_atomic(mask, nib.Nifti1Image(maps.mask.astype(np.uint8), maps.affine))
    write_json(naming.sidecar(mask), {
        "Description": "Brain mask of the group maps: voxels nonzero in any input volume of the "
                       "classified subjects; spatial correlations and percentiles use it.",
        **common})
    centres = write_centres(group, maps, explained)
    return MapFiles(top=top, mask=mask, centres=centres, **files)


def write_centres(group: Path, maps: GroupMaps, explained: ExplainedModel) -> Path:
    """``group/centres.tsv``: the latent group centres (group, modality, domain, z000...),
    the points ``vaefusion-generate sample --around`` starts from."""
    from vaefusion.derivatives.subject import latent_columns

    cols = latent_columns(maps.centre_negative.shape[1])
    rows = [{"group": label, "modality": m, "domain": modality_domain(m), "n_subjects": n,
             **{c: float(v) for c, v in zip(cols, centre[i], strict=True)}}
            for label, centre, n in ((maps.negative, maps.centre_negative, maps.n_negative),
                                     (maps.positive, maps.centre_positive, maps.n_positive))
            for i, m in enumerate(maps.modalities)]
    path = write_tsv(Path(group) / naming.CENTRES, rows,
                     ["group", "modality", "domain", "n_subjects", *cols])
    write_json(naming.sidecar(path), {
        "Description": "Latent group centres: the mean posterior mean per group and modality "
                       "under the explained model.",
        "Model": f"{naming.GROUP}/{naming.MODELS}/{explained.unit}",
        "LatentDim": explained.latent_dim})
    return path
