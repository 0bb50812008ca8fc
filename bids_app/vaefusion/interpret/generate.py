"""The generative side of a trained VAE: decode latent points, interpolate, sample.

Everything works on the model's grid (the input grid reduced by the model's ``downsample``)
and its affine: the input affine (``model.json`` ``input_affine``) scaled to the coarser
voxels, whose centres sit in the middle of the boxes they average. Bad input is a
:class:`VaefusionError` with the documented exit code: a missing model or file 66, a latent
table of the wrong width or an unreadable file 65, an unknown modality 64.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from vaefusion.errors import DataError, MissingInputError, UsageError
from vaefusion.inputs.reference import GRID_AFFINE, GRID_SHAPE

#: Latent columns of every vaefusion latents table: z000, z001, ...
LATENT_COLUMN = re.compile(r"^z\d{3,}$")


def model_grid_affine(input_affine: np.ndarray, input_shape: tuple[int, ...],
                      grid: tuple[int, ...]) -> np.ndarray:
    """The affine of ``grid`` when it is ``input_shape`` reduced by area averaging: voxel j
    of the model grid is centred on input voxel ``s * j + (s - 1) / 2``, ``s = n / m``."""
    scale = np.asarray(input_shape, dtype=np.float64) / np.asarray(grid, dtype=np.float64)
    to_input = np.eye(4)
    to_input[:3, :3] = np.diag(scale)
    to_input[:3, 3] = (scale - 1.0) / 2.0
    return np.asarray(input_affine, dtype=np.float64) @ to_input


@dataclass
class Generator:
    """A loaded model and what is needed to place its volumes."""

    model: Any  # vaefusion.model.network.VAE
    meta: dict[str, Any]
    model_dir: Path

    @classmethod
    def load(cls, model_dir: Path, device: str = "cpu") -> Generator:
        """Load ``model.safetensors`` + ``model.json`` (a missing model is exit 66)."""
        from vaefusion.model.checkpoint import load_model

        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise MissingInputError(f"MODEL_DIR {model_dir} does not exist; give a model folder "
                                    f"such as OUTPUT_DIR/group/models/vae_L128_seed0_rep0_fold0.")
        model, meta = load_model(model_dir, device)
        return cls(model=model, meta=meta, model_dir=model_dir)

    @property
    def latent_dim(self) -> int:
        return int(self.model.latent_dim)

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self.model.grid)  # type: ignore[return-value]

    @property
    def downsample(self) -> int:
        return int(self.meta.get("downsample", 1))

    @property
    def modalities(self) -> list[str]:
        return list(self.meta.get("modalities") or [])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The input grid: from ``model.json``, else the NeuroMark grid (older models)."""
        return tuple(int(n) for n in self.meta.get("input_shape") or GRID_SHAPE)  # type: ignore

    @property
    def affine_source(self) -> str:
        return ("model.json input_affine" if self.meta.get("input_affine") is not None
                else "the NeuroMark 3 mm grid (model.json records no input affine)")

    @property
    def affine(self) -> np.ndarray:
        """The model grid's affine."""
        base = self.meta.get("input_affine")
        base = GRID_AFFINE if base is None else np.asarray(base, dtype=np.float64)
        return model_grid_affine(base, self.input_shape, self.grid)

    # ----------------------------------------------------------------- the network
    @property
    def voxelwise(self) -> bool:
        """The model standardises each modality: it encodes and draws a volume only as a map
        of a named modality (its departure from that modality's training mean map)."""
        return getattr(self.model, "scaling", None) is not None

    def _drawn_as(self, modalities: list[str] | None, n: int) -> list[str] | None:
        """The checked modalities of ``n`` volumes for a voxelwise model (None: max-abs, which
        needs none); a missing, unknown or miscounted list is a usage error."""
        if not self.voxelwise:
            return None
        if modalities is None:
            raise UsageError(f"{self.model_dir} standardises each modality (scaling "
                             f"voxelwise), so it draws a point only as a map of a named "
                             f"modality; give --as-modality M.")
        known = self.model.scaling.names
        for m in modalities:
            if m not in known:
                raise UsageError(f"modality {m} is not one {self.model_dir} was trained on; "
                                 f"choose one of {', '.join(known[:8])}"
                                 f"{' ...' if len(known) > 8 else ''}.")
        if len(modalities) != n:
            raise UsageError(f"{n} points but {len(modalities)} modalities to draw them as.")
        return list(modalities)

    def encode(self, volumes: np.ndarray, modalities: list[str] | None = None) -> np.ndarray:
        """Posterior means ``(n, latent_dim)`` of volumes ``(n, X, Y, Z)`` on the input grid
        (reduced by the model's ``downsample`` first, as in training); ``modalities`` (one per
        volume) are needed by a voxelwise model."""
        import torch

        from vaefusion.model.network import downsample_volumes, downsampled_grid

        vols = np.asarray(volumes, dtype=np.float32)
        if tuple(downsampled_grid(vols.shape[1:], self.downsample)) != self.grid:
            raise DataError(
                f"volumes of shape {tuple(vols.shape[1:])} do not reduce to the model grid "
                f"{self.grid} (downsample {self.downsample}); give inputs preprocessed for "
                f"this model.")
        x = downsample_volumes(torch.from_numpy(vols)[:, None], self.downsample)
        device = next(self.model.parameters()).device
        names = self._drawn_as(modalities, len(vols))
        rows = None if names is None else self.model.modality_rows(names, device)
        with torch.inference_mode():
            mu, _ = self.model.encode(x.to(device), rows)
        return mu.float().cpu().numpy()

    def decode(self, z: np.ndarray, modalities: list[str] | None = None) -> np.ndarray:
        """Volumes ``(n, X, Y, Z)`` on the model grid from latent points ``(n, latent_dim)``;
        a voxelwise model draws point i as a map of ``modalities[i]``."""
        from vaefusion.training.inference import decode_latents

        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise DataError(f"latent points of shape {z.shape} do not fit the model's latent "
                            f"dim {self.latent_dim}.")
        return decode_latents(self.model, z, modalities=self._drawn_as(modalities, len(z)))

    def image(self, volumes: np.ndarray) -> nib.Nifti1Image:
        """A 4D NIfTI (one volume per point) on the model grid and affine."""
        data = np.moveaxis(np.asarray(volumes, dtype=np.float32), 0, -1)
        img = nib.Nifti1Image(data, self.affine)
        img.header.set_xyzt_units("mm")
        return img

    def provenance(self) -> dict[str, Any]:
        """What every generated sidecar records about the model."""
        return {"Model": str(self.model_dir), "LatentDim": self.latent_dim,
                "Grid": list(self.grid), "Downsample": self.downsample,
                "AffineSource": self.affine_source}


# --------------------------------------------------------------------------- latent paths
def interpolate(z0: np.ndarray, z1: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` points on the line from ``z0`` to ``z1`` (both included) and their weights."""
    if steps < 2:
        raise UsageError(f"--steps {steps} must be at least 2 (the two end points).")
    alpha = np.linspace(0.0, 1.0, steps)
    line = (1 - alpha)[:, None] * np.asarray(z0)[None] + alpha[:, None] * np.asarray(z1)[None]
    return line.astype(np.float32), alpha


def sample(n: int, latent_dim: int, seed: int, centre: np.ndarray | None = None,
           scale: float = 1.0) -> np.ndarray:
    """``n`` points from the prior N(0, I), or from N(centre, scale^2 I) around a centre."""
    if n < 1:
        raise UsageError(f"--n {n} must be at least 1.")
    if scale <= 0:
        raise UsageError(f"--scale {scale} must be positive.")
    eps = np.random.default_rng(seed).standard_normal((n, latent_dim))
    if centre is None:
        return eps.astype(np.float32)
    return (np.asarray(centre)[None] + scale * eps).astype(np.float32)


# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class LatentTable:
    """Latent points read from a TSV: one per row, with the row's other columns."""

    path: Path
    z: np.ndarray  # (n, latent_dim)
    rows: list[dict[str, str]]

    def modalities(self) -> list[str] | None:
        """Each point's modality, where the table has a modality column."""
        if not self.rows or not all(r.get("modality") for r in self.rows):
            return None
        return [r["modality"] for r in self.rows]

    def labels(self) -> list[str]:
        """A name per point: its modality (and group or participant) where the table has them,
        else its row number."""
        out = []
        for i, row in enumerate(self.rows):
            parts = [row[c] for c in ("participant_id", "group", "modality") if row.get(c)]
            out.append(":".join(parts) if parts else f"row{i + 1}")
        return out

    def select(self, modality: str, group: str | None = None) -> np.ndarray:
        """The one point of ``modality`` (and ``group``); an unknown one is a usage error."""
        if not self.rows or "modality" not in self.rows[0]:
            raise DataError(f"{self.path} has no modality column; use a latents table written "
                            f"by vaefusion (sub-<label>_desc-vae_latents.tsv, centres.tsv).")
        groups = sorted({r["group"] for r in self.rows if r.get("group")})
        if not groups:
            group = None  # a table without groups (a subject's latents) has one point each
        elif group is None:
            if len(groups) > 1:
                raise UsageError(f"{self.path} holds the groups {', '.join(groups)}; choose one "
                                 f"with --group.")
            group = groups[0]
        hits = [i for i, r in enumerate(self.rows) if r.get("modality") == modality
                and (group is None or r.get("group") == group)]
        if not hits:
            known = list(dict.fromkeys(r.get("modality", "") for r in self.rows))
            where = f" in group {group}" if group else ""
            raise UsageError(f"modality {modality}{where} is not in {self.path}; choose one of "
                             f"{', '.join(known[:8])}{' ...' if len(known) > 8 else ''}.")
        return self.z[hits[0]]


def read_latent_table(path: Path, latent_dim: int) -> LatentTable:
    """Points from a TSV whose columns ``z000``... hold the latent coordinates."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path} does not exist; give a TSV with columns z000, z001, ...")
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} is not a readable TSV ({exc}).") from None
    cols = [c for c in (rows[0].keys() if rows else []) if c and LATENT_COLUMN.match(c)]
    if not rows or not cols:
        raise DataError(f"{path} has no rows with latent columns z000, z001, ...; write one "
                        f"point per row with {latent_dim} columns z000..z{latent_dim - 1:03d}.")
    if len(cols) != latent_dim:
        raise DataError(f"{path} has {len(cols)} latent columns but the model's latent dim is "
                        f"{latent_dim}; use latents of this model (or a model of latent dim "
                        f"{len(cols)}).")
    try:
        z = np.array([[float(r[c]) for c in cols] for r in rows], dtype=np.float32)
    except (TypeError, ValueError):
        raise DataError(f"{path} has a non-numeric value in its latent columns; every z cell "
                        f"must be a number.") from None
    if not np.isfinite(z).all():
        raise DataError(f"{path} has NaN or infinite latent values; every z cell must be finite.")
    return LatentTable(path=path, z=z, rows=rows)


def read_stack(path: Path) -> tuple[np.ndarray, list[str]]:
    """A preprocessed stack (``sub-<label>_desc-preproc_stack.nii.gz``) as ``(n, X, Y, Z)``
    with its modality names from the JSON sidecar."""
    from vaefusion.disk.naming import sidecar

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path} does not exist; give a preprocessed stack "
                                f"(OUTPUT_DIR/sub-<label>/sub-<label>_desc-preproc_stack.nii.gz).")
    try:
        data = np.asarray(nib.load(path).get_fdata(dtype=np.float32))
        side = json.loads(sidecar(path).read_text())
        modalities = list(side["Modalities"])
    except FileNotFoundError:
        raise MissingInputError(f"{sidecar(path)} is missing; the stack's sidecar names its "
                                f"modalities.") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path} is not a readable vaefusion stack ({exc}).") from None
    vols = np.moveaxis(data, -1, 0) if data.ndim == 4 else data[None]
    if vols.shape[0] != len(modalities):
        raise DataError(f"{path} has {vols.shape[0]} volumes but its sidecar names "
                        f"{len(modalities)} modalities.")
    return vols, modalities


def point_of(gen: Generator, source: Path, modality: str, group: str | None = None
             ) -> np.ndarray:
    """The latent point of one modality in ``source``: a latents TSV (used as it is) or a
    preprocessed stack (encoded by the model)."""
    if str(source).endswith(".tsv"):
        return read_latent_table(source, gen.latent_dim).select(modality, group)
    vols, modalities = read_stack(source)
    if modality not in modalities:
        raise UsageError(f"modality {modality} is not in {source}; choose one of "
                         f"{', '.join(modalities[:8])}{' ...' if len(modalities) > 8 else ''}.")
    return gen.encode(vols[[modalities.index(modality)]], [modality])[0]
