"""``group/report.html``: the page a person opens first after a group run."""

from __future__ import annotations

import logging
import math
import platform
import re
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from vaefusion import __version__
from vaefusion.config import Config
from vaefusion.disk import naming
from vaefusion.disk.io import atomic_write_text
from vaefusion.evaluation.group_summary import GroupSummary, verdict
from vaefusion.evaluation.manifest import Manifest
from vaefusion.evaluation.methods import REFERENCE, is_encoder
from vaefusion.evaluation.results import FoldResult
from vaefusion.inputs.cache import read_meta
from vaefusion.inputs.reference import citation
from vaefusion.interpret.importance import modality_name
from vaefusion.interpret.interpretation import GroupInterpretation
from vaefusion.model.objective import LIKELIHOODS
from vaefusion.reports import html
from vaefusion.reports.html import Section

#: Packages whose versions the report lists.
PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "nibabel", "nilearn", "nipype",
            "matplotlib", "pybids")
#: A VAE whose kept model has fewer active units than this has collapsed to its prior.
MIN_ACTIVE_UNITS = 1
#: Rows of the per-modality tables (the rest is in the TSVs and sidecars).
SHOWN_ROWS = 20
#: Decoded differences below this fraction of the input differences get a warning.
WEAK_DECODED = 0.05


def group_page(cfg: Config, manifest: Manifest, results: list[FoldResult],
               summary: GroupSummary, interp: GroupInterpretation, table: list[dict]
               ) -> Path:
    """Write ``group/report.html`` from the interpretation's results ``interp``."""
    assert cfg.output_dir is not None
    path = naming.group_report(cfg.output_dir)
    group = path.parent
    sections = [
        _overview(cfg, summary, results, interp),
        _data(cfg, manifest),
        _classification(summary, results),
        _table_one(table, interp),
        _seeds(table, results, cfg.latent_dims[0], interp),
        _importance(interp),
        _maps(interp, group),
        _latent(interp),
        _training(results, interp),
        _warnings(cfg, manifest, results, interp),
        _subjects(interp, cfg.output_dir, group),
        _about(cfg),
    ]
    subtitle = (f"vaefusion {__version__} · group level · {time.strftime('%Y-%m-%d %H:%M')} · "
                f"{summary.n_subjects} subjects")
    atomic_write_text(path, html.page("vaefusion group report", subtitle,
                                      [s for s in sections if s.blocks]))
    return path


def _rel(path: Path, start: Path) -> str:
    import os

    return Path(os.path.relpath(path, start)).as_posix()


def _fig(interp: GroupInterpretation, name: str, alt: str, caption: str) -> str:
    png = interp.figures.get(name)
    return html.image(png, alt, caption + f" (group/figures/{name}.png)") if png else ""


# --------------------------------------------------------------------------- sections
def _overview(cfg: Config, summary: GroupSummary, results: list[FoldResult],
              interp: GroupInterpretation) -> Section:
    """The verdict (VAE against each baseline) and every learning warning first, then the
    VAE's AUC, what the figures explain, and the tables."""
    s = Section("overview", "Overview")
    if summary.comparisons:
        s.add(html.para(verdict(summary.comparisons)))
    for warning in learning_warnings(results, interp) + learning_log_warnings(cfg):
        s.add(html.note(warning))
    vae = summary.methods.get(REFERENCE)
    if vae and vae.roc_auc_mean is not None:
        ci = vae.roc_auc_ci
        ci_text = f", 95% CI [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        s.add(html.para(f"VAE ROC-AUC {vae.roc_auc_mean:.3f}{ci_text} at latent dim "
                        f"{vae.latent_dim} over {vae.n_folds} folds."))
    if interp.explained is not None:
        s.add(html.para(f"Figures and maps explain {interp.explained.describe()} (choose "
                        f"another fold with --explain-fold)."))
    else:
        s.add(html.note("No VAE was trained (--methods without vae): there are no maps, "
                        "no importance and no t-SNE."))
    assert cfg.output_dir is not None
    group = naming.group_dir(cfg.output_dir)
    tables = [group / name for name in (naming.METRICS, naming.AUC_TABLE, naming.COMPARISONS,
                                        naming.DECISION_SCORES, naming.IMPORTANCE,
                                        naming.TRAINING_HISTORY, naming.TSNE, naming.CENTRES)]
    # summary.json is written last, once the whole run (this report included) has succeeded
    found = [html.link(naming.SUMMARY, naming.SUMMARY)]
    found += [html.link(p.name, p.name) for p in tables if p.is_file()]
    s.add(html.para("Tables beside this report:"), html.bullet_list(found, raw=True))
    return s


def _data(cfg: Config, manifest: Manifest) -> Section:
    s = Section("data", "Data")
    labels = manifest.labels
    counts = [{"group": cfg.negative_label, "subjects": labels.count(0)},
              {"group": cfg.positive_label, "subjects": labels.count(1)},
              {"group": "not classified", "subjects": labels.count(-1)}]
    s.add(html.table(counts, ["group", "subjects"]))
    by_domain: dict[str, list[str]] = {}
    from vaefusion.inputs.reference import modality_domain

    for m in manifest.modalities:
        by_domain.setdefault(modality_domain(m), []).append(m)
    s.add(html.para(f"{len(manifest.modalities)} modalities found:"),
          html.bullet_list(f"{d}: {', '.join(ms)}" for d, ms in by_domain.items()))
    unclassified = []
    for i, (f, y) in enumerate(zip(manifest.files, labels, strict=True)):
        if y >= 0:
            continue
        meta = read_meta(Path(f))
        if meta.modalities != manifest.modalities:
            why = f"has {len(meta.modalities)} of {len(manifest.modalities)} modalities"
        elif meta.label not in (cfg.positive_label, cfg.negative_label):
            why = f"label {meta.label or 'n/a'} is neither {cfg.positive_label} nor " \
                  f"{cfg.negative_label}"
        else:
            why = "another session of a classified subject"
        unclassified.append(f"{manifest.keys[i]}: {why} (embedded, not classified)")
    skipped = [w for w in _log_warnings(cfg) if "lacks a modality" in w or "match no" in w]
    if unclassified or skipped:
        s.add(html.para("Skipped or not classified, and why:"),
              html.bullet_list(skipped + unclassified))
    else:
        s.add(html.para("No subject was skipped; every subject was classified."))
    return s


def _classification(summary: GroupSummary, results: list[FoldResult]) -> Section:
    from vaefusion.evaluation.summary import comparisons

    s = Section("classification", "Classification (ROC-AUC)")
    rows = []
    for method, info in sorted(summary.methods.items()):
        rows.append({"method": method, "latent dim": info.latent_dim,
                     "ROC-AUC": info.roc_auc_mean, "95% CI": info.roc_auc_ci,
                     "SD over folds": info.roc_auc_std, "folds": info.n_folds,
                     "permutation p": info.permutation_p,
                     "note": info.reason or ("" if info.available else "not available")})
    null = (f" The permutation p compares the mean AUC with the same mean under "
            f"{summary.permutations} label permutations (the same for every method); it, not "
            f"the CI, says whether an AUC is above chance." if summary.permutations else "")
    s.add(html.para(f"Partition: {summary.partition or 'stratified K-fold'}. Mean over "
                    "the test folds of every seed and repeat of the first latent dim; the CI is "
                    f"the corrected resampled t (Nadeau & Bengio). Classifier: "
                    f"{summary.classifier}.{null}"),
          html.table(rows, ["method", "latent dim", "ROC-AUC", "95% CI", "SD over folds",
                            "folds", "permutation p", "note"]))
    pairs = comparisons(results)
    if pairs:
        wanted = ["method", "baseline", "latent_dim", "n_pairs", "mean_difference", "ci_low",
                  "ci_high", "p_value"]
        s.add(html.para("Paired comparisons on identical folds (VAE minus baseline):"),
              html.table(pairs, [c for c in wanted if c in pairs[0]] or list(pairs[0])))
    return s


def _table_one(table: list[dict], interp: GroupInterpretation) -> Section:
    s = Section("table1", "Table I: latent dim")
    if not table:
        return s
    s.add(_fig(interp, "auc_by_latent_dim", "ROC-AUC by method and latent dim",
               "Mean ROC-AUC with 95% CIs by method and latent dim."))
    dims = sorted({r["latent_dim"] for r in table})
    methods = sorted({r["method"] for r in table})
    cells = {(r["method"], r["latent_dim"]): r for r in table}
    rows = []
    for m in methods:
        row: dict[str, Any] = {"method": m}
        for d in dims:
            c = cells.get((m, d))
            row[f"L={d}"] = _auc_text(c) if c else "n/a"
        rows.append(row)
    s.add(html.table(rows, ["method", *[f"L={d}" for d in dims]]))
    return s


def _auc_text(row: dict) -> str:
    mean = row.get("roc_auc_mean")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "X (not available)"
    lo, hi = row.get("ci_low"), row.get("ci_high")
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def _seeds(table: list[dict], results: list[FoldResult], primary: int,
           interp: GroupInterpretation) -> Section:
    s = Section("seeds", "Seed robustness")
    if not table:
        return s
    seeds = sorted({r.seed for r in results if is_encoder(r.method)}
                   or {r.seed for r in results})
    if len(seeds) < 2:
        s.add(html.para(f"One seed was run (--seed {seeds[0] if seeds else 0}): give several "
                        f"(e.g. --seed 0 1 2) to see how much the ROC-AUC depends on the "
                        f"initialisation."))
        return s
    s.add(_fig(interp, "seed_robustness", "ROC-AUC per seed",
               f"Mean ROC-AUC per seed at latent dim {primary}."))
    per: dict[tuple[str, int], list[float]] = {}
    for r in results:
        if r.latent_dim == primary and r.available and math.isfinite(r.roc_auc):
            per.setdefault((r.method, r.seed), []).append(r.roc_auc)
    rows = [{"method": m, "seed": seed, "mean ROC-AUC": sum(v) / len(v), "folds": len(v)}
            for (m, seed), v in sorted(per.items())]
    s.add(html.table(rows, ["method", "seed", "mean ROC-AUC", "folds"]),
          html.table([r for r in table if r.get("latent_dim") == primary],
                     ["method", "latent_dim", "seed_mean", "seed_std", "n_seeds"],
                     ["method", "latent dim", "mean over seeds", "SD over seeds", "seeds"]))
    return s


def _importance(interp: GroupInterpretation) -> Section:
    s = Section("importance", "Modality importance")
    if not interp.ranking:
        return s
    s.add(_fig(interp, "importance", "modality importance",
               "Top modalities by their share of the SVM's |weights| (mean ± std over folds)."))
    rows = [{"rank": r.rank, "modality": r.modality, "name": r.name, "domain": r.domain,
             "mean": r.mean, "std": r.std} for r in interp.ranking[:SHOWN_ROWS]]
    s.add(html.table(rows, ["rank", "modality", "name", "domain", "mean", "std"]))
    if len(interp.ranking) > SHOWN_ROWS:
        s.add(html.para(f"{len(interp.ranking) - SHOWN_ROWS} more in group/importance.tsv."))
    return s


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _maps(interp: GroupInterpretation, group: Path) -> Section:
    s = Section("maps", "Group maps")
    maps, files = interp.maps, interp.map_files
    if maps is None or files is None:
        return s
    s.add(html.para(f"Decoded latent group centres ({maps.negative}: {maps.n_negative}, "
                    f"{maps.positive}: {maps.n_positive} subjects), their difference "
                    f"{maps.negative} − {maps.positive}, and the same difference of the "
                    f"inputs; r is their spatial correlation inside the brain mask."))
    for caveat in map_caveats(maps):  # beside the maps they explain, before the figure
        s.add(html.note(caveat))
    s.add(_fig(interp, "maps", "group maps", "Top modalities: input difference, decoded "
               "difference and glass brain; last row: the top-5 map."))
    rank = {r.modality: r.rank for r in interp.ranking}
    rows = [{"rank": rank.get(m), "modality": m, "name": modality_name(m), "spatial r": c,
             "r with truth": e, "input r with truth": i}
            for m, c, e, i in zip(maps.modalities, maps.correlations,
                                  maps.expected_correlations, maps.input_expected_correlations,
                                  strict=True)]
    rows.sort(key=lambda r: (r["rank"] is None, r["rank"] or 0))
    columns = ["rank", "modality", "name", "spatial r"]
    if maps.expected_difference is not None:
        columns += ["r with truth", "input r with truth"]
        s.add(html.para("Simulated data: \"r with truth\" correlates the decoded difference "
                        "with the simulator's expected difference after preprocessing "
                        "(code/expected_difference.nii.gz), the truth the input difference "
                        "only estimates; it is n/a where nothing was planted. \"input r with "
                        "truth\" is the same for the input difference: with noise and few "
                        "subjects the data themselves fall short of the truth, so read the "
                        "decoded map against it."))
    shown = rows[:SHOWN_ROWS]
    # simulated data: the planted modalities are listed whatever their rank, so that their
    # "r with truth" is never hidden below the cut
    shown += [r for r in rows[SHOWN_ROWS:] if _is_number(r["r with truth"])]
    s.add(html.table(shown, columns))
    if len(rows) > len(shown):
        s.add(html.para(f"{len(rows) - len(shown)} more in the decoded difference's sidecar "
                        f"(SpatialCorrelationWithInput)."))
    s.add(html.para("Files (NIfTI on the input grid, with JSON sidecars):"),
          html.bullet_list([html.link(_rel(p, group), p.name) for p in files.all()]
                           + [html.link(_rel(files.centres, group), files.centres.name)],
                           raw=True))
    return s


def _latent(interp: GroupInterpretation) -> Section:
    s = Section("tsne", "Latent structure")
    if interp.layout is None:
        return s
    s.add(_fig(interp, "tsne", "t-SNE of the latents", "Every subject's per-modality posterior "
               "mean, coloured by NeuroMark domain; numbers mark each modality's centre."),
          html.para(f"{interp.layout.backend} t-SNE, perplexity {interp.layout.perplexity:g}; "
                    f"coordinates in group/tsne.tsv."))
    return s


def _training(results: list[FoldResult], interp: GroupInterpretation) -> Section:
    s = Section("training", "Training")
    vae = [r for r in results if is_encoder(r.method) and r.training is not None]
    if not vae:
        return s
    s.add(_fig(interp, "training_curves", "training curves",
               "Loss, KL, active units and R² per epoch. R² is against each modality's mean "
               "intensity (does the decoder draw the right map?); subject R² is against each "
               "modality's mean map over the training subjects (does it draw this subject's "
               "map?), and noise in the maps caps it near 0."))
    rows = [{"latent dim": r.latent_dim, "seed": r.seed, "repeat": getattr(r, "repeat", 0),
             "fold": r.fold, "best epoch": r.training.best_epoch,
             "epochs": r.training.epochs_run, "likelihood": r.training.likelihood,
             "sigma": r.training.sigma, "active units": r.training.active_units,
             "KL/volume": r.training.kl_per_volume, "R²": r.training.recon_r2,
             "subject R²": r.training.recon_r2_subject,
             "within-modality units": r.training.within_units,
             "pca-shared subject R²": r.training.twin_r2_subject,
             "device": r.training.device} for r in vae if r.training is not None]
    s.add(html.table(rows, list(rows[0])))
    return s


def learning_warnings(results: list[FoldResult], interp: GroupInterpretation) -> list[str]:
    """What says that the VAE did not learn (enough): a collapsed posterior, reconstructions
    worse than the mean, maps decoded as zeros or barely differing between the groups."""
    items = []
    vae = [r for r in results if is_encoder(r.method) and r.training is not None]
    collapsed = [r for r in vae if r.training is not None
                 and r.training.active_units is not None
                 and r.training.active_units < MIN_ACTIVE_UNITS]
    if collapsed:
        likelihood = collapsed[0].training.likelihood if collapsed[0].training else "unit"
        hint = LIKELIHOODS.get(likelihood).collapse_hint if likelihood in LIKELIHOODS else ""
        fix = f"{hint} avoids this" if hint else "train longer (--epochs) or with a higher --lr"
        items.append(f"{len(collapsed)} of {len(vae)} VAE folds have no active latent unit: "
                     f"the posterior collapsed to the prior, so maps and t-SNE show little "
                     f"(likelihood {likelihood}: {fix}).")
    bad_r2 = [r for r in vae if r.training is not None and r.training.recon_r2 is not None
              and r.training.recon_r2 < 0]
    if bad_r2:
        items.append(f"{len(bad_r2)} VAE folds reconstruct worse than each modality's mean "
                     f"intensity (R² < 0): the decoder does not yet draw the modalities' maps; "
                     f"train longer (--epochs, --lr) or check --likelihood.")
    undrawn = [r for r in vae if r.training is not None and r.training.undrawn]
    if undrawn:
        names = sorted({m for r in undrawn if r.training for m in r.training.undrawn})
        items.append(f"In {len(undrawn)} of {len(vae)} VAE folds the decoder does not draw "
                     f"{len(names)} modalities (validation R² ≤ 0: no better than the "
                     f"modality's mean intensity, e.g. decoded as zeros): "
                     f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}; their maps "
                     f"say nothing. Train longer or use the default --likelihood.")
    below = [r for r in vae if r.training is not None
             and r.training.twin_r2_subject is not None
             and r.training.recon_r2_subject is not None
             and r.training.recon_r2_subject < r.training.twin_r2_subject]
    if below:
        t = below[0].training
        items.append(f"In {len(below)} of {len(vae)} VAE folds the VAE reconstructs the "
                     f"validation subjects worse than its linear twin (pca-shared at the same "
                     f"latent size; subject R² e.g. {t.recon_r2_subject:.3f} against "
                     f"{t.twin_r2_subject:.3f}): it has learned less subject-level detail than "
                     f"a PCA would, so read its maps and importance with care.")
    unconverged = [r for r in vae if r.training is not None and not r.training.stopped_early
                   and r.training.best_epoch == r.training.epochs_run]
    if unconverged:
        epochs = sorted({r.training.epochs_run for r in unconverged if r.training is not None})
        items.append(f"{len(unconverged)} of {len(vae)} VAE folds kept their last epoch "
                     f"({', '.join(map(str, epochs))}): training had not converged, so the VAE "
                     f"is judged before it finished learning; raise --epochs.")
    if interp.maps is not None:
        items += map_caveats(interp.maps)
    return items


#: Log warnings about how training went that the results do not hold (a modality decoded as
#: zeros, the VAE below its linear twin): they join the learning warnings at the top of the
#: Overview. (Unconverged and collapsed folds are read from the results, so a rerun that reuses
#: the folds still says so.)
LEARNING_LOG = re.compile(r"decoded as (all )?zeros|linear twin", re.I)


def learning_log_warnings(cfg: Config) -> list[str]:
    """The training's own warnings from the log, once each: the unit's folder is dropped and
    the number of units that said the same is given."""
    from collections import Counter

    said: Counter[str] = Counter()
    for warning in _log_warnings(cfg):
        if LEARNING_LOG.search(warning):
            said[re.sub(r"^\S*[/\\](vae|unit)[^/\\\s]*: ", "", warning)] += 1
    return [f"{n} training units: {text}" if n > 1 else text[:1].upper() + text[1:]
            for text, n in said.items()]


def map_caveats(maps) -> list[str]:
    """Why the decoded maps may show little: modalities decoded as zeros, or decoded group
    differences far smaller than the input differences."""
    items = []
    if maps is not None:
        # a decoder whose last ReLU layer is silent for a modality's code draws exact zeros:
        # the first plateau of training (docs/method.md)
        blank = [m for m, vol in zip(maps.modalities, maps.decoded_negative, strict=True)
                 if not np.any(vol)]
        if blank:
            items.append(f"The explained model decodes {len(blank)} of {len(maps.modalities)} "
                         f"modalities as all zeros ({', '.join(blank[:5])}"
                         f"{', ...' if len(blank) > 5 else ''}): it has not learned their maps "
                         f"(the first training plateau, see docs/method.md), so its maps and "
                         f"spatial correlations say nothing about them; train longer "
                         f"(--epochs, --patience).")
        decoded = float(abs(maps.decoded_difference[:, maps.mask]).max())
        given = float(abs(maps.input_difference[:, maps.mask]).max())
        if given > 0 and decoded < WEAK_DECODED * given:
            items.append(f"The decoded group differences reach at most {decoded:.2g}, "
                         f"{100 * decoded / given:.2g}% of the input differences ({given:.2g}): "
                         f"the explained model's latent centres barely differ, so its maps "
                         f"show little of the group effect.")
    return items


def _warnings(cfg: Config, manifest: Manifest, results: list[FoldResult],
              interp: GroupInterpretation) -> Section:
    s = Section("warnings", "Warnings")
    items = learning_warnings(results, interp)
    for method in sorted({r.method for r in results if not r.available}):
        reason = next(r.reason for r in results if r.method == method and not r.available)
        items.append(f"{method} is not available at some latent dims: {reason}")
    n_unclassified = manifest.labels.count(-1)
    if n_unclassified:
        items.append(f"{n_unclassified} subject(s) are embedded but not classified (see Data).")
    items.extend(_log_warnings(cfg))
    if items:
        s.add(*[html.note(w) for w in dict.fromkeys(items)])
    else:
        s.add(html.note("No warnings.", "ok"))
    return s


def _subjects(interp: GroupInterpretation, out: Path, group: Path) -> Section:
    s = Section("subjects", "Subjects")
    if interp.subject_reports:
        s.add(html.para("Per-subject reports (inputs beside reconstructions, latents):"),
              html.bullet_list([html.link(_rel(p, group), p.stem)
                                for p in interp.subject_reports], raw=True))
    return s


def _about(cfg: Config) -> Section:
    s = Section("about", "Configuration and citation")
    versions = [{"package": "vaefusion", "version": __version__},
                {"package": "python", "version": platform.python_version()}]
    for name in PACKAGES:
        try:
            versions.append({"package": name, "version": metadata.version(name)})
        except metadata.PackageNotFoundError:
            continue
    s.add(html.table(versions, ["package", "version"]),
          html.para(f"Configuration (also in logs/"
                    f"{naming.config_file(Path('.'), cfg.analysis_level, cfg.run_id).name}):"),
          html.pre(cfg.to_toml()), html.para("Citation (also in logs/CITATION.md):"),
          html.pre(citation()))
    return s


def _log_warnings(cfg: Config) -> list[str]:
    """The warnings this run logged (its log file in ``logs/``), without timestamps."""
    files = [Path(h.baseFilename) for h in logging.getLogger("vaefusion").handlers
             if isinstance(h, logging.FileHandler) and cfg.output_dir is not None
             and Path(h.baseFilename).parent == naming.logs_dir(cfg.output_dir)]
    found = []
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        found += [m.group(1) for m in re.finditer(r"\[WARNING\] (.*)", text)]
    return list(dict.fromkeys(found))
