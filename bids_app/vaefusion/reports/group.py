"""The group level's interpretation: figures, maps, t-SNE and the HTML reports.

Called after ``write_group_outputs``; reads the typed results, the manifest and the saved
models, writes under ``group/`` (``figures/``, ``maps/``, ``tsne.tsv``, ``centres.tsv``,
``report.html``), the per-subject ``sub-<label>.html`` at the output root, and adds the maps'
labels to ``descriptions.tsv``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from vaefusion.config import Config
from vaefusion.disk import naming
from vaefusion.evaluation.group_summary import GroupSummary
from vaefusion.evaluation.manifest import Manifest
from vaefusion.evaluation.methods import is_encoder
from vaefusion.evaluation.results import FoldResult
from vaefusion.interpret.explain import select_explained
from vaefusion.interpret.importance import TOP_FIGURE, importance_folds, ranked
from vaefusion.interpret.interpretation import GroupInterpretation
from vaefusion.interpret.latent_space import latent_tsne, write_tsne
from vaefusion.interpret.maps import compute_group_maps, write_group_maps
from vaefusion.reports import figures

LOG = logging.getLogger("vaefusion.reports")


def write_interpretation(cfg: Config, manifest: Manifest, results: list[FoldResult],
                         summary: GroupSummary) -> GroupInterpretation:
    """Every figure, map and report of a trained group run."""
    from vaefusion.derivatives.dataset import write_descriptions
    from vaefusion.evaluation.summary import auc_table
    from vaefusion.reports.group_page import group_page
    from vaefusion.reports.subject import write_subject_reports

    assert cfg.output_dir is not None
    group = naming.group_dir(cfg.output_dir)
    primary = cfg.latent_dims[0]
    results = sorted(results, key=lambda r: r.sort_key)
    ranking = ranked(summary.importance, importance_folds(results, primary))
    explained = select_explained(cfg, results)
    out = GroupInterpretation(explained=explained, ranking=ranking)
    pngs = out.figures
    LOG.info("Interpretation: %s", f"figures and maps of {explained.describe()}" if explained
             else "no VAE was trained; figures of the methods only")
    table = auc_table(results)
    if table:
        pngs["auc_by_latent_dim"] = figures.auc_figure(table)
        if len({r.seed for r in results}) > 1:  # one seed: the page says so, no figure
            pngs["seed_robustness"] = figures.seed_figure(results, primary)
        else:  # nor one left by an earlier run with several seeds
            naming.figure(group, "seed_robustness").unlink(missing_ok=True)
    if ranking:
        pngs["importance"] = figures.importance_figure(ranking, TOP_FIGURE)
    if explained is not None:
        _explain(cfg, manifest, results, out)
    for name, png in pngs.items():
        figures.save_png(png, naming.figure(group, name))
    LOG.info("Interpretation: %d figure(s) in %s", len(pngs), naming.figures_dir(group))
    if out.maps is not None:
        from vaefusion.interpret.maps import map_descriptions

        write_descriptions(cfg.output_dir, map_descriptions(cfg.negative_label,
                                                            cfg.positive_label))
    out.subject_reports = write_subject_reports(cfg, manifest, results, ranking)
    out.report = group_page(cfg, manifest, results, summary, out, table)
    LOG.info("Report: %s (and %d subject report(s) sub-<label>.html in %s)", out.report,
             len(out.subject_reports), cfg.output_dir)
    return out


def _explain(cfg: Config, manifest: Manifest, results: list[FoldResult],
             out: GroupInterpretation) -> None:
    """Maps, t-SNE and training curves of the explained model."""
    from vaefusion.inputs.cache import read_meta
    from vaefusion.model.checkpoint import load_model
    from vaefusion.reports.brainmaps import maps_figure

    assert cfg.output_dir is not None and out.explained is not None
    explained = out.explained
    group = naming.group_dir(cfg.output_dir)
    model, _ = load_model(explained.model_dir, cfg.device)
    order = [r.modality for r in out.ranking]
    out.maps = compute_group_maps(model, explained, manifest, order, cfg.negative_label,
                                  cfg.positive_label, cfg.bids_dir)
    out.map_files = write_group_maps(group, out.maps, explained, model.grid)
    corr = dict(zip(out.maps.modalities, out.maps.correlations, strict=True))
    LOG.info("Maps: %d modalities in %s; spatial r (decoded vs input difference) of the top "
             "5: %s", len(out.maps.modalities), naming.maps_dir(group),
             ", ".join(f"{m} {_r(corr[m])}" for m in out.maps.top_modalities))
    if out.maps.expected_difference is not None:
        exp = dict(zip(out.maps.modalities, out.maps.expected_correlations, strict=True))
        planted = [m for i, m in enumerate(out.maps.modalities)
                   if np.abs(out.maps.expected_difference[i]).max() > 1e-4]
        inp = dict(zip(out.maps.modalities, out.maps.input_expected_correlations, strict=True))
        LOG.info("Maps: spatial r with the simulator's expected difference of the planted "
                 "modalities, decoded (input): %s",
                 ", ".join(f"{m} {_r(exp[m])} ({_r(inp[m])})" for m in planted))
    labels = {r.modality: r.label for r in out.ranking}
    out.figures["maps"] = maps_figure(out.maps, out.maps.top_modalities, labels)
    modalities = {manifest.keys[i]: read_meta(Path(f)).modalities
                  for i, f in enumerate(manifest.files)}
    latents = {k: v for k, v in explained.latents.items() if k in modalities}
    out.layout = latent_tsne(latents, modalities, cfg.seeds[0], cfg.device,
                             cfg.omp_nthreads)
    write_tsne(group, out.layout)
    LOG.info("t-SNE of %d points (%s, perplexity %g): %s", len(out.layout.modality),
             out.layout.backend, out.layout.perplexity, group / naming.TSNE)
    out.figures["tsne"] = figures.tsne_figure(out.layout)
    setting = [r for r in results if is_encoder(r.method) and r.latent_dim == explained.latent_dim
               and r.seed == explained.result.seed
               and getattr(r, "repeat", 0) == getattr(explained.result, "repeat", 0)]
    out.figures["training_curves"] = figures.training_figure(setting, _same(setting,
                                                                            explained.result))


def _same(results: list[FoldResult], target: FoldResult) -> FoldResult | None:
    """The object in ``results`` that is ``target``'s unit (the figure marks it by identity)."""
    return next((r for r in results if r.sort_key == target.sort_key), None)


def _r(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"
