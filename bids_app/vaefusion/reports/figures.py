"""Matplotlib figures of the group report and the subject reports (PNG bytes).

Figures are matplotlib ``Figure`` objects, not pyplot ones: no backend, no display and no
global state, so nothing leaks between figures. PNGs are written without the "Software" URL
matplotlib would add; the group's PNGs also go to ``group/figures/``.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from vaefusion.evaluation.methods import METHODS
from vaefusion.evaluation.results import FoldResult
from vaefusion.inputs.reference import icns
from vaefusion.interpret.importance import ModalityImportance
from vaefusion.interpret.latent_space import LatentMap

DPI = 110
#: One colour per NeuroMark domain (in the order of the packaged labels), gray matter and
#: unknown, the same in every figure.
DOMAIN_COLOURS = dict(zip((*dict.fromkeys(i.domain for i in icns()), "GM", "NA"), (
    "#8c564b", "#17becf", "#2ca02c", "#1f77b4", "#9467bd", "#d62728", "#bcbd22", "#7f7f7f",
    "#000000"), strict=False))


def method_colour(method: str) -> str:
    """The method's colour (its class's, vaefusion.evaluation.methods), grey if unknown."""
    return METHODS.get(method).colour if method in METHODS else "grey"


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (7, 4.5),
             **kw: Any) -> tuple[Figure, Any]:
    """A new figure and its axes (``Figure.subplots``), outside pyplot."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def render(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def save_png(png: bytes, path: Path) -> Path:
    """Write PNG bytes atomically (a temporary file beside ``path``, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png.part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(png)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _colour(domain: str) -> str:
    return DOMAIN_COLOURS.get(domain, DOMAIN_COLOURS["NA"])


# --------------------------------------------------------------------------- group figures
def importance_figure(ranking: Sequence[ModalityImportance], top: int = 10) -> bytes:
    """Paper Fig. 2: the ``top`` modalities' mean share of |w| with std error bars."""
    rows = list(ranking[:top])
    fig, ax = subplots(figsize=(7.5, 0.42 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    ax.barh(y, [r.mean for r in rows], xerr=[r.std for r in rows], capsize=3,
            color=[_colour(r.domain) for r in rows], edgecolor="black", linewidth=0.4)
    ax.set_yticks(y, [r.label for r in rows])
    n = rows[0].n_folds if rows else 0
    ax.set_xlabel(f"share of |SVM weight| (mean ± std over {n} folds)")
    ax.set_title(f"Modality importance: top {len(rows)}")
    handles = [Patch(color=_colour(d), label=d) for d in dict.fromkeys(r.domain for r in rows)]
    ax.legend(handles=handles, title="domain", loc="lower right", fontsize=8)
    ax.set_xlim(left=0)
    ax.grid(axis="x", alpha=0.3)
    return render(fig)


def tsne_figure(layout: LatentMap) -> bytes:
    """Paper Fig. 1: every (subject, modality) point, coloured by domain, each modality's
    points labelled at their centre by the modality index (G for gray matter)."""
    fig, ax = subplots(figsize=(7.5, 6.5))
    domains = np.asarray(layout.domain)
    for domain in dict.fromkeys(layout.domain):
        sel = domains == domain
        ax.scatter(layout.xy[sel, 0], layout.xy[sel, 1], s=9, alpha=0.6, color=_colour(domain),
                   label=domain, linewidths=0)
    mods = np.asarray(layout.modality)
    for m in dict.fromkeys(layout.modality):
        cx, cy = layout.xy[mods == m].mean(axis=0)
        tag = m[3:].lstrip("0") if m.startswith("ICN") else m[:1]
        ax.annotate(tag, (cx, cy), fontsize=7, ha="center", va="center", weight="bold",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.7, "lw": 0})
    ax.set_title(f"t-SNE of the posterior means ({len(set(layout.participant_id))} subjects x "
                 f"{len(set(layout.modality))} modalities; {layout.backend}, perplexity "
                 f"{layout.perplexity:.3g})", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(title="domain", fontsize=8, markerscale=2, loc="best")
    return render(fig)


def auc_figure(rows: Sequence[dict]) -> bytes:
    """Table I as a figure: each method's mean ROC-AUC against latent dim, 95% CI bars."""
    by: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by[row["method"]].append(row)
    dims = sorted({int(r["latent_dim"]) for r in rows})
    pos = {d: i for i, d in enumerate(dims)}
    fig, ax = subplots(figsize=(7, 4.2))
    width = 0.8 / max(1, len(by))
    for k, (method, items) in enumerate(sorted(by.items())):
        items = sorted(items, key=lambda r: r["latent_dim"])
        x = np.array([pos[int(r["latent_dim"])] for r in items]) + (k - (len(by) - 1) / 2) * width
        mean = np.array([_num(r.get("roc_auc_mean")) for r in items])
        lo = np.array([_num(r.get("ci_low")) for r in items])
        hi = np.array([_num(r.get("ci_high")) for r in items])
        err = np.vstack([np.where(np.isnan(lo), 0, mean - lo),
                         np.where(np.isnan(hi), 0, hi - mean)])
        ax.errorbar(x, mean, yerr=np.nan_to_num(err), fmt="o-" if len(dims) > 1 else "o",
                    capsize=3, color=method_colour(method), label=method)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(dims)), [str(d) for d in dims])
    ax.set_xlabel("latent dim (components for PCA)")
    ax.set_ylabel("ROC-AUC (mean, 95% CI)")
    ax.set_ylim(0, 1.02)
    ax.set_title("Table I: ROC-AUC by method and latent dim")
    # beside the axes, never over a method's CI bar
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return render(fig)


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def seed_figure(results: Sequence[FoldResult], latent_dim: int) -> bytes:
    """Seed robustness: each method's mean ROC-AUC per seed (dots) and over seeds (bar)."""
    per: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        if r.latent_dim == latent_dim and r.available and math.isfinite(r.roc_auc):
            per[r.method][r.seed].append(r.roc_auc)
    fig, ax = subplots(figsize=(7, 4.2))
    methods = sorted(per)
    for i, method in enumerate(methods):
        seeds = sorted(per[method])
        means = np.array([np.mean(per[method][s]) for s in seeds])
        ax.bar(i, means.mean(), yerr=means.std() if len(means) > 1 else None, capsize=4,
               color=method_colour(method), alpha=0.35, edgecolor="black", lw=0.5)
        jitter = np.linspace(-0.2, 0.2, len(seeds)) if len(seeds) > 1 else np.zeros(1)
        ax.scatter(i + jitter, means, color=method_colour(method), zorder=3, s=22)
        for x, m, s in zip(i + jitter, means, seeds, strict=True):
            ax.annotate(str(s), (x, m), textcoords="offset points", xytext=(0, 5), ha="center",
                        fontsize=7)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean ROC-AUC over folds")
    ax.set_title(f"Seed robustness at latent dim {latent_dim} (dots: seeds; bars: mean ± std)")
    return render(fig)


def training_figure(results: Sequence[FoldResult], explained: FoldResult | None) -> bytes:
    """Training curves of every VAE fold of the explained setting (the explained fold bold):
    loss, KL per volume, active units and both reconstruction R^2 per epoch."""
    panels = (("loss (negative ELBO per volume)", ("train_loss", "val_loss")),
              ("KL per volume (nats)", ("train_kl", "val_kl")),
              ("active units", ("train_active_units", "val_active_units")),
              ("reconstruction R² (vs modality mean levels)", ("train_r2", "val_r2")),
              ("subject R² (vs modality mean maps)", ("train_r2_subject", "val_r2_subject")))
    fig, axes = subplots(2, 3, figsize=(14, 6.5))
    axes.ravel()[-1].set_visible(False)
    for ax, (title, keys) in zip(axes.ravel(), panels, strict=False):
        for r in results:
            if r.training is None or not r.training.history:
                continue
            bold = explained is not None and r is explained
            epochs = [h.get("epoch", i + 1) for i, h in enumerate(r.training.history)]
            for key, style in zip(keys, ("-", "--"), strict=True):
                vals = [_num(h.get(key)) for h in r.training.history]
                if all(math.isnan(v) for v in vals):
                    continue
                label = f"{key.split('_')[0]} (fold {r.fold})" if bold else None
                ax.plot(epochs, vals, style, color="#d62728" if bold else "#90a4ae",
                        lw=2 if bold else 0.9, alpha=1 if bold else 0.7, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("VAE training (red: the explained fold; grey: the other folds; dashed: "
                 "validation)", fontsize=10)
    fig.tight_layout()
    return render(fig)


# --------------------------------------------------------------------------- subject figures
def _slices(vol: np.ndarray, centre: Sequence[int]) -> list[np.ndarray]:
    i, j, k = centre
    return [np.rot90(vol[:, :, k]), np.rot90(vol[:, j, :]), np.rot90(vol[i, :, :])]


def subject_figure(inputs: np.ndarray, recons: np.ndarray, names: Sequence[str],
                   correlations: Sequence[float]) -> bytes:
    """Each modality's input beside its reconstruction: axial, coronal and sagittal slices
    through the input's peak voxel (the same slices for both)."""
    n = len(names)
    fig, axes = subplots(n, 6, figsize=(11, 1.9 * n + 0.4), squeeze=False)
    for row, (x, xr, name, r) in enumerate(zip(inputs, recons, names, correlations,
                                               strict=True)):
        centre = np.unravel_index(int(np.argmax(np.abs(x))), x.shape)
        vmax = float(max(np.abs(x).max(), np.abs(xr).max(), 1e-6))
        for col, sl in enumerate(_slices(x, centre) + _slices(xr, centre)):
            ax = axes[row, col]
            ax.imshow(sl, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(name, fontsize=8)
        axes[row, 3].set_ylabel(f"r = {r:.2f}", fontsize=8)
    for col, title in enumerate(("input: axial", "coronal", "sagittal",
                                 "reconstruction: axial", "coronal", "sagittal")):
        axes[0, col].set_title(title, fontsize=9)
    fig.tight_layout()
    return render(fig)


def latents_figure(mu: np.ndarray, modalities: Sequence[str]) -> bytes:
    """A subject's posterior means: modalities x latent dimensions."""
    mu = np.asarray(mu)
    fig, ax = subplots(figsize=(min(11, 2.5 + 0.12 * mu.shape[1]),
                                    min(9, 1.2 + 0.16 * mu.shape[0])))
    vmax = float(max(np.abs(mu).max(), 1e-6))
    im = ax.imshow(mu, aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                   interpolation="nearest")
    step = max(1, len(modalities) // 30)
    ax.set_yticks(range(0, len(modalities), step), list(modalities)[::step], fontsize=7)
    ax.set_xlabel("latent dimension")
    ax.set_title("posterior means (mu)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03)
    return render(fig)
