"""Per-subject reports, ``sub-<label>.html`` at the output root (as fMRIPrep names them).

For every session: a few modalities (the most important ones and GMV) as the preprocessed
input beside its reconstruction by the model that embedded the subject (the fold that tested
it, as the latents' sidecar records), with their spatial correlation, and the subject's
posterior means. Pages are self-contained (images embedded).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

import numpy as np

from vaefusion import __version__
from vaefusion.config import Config
from vaefusion.disk import naming
from vaefusion.disk.io import atomic_write_text
from vaefusion.evaluation.manifest import Manifest
from vaefusion.evaluation.methods import is_encoder
from vaefusion.evaluation.results import FoldResult
from vaefusion.inputs.cache import SubjectMeta, load_stack, read_meta
from vaefusion.inputs.reference import GMV_MODALITY
from vaefusion.interpret.importance import ModalityImportance, modality_name
from vaefusion.interpret.maps import decode_to_grid, spatial_correlation
from vaefusion.reports import figures, html
from vaefusion.reports.html import Section

LOG = logging.getLogger("vaefusion.reports")

#: How many of the most important modalities a subject report shows (GMV is added).
SHOWN = 3


def shown_modalities(ranking: list[ModalityImportance], modalities: list[str]) -> list[str]:
    """The ``SHOWN`` most important modalities this subject has, then GMV."""
    top = [r.modality for r in ranking if r.modality in modalities][:SHOWN]
    if not top:
        top = modalities[:SHOWN]
    if GMV_MODALITY in modalities and GMV_MODALITY not in top:
        top.append(GMV_MODALITY)
    return top


def _read_latents(path: Path) -> tuple[list[str], np.ndarray, dict]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    cols = [c for c in rows[0] if c.startswith("z")]
    mu = np.array([[float(r[c]) for c in cols] for r in rows], dtype=np.float32)
    side = json.loads(naming.sidecar(path).read_text())
    return [r["modality"] for r in rows], mu, side


def write_subject_reports(cfg: Config, manifest: Manifest, results: list[FoldResult],
                          ranking: list[ModalityImportance]) -> list[Path]:
    """One page per subject (all its sessions) whose latents were written; returns them."""
    from vaefusion.model.checkpoint import load_model

    assert cfg.output_dir is not None
    out = cfg.output_dir
    sessions: dict[str, list[tuple[SubjectMeta, Path]]] = {}
    for f in manifest.files:
        meta = read_meta(Path(f))
        sessions.setdefault(meta.subject, []).append((meta, Path(f)))
    decisions = _decisions(cfg, results)
    models: dict[str, object] = {}
    written = []
    start = time.monotonic()
    for subject, items in sessions.items():
        parts = []
        for meta, cache in items:
            latents = naming.subject_latents(out, meta.subject, meta.session)
            if not latents.is_file():
                continue
            mods, mu, side = _read_latents(latents)
            model_path = Path(side["Model"])
            model_path = model_path if model_path.is_absolute() else out / model_path
            key = str(model_path)
            if key not in models:
                models[key] = load_model(model_path, cfg.device)[0]
            parts.append(_session(meta, cache, mods, mu, side, models[key], ranking,
                                  decisions.get(meta.key)))
        if not parts:
            continue
        label = items[0][0].label or "n/a"
        page = html.page(f"sub-{subject}", f"vaefusion {__version__} · diagnosis {label} · "
                         f"group report: group/report.html", [
                             Section("summary", "Summary").add(
                                 html.para(f"Subject sub-{subject}, diagnosis {label}, "
                                           f"{len(parts)} session(s)."),
                                 html.link(naming.GROUP + "/" + naming.REPORT,
                                           "back to the group report")),
                             *parts])
        path = naming.subject_report(out, subject)
        atomic_write_text(path, page)
        written.append(path)
    LOG.info("Subject reports: %d in %.1f s", len(written), time.monotonic() - start)
    return written


def _decisions(cfg: Config, results: list[FoldResult]) -> dict[str, tuple[int, float]]:
    """Subject key -> (fold, SVM decision value) at the first latent dim, seed and repeat."""
    out = {}
    for r in results:
        if (is_encoder(r.method) and r.latent_dim == cfg.latent_dims[0]
                and r.seed == cfg.seeds[0] and getattr(r, "repeat", 0) == 0):
            for key, d in zip(r.test_subjects, r.decision, strict=False):
                out[key] = (r.fold, float(d))
    return out


def _session(meta: SubjectMeta, cache: Path, mods: list[str], mu: np.ndarray, side: dict,
             model, ranking: list[ModalityImportance], decision) -> Section:
    shown = shown_modalities(ranking, mods)
    idx = [mods.index(m) for m in shown]
    stack = np.asarray(load_stack(cache), dtype=np.float32)
    inputs = stack[idx]
    recons = decode_to_grid(model, mu[idx], tuple(stack.shape[1:]), shown)  # type: ignore[arg-type]
    corr = [spatial_correlation(x, xr, x != 0) for x, xr in zip(inputs, recons, strict=True)]
    title = meta.key.replace("_", " ")
    where = (f"out of fold: the model of fold {side.get('Fold')} never saw this subject"
             if side.get("OutOfFold") else f"fold {side.get('Fold')}'s model (trained on it)")
    sec = Section(meta.key, title).add(
        html.para(f"Latents and reconstructions from {side.get('Model')} ({where})."))
    if decision is not None:
        sec.add(html.para(f"SVM decision value on its test fold {decision[0]}: "
                          f"{decision[1]:+.3f} (positive: patient side)."))
    names = [f"{m} {modality_name(m)}" for m in shown]
    sec.add(html.image(figures.subject_figure(inputs, recons, names, corr), "inputs and "
                       "reconstructions", "Preprocessed input (left) and its reconstruction "
                       "(right), slices through the input's peak; r: spatial correlation "
                       "inside the input's nonzero voxels."),
            html.image(figures.latents_figure(mu, mods), "posterior means",
                       "Posterior means of every modality (the rows of "
                       f"{naming.subject_latents(Path('.'), meta.subject, meta.session)})."))
    return sec
