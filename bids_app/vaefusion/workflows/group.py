"""The group level: cross-validated VAE folds and PCA baselines as parallel branches.

Every (latent dim, seed, fold) of the VAE and every (baseline, latent dim, seed) is a branch
(nipype iterables), so MultiProc or a cluster plugin runs them at the same time; JoinNodes
gather their metrics, and the outputs are written from the joined results.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from vaefusion.config import Config
from vaefusion.evaluation.manifest import build_manifest
from vaefusion.interfaces.group import GatherResults, PCABaseline, VAEFold

LOG = logging.getLogger("vaefusion.group")

def init_group_wf(cfg: Config, manifest_path: Path, name: str = "vaefusion_group_wf"
                  ) -> pe.Workflow:
    """The group workflow over a written manifest."""
    assert cfg.work_dir is not None
    wf = pe.Workflow(name=name, base_dir=str(cfg.work_dir))
    common = {"manifest": str(manifest_path),
              "method_json": json.dumps(cfg.method_settings(), sort_keys=True),
              "runtime_json": cfg.runtime().to_json()}
    if "vae" in cfg.methods:
        src = pe.Node(IdentityInterface(fields=["latent_dim", "seed", "fold"]), name="vae_src")
        src.iterables = [("latent_dim", cfg.latent_dims), ("seed", cfg.seeds),
                         ("fold", list(range(cfg.folds)))]
        fold = pe.Node(VAEFold(train_root=str(Path(cfg.work_dir) / "training"), **common),
                       name="vae_fold", n_procs=cfg.omp_nthreads, mem_gb=4.0)
        join = pe.JoinNode(GatherResults(), joinsource="vae_src", joinfield=["results"],
                           name="vae_join")
        wf.connect([
            (src, fold, [("latent_dim", "latent_dim"), ("seed", "seed"), ("fold", "fold")]),
            (fold, join, [("result", "results")]),
        ])
    baselines = [m for m in cfg.methods if m.startswith("pca-")]
    if baselines:
        src = pe.Node(IdentityInterface(fields=["method", "latent_dim", "seed"]), name="pca_src")
        src.iterables = [("method", baselines), ("latent_dim", cfg.latent_dims),
                         ("seed", cfg.seeds)]
        pca = pe.Node(PCABaseline(cache_dir=str(Path(cfg.work_dir) / "pca"),
                                  **common), name="pca_baseline", mem_gb=2.0)
        join = pe.JoinNode(GatherResults(), joinsource="pca_src", joinfield=["results"],
                           name="pca_join")
        wf.connect([
            (src, pca, [("method", "method"), ("latent_dim", "latent_dim"), ("seed", "seed")]),
            (pca, join, [("result", "results")]),
        ])
    return wf


def gathered_results(graph) -> list[dict]:
    from vaefusion.workflows.base import node_result

    rows: list[dict] = []
    for name in ("vae_join", "pca_join"):
        for result in node_result(graph, name):
            rows.extend(json.loads(Path(result.outputs.result).read_text()))
    return rows


def run_group_level(cfg: Config) -> dict | None:
    """Preprocess (cached), then train and evaluate every fold, or embed with ``--model``."""
    from vaefusion.workflows.base import configure_nipype, run_workflow
    from vaefusion.workflows.participant import run_participant_level

    files = run_participant_level(cfg, embed=False)
    if cfg.model is not None:
        embed_with_model(cfg, files, group=True)
        return None
    manifest = build_manifest(files, cfg)
    from vaefusion.evaluation.folds import make_folds

    for seed in cfg.seeds:  # refuse an impossible K before any training starts
        make_folds(manifest.y(), cfg.folds, seed, cfg.val_fraction)
    manifest_path = Path(cfg.work_dir) / "group_manifest.json"
    manifest.write(manifest_path)
    n_units = len(cfg.latent_dims) * len(cfg.seeds) * cfg.folds * ("vae" in cfg.methods)
    LOG.info("Group level: %d subjects (%d classified: %d %s, %d %s), %d VAE fold(s), "
             "methods %s", len(files), manifest.classified.size, int((manifest.y() == 1).sum()),
             cfg.positive_label, int((manifest.y() == 0).sum()), cfg.negative_label, n_units,
             " ".join(cfg.methods))
    configure_nipype(cfg)
    graph = run_workflow(init_group_wf(cfg, manifest_path), cfg)
    from vaefusion.derivatives.group import write_group_outputs

    summary = write_group_outputs(cfg, manifest, gathered_results(graph))
    for method, info in summary["methods"].items():
        auc = info["roc_auc_mean"]
        LOG.info("%-10s ROC-AUC %s (latent dim %d)", method,
                 "not available" if auc is None else f"{auc:.3f} ± {info['roc_auc_std']:.3f}",
                 info["latent_dim"])
    LOG.info("Summary: %s", Path(cfg.output_dir) / "group" / "summary.json")
    return summary


def embed_with_model(cfg: Config, files: list[Path], group: bool = False) -> None:
    """Embed subjects with a trained model (``--model``); no training.

    Writes each subject's latents TSV, and at the group level a latents table and a
    ``summary.json`` that records the model used.
    """
    from vaefusion.derivatives.io import tsv_text
    from vaefusion.derivatives.subject import write_latents_tsv
    from vaefusion.errors import DataError
    from vaefusion.inputs.cache import read_meta
    from vaefusion.model.checkpoint import load_model
    from vaefusion.training.device import select_device
    from vaefusion.training.inference import embed_groups

    assert cfg.model is not None and cfg.output_dir is not None
    device = select_device(cfg.device)
    model, meta = load_model(cfg.model, device)
    trained = meta.get("modalities")
    metas = [read_meta(f) for f in files]
    for m in metas:
        if trained and m.modalities != trained[:len(m.modalities)]:
            raise DataError(
                f"{m.key} has modalities {m.modalities[:3]}... but the model in {cfg.model} was "
                f"trained on {trained[:3]}...; preprocess the same inputs the model saw."
            )
    LOG.info("Embedding %d subject(s) with %s (latent dim %d)", len(files), cfg.model,
             model.latent_dim)
    mus = embed_groups(model, [str(f) for f in files], device, int(meta.get("downsample", 1)))
    rows = []
    for i, m in enumerate(metas):
        write_latents_tsv(cfg.output_dir, m.subject, m.session, m.modalities, mus[i],
                          meta={"LatentDim": model.latent_dim, "Model": str(cfg.model)})
        for name, z in zip(m.modalities, mus[i], strict=True):
            rows.append({"participant_id": f"sub-{m.subject}", "modality": name,
                         **{f"z{j:03d}": float(v) for j, v in enumerate(z)}})
    if group:
        from vaefusion.derivatives.io import atomic_write_text

        out = Path(cfg.output_dir) / "group"
        cols = ["participant_id", "modality", *[f"z{j:03d}" for j in range(model.latent_dim)]]
        atomic_write_text(out / "latents_model.tsv", tsv_text(rows, cols))
        atomic_write_text(out / "summary.json", json.dumps({
            "methods": {}, "importance": [], "n_subjects": len(files),
            "model": str(cfg.model), "latent_dim": model.latent_dim,
            "note": "embedding only (--model): no training, no classification",
        }, indent=2) + "\n")
