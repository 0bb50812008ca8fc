"""The group level: cross-validated VAE folds and baselines as parallel branches.

Every (method, latent dim, seed, repeat, fold) of a per-fold method (the VAE) and every
(baseline, latent dim, seed, repeat) is a branch (nipype iterables; the methods are those of
the registry, vaefusion.evaluation.methods), so MultiProc or a cluster plugin runs them at the
same time; JoinNodes gather their metrics, and the outputs are written from the joined
results.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from vaefusion.config import Config
from vaefusion.disk import naming
from vaefusion.evaluation.group_summary import GroupSummary
from vaefusion.evaluation.manifest import build_manifest
from vaefusion.evaluation.methods import selected_methods
from vaefusion.evaluation.results import FoldResult
from vaefusion.interfaces.group import FoldUnit, GatherResults, RepeatUnit

LOG = logging.getLogger("vaefusion.group")

def init_group_wf(cfg: Config, manifest_path: Path, name: str = "vaefusion_group_wf"
                  ) -> pe.Workflow:
    """The group workflow over a written manifest."""
    assert cfg.work_dir is not None
    wf = pe.Workflow(name=name, base_dir=str(cfg.work_dir))
    common = {"manifest": str(manifest_path),
              "method_json": json.dumps(cfg.method_settings(), sort_keys=True),
              "runtime_json": cfg.runtime().to_json()}
    methods = selected_methods(cfg.methods)
    per_fold = [m.name for m in methods if m.per_fold]
    if per_fold:
        src = pe.Node(IdentityInterface(fields=["method", "latent_dim", "seed", "repeat",
                                                "fold"]), name="fold_src")
        src.iterables = [("method", per_fold), ("latent_dim", cfg.latent_dims),
                         ("seed", cfg.seeds),
                         ("repeat", list(range(cfg.cv_repeats))),
                         ("fold", list(range(cfg.folds)))]
        fold = pe.Node(FoldUnit(train_root=str(Path(cfg.work_dir) / "training"), **common),
                       name="fold_unit", n_procs=cfg.omp_nthreads, mem_gb=4.0)
        join = pe.JoinNode(GatherResults(), joinsource="fold_src", joinfield=["results"],
                           name="fold_join")
        wf.connect([
            (src, fold, [("method", "method"), ("latent_dim", "latent_dim"), ("seed", "seed"),
                         ("repeat", "repeat"), ("fold", "fold")]),
            (fold, join, [("result", "results")]),
        ])
    baselines = [m.name for m in methods if not m.per_fold]
    if baselines:
        src = pe.Node(IdentityInterface(fields=["method", "latent_dim", "seed", "repeat"]),
                      name="repeat_src")
        src.iterables = [("method", baselines), ("latent_dim", cfg.latent_dims),
                         ("seed", cfg.seeds), ("repeat", list(range(cfg.cv_repeats)))]
        pca = pe.Node(RepeatUnit(cache_dir=str(Path(cfg.work_dir) / "pca"),
                                 **common), name="repeat_unit", mem_gb=2.0)
        join = pe.JoinNode(GatherResults(), joinsource="repeat_src", joinfield=["results"],
                           name="repeat_join")
        wf.connect([
            (src, pca, [("method", "method"), ("latent_dim", "latent_dim"), ("seed", "seed"),
                        ("repeat", "repeat")]),
            (pca, join, [("result", "results")]),
        ])
    return wf


def gathered_results(graph) -> list[FoldResult]:
    """The typed results of every unit, read back from the joins' JSON files."""
    from vaefusion.interfaces.group import read_results
    from vaefusion.workflows.base import node_result

    rows: list[FoldResult] = []
    for name in ("fold_join", "repeat_join"):
        for result in node_result(graph, name):
            rows.extend(read_results(result.outputs.result))
    return rows


def run_group_level(cfg: Config) -> GroupSummary | None:
    """Preprocess (cached), then train and evaluate every fold, or embed with ``--model``."""
    from vaefusion.workflows.base import configure_nipype, run_workflow
    from vaefusion.workflows.participant import embed_with_model, run_participant_level

    files = run_participant_level(cfg, embed=False)
    if cfg.model is not None:
        embed_with_model(cfg, files, group=True)
        return None
    methods = selected_methods(cfg.methods)
    manifest = build_manifest(files, cfg)
    from vaefusion.evaluation.crossval import partition

    for repeat in range(cfg.cv_repeats):  # refuse an impossible K before any training starts
        partition(manifest, cfg, repeat)
    from vaefusion.evaluation.memory import check_group_memory

    check_group_memory(cfg, manifest, methods)  # --mem: refuse what cannot fit before training
    manifest_path = Path(cfg.work_dir) / naming.GROUP_MANIFEST
    manifest.write(manifest_path)
    n_units = (len(cfg.latent_dims) * len(cfg.seeds) * cfg.cv_repeats * cfg.folds
               * sum(m.per_fold for m in methods))
    LOG.info("Group level: %d subjects (%d classified: %d %s, %d %s), %d VAE fold(s), "
             "methods %s", len(files), manifest.classified.size, int((manifest.y() == 1).sum()),
             cfg.positive_label, int((manifest.y() == 0).sum()), cfg.negative_label, n_units,
             " ".join(cfg.methods))
    configure_nipype(cfg)
    graph = run_workflow(init_group_wf(cfg, manifest_path), cfg)
    from vaefusion.derivatives.group import write_group_outputs, write_summary

    results = gathered_results(graph)
    summary = write_group_outputs(cfg, manifest, results, summary_file=False)
    from vaefusion.evaluation.group_summary import format_auc

    for method, info in summary.methods.items():
        LOG.info("%-10s ROC-AUC %s (latent dim %d)", method, format_auc(info), info.latent_dim)
    for comp in summary.comparisons:
        LOG.info("%s - %s: %+.3f, 95%% CI [%.3f, %.3f], p = %.3g (%d paired folds)",
                 comp.method, comp.baseline, comp.mean_difference, comp.ci[0], comp.ci[1],
                 comp.p_value, comp.n_pairs)
    from vaefusion.reports.group import write_interpretation

    write_interpretation(cfg, manifest, results, summary)
    write_summary(cfg.output_dir, summary)  # last: summary.json means the run succeeded
    LOG.info("Summary: %s", naming.group_dir(cfg.output_dir) / naming.SUMMARY)
    return summary

