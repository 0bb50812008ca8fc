"""The participant level: discovery results -> preprocessing per subject -> derivatives sink."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from vaefusion.config import Config
from vaefusion.derivatives.dataset import dataset_links
from vaefusion.inputs.discovery import SubjectInputs
from vaefusion.interfaces.participant import BIDSSource, DerivativesSink, PreprocessSubject


def cache_dir(cfg: Config) -> Path:
    assert cfg.work_dir is not None
    return Path(cfg.work_dir) / "cache"


def init_participant_wf(cfg: Config, subjects: list[SubjectInputs],
                        name: str = "vaefusion_participant_wf") -> pe.Workflow:
    """One branch per subject (iterables), so MultiProc or SLURM runs subjects in parallel.

    Node results are cached in the work dir by input hash, so a rerun skips subjects that are
    already done; the sink always runs but only rewrites what is missing or stale.
    """
    wf = pe.Workflow(name=name, base_dir=str(cfg.work_dir))
    inputnode = pe.Node(IdentityInterface(fields=["subject_json"]), name="inputnode")
    inputnode.iterables = ("subject_json", [s.to_json() for s in subjects])

    bidssrc = pe.Node(BIDSSource(), name="bidssrc", run_without_submitting=True)
    preproc = pe.Node(PreprocessSubject(cache_dir=str(cache_dir(cfg)),
                                        icn_order=list(cfg.icn_order)), name="preprocess",
                      mem_gb=1.0)
    sink = pe.Node(DerivativesSink(output_dir=str(cfg.output_dir),
                                   dataset_links=dataset_links(cfg)), name="ds_preproc",
                   overwrite=True, run_without_submitting=True)
    wf.connect([
        (inputnode, bidssrc, [("subject_json", "subject_json")]),
        (bidssrc, preproc, [("icn", "icn"), ("gmv", "gmv"), ("subject", "subject"),
                            ("session", "session"), ("label", "label")]),
        (preproc, sink, [("cache_file", "cache_file"), ("error", "error")]),
    ])
    return wf


def preprocess_errors(graph) -> list[str]:
    """The data errors reported by the executed preprocessing nodes."""
    from vaefusion.workflows.base import node_result

    errors = []
    for result in node_result(graph, "preprocess"):
        error = getattr(result.outputs, "error", "") if result is not None else ""
        if error:
            errors.append(error)
    return errors


def run_participant_level(cfg: Config, embed: bool = True) -> list[Path]:
    """Discover, preprocess every selected subject, and write the derivatives.

    Returns the cache files of the preprocessed subjects. Every subject with bad data is
    reported; the first one's message becomes the exit-65 error.
    """
    import logging

    from vaefusion.disk.naming import cache_file
    from vaefusion.errors import DataError
    from vaefusion.inputs.discovery import discover
    from vaefusion.inputs.participants import classification_labels, labels_needed
    from vaefusion.workflows.base import configure_nipype, run_workflow

    log = logging.getLogger("vaefusion.participant")
    subjects = discover(cfg)
    if labels_needed(cfg):  # refuse an impossible classification before preprocessing
        from vaefusion.evaluation.folds import make_partition
        from vaefusion.inputs.participants import classification_groups

        y = classification_labels(subjects, cfg)
        groups = None if cfg.cv_groups is None else classification_groups(subjects, cfg)
        for repeat in range(cfg.cv_repeats):
            make_partition(y, groups, cfg, repeat)
    configure_nipype(cfg)
    log.info("Preprocessing %d subject(s) (cache: %s)", len(subjects), cache_dir(cfg))
    graph = run_workflow(init_participant_wf(cfg, subjects), cfg)
    errors = preprocess_errors(graph)
    for error in errors if len(errors) > 1 else []:  # a single one is the exit message
        log.error("bad data: %s", error)
    if errors:
        more = f" ({len(errors) - 1} more subject(s) in the log)" if len(errors) > 1 else ""
        raise DataError(errors[0] + more)
    files = [cache_file(cache_dir(cfg), s.subject, s.session) for s in subjects]
    log.info("Preprocessed %d subject(s); derivatives in %s", len(files), cfg.output_dir)
    if embed and cfg.model is not None:
        embed_with_model(cfg, files)
    return files


def embed_with_model(cfg: Config, files: list[Path], group: bool = False) -> None:
    """Embed subjects with a trained model (``--model``, no training) and write their latents;
    at the group level also the latents table and a ``summary.json`` naming the model."""
    from vaefusion.derivatives.group import write_model_embedding
    from vaefusion.derivatives.subject import LatentsSource, SubjectLatents
    from vaefusion.training.device import select_device
    from vaefusion.training.inference import embed_with_model as embed

    assert cfg.model is not None and cfg.output_dir is not None
    emb = embed(cfg.model, files, select_device(cfg.device))
    # a model from a cross-validation run knows its seed and fold; whether a subject was
    # outside its training data is unknown here (the subjects may be another dataset's)
    source = LatentsSource(latent_dim=emb.latent_dim, model=str(cfg.model),
                           seed=emb.meta.get("seed"), fold=emb.meta.get("fold"))
    items = [SubjectLatents(m.subject, m.session, m.modalities, mu, source)
             for m, mu in zip(emb.subjects, emb.mus, strict=True)]
    write_model_embedding(cfg.output_dir, items, cfg.model, group)
