"""Brain-map figures with nilearn (paper Fig. 3): stat maps and glass brains.

For each of the top modalities: the input-space difference and the decoded difference (ortho
slices through the input difference's peak) and the decoded difference as a glass brain; then
the combined top-5 map. nilearn draws on the MNI template it ships (no download).
"""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure

from vaefusion.interpret.maps import PERCENTILE, GroupMaps
from vaefusion.reports.figures import render

#: Values below this fraction of a map's maximum |value| are not coloured.
DISPLAY_THRESHOLD = 0.25


#: Column widths of a row: input map, its colour bar, a gap, decoded map, its colour bar, a gap,
#: glass brain. The colour bars get columns of their own, so their tick labels never reach
#: into the slices.
COLUMNS = (4.2, 0.12, 0.8, 4.2, 0.12, 0.8, 3.6)
#: Width and row height in inches (three ortho slices of the 53x63x52 grid in 4.6 in).
WIDTH = 15.0
ROW_HEIGHT = 2.8
#: The cut goes through the peak of the map smoothed by this many voxels (sigma), at least
#: this many voxels inside the brain mask: a noisy voxel at the brain's edge would put a cut
#: where the slice is a thin sliver.
CUT_SMOOTHING = 1.5
CUT_INSET = 4
#: ... and within these percentiles of the brain's extent along each axis (no grazing slice).
CUT_RANGE = (15, 85)
CMAP = "RdBu_r"


def _colourbar(fig: Figure, cax, vmax: float) -> None:
    """A symmetric colour bar for a stat map drawn with ``vmax``, in its own axes ``cax``."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(ScalarMappable(Normalize(-vmax, vmax), CMAP), cax=cax)
    bar.ax.tick_params(labelsize=7)
    bar.formatter.set_powerlimits((-2, 3))  # 1e-06 as "1 x 10^-6" above the bar, not per tick
    bar.update_ticks()


def _cut(vol: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> tuple[float, float, float]:
    """Ortho cut through the peak of ``vol`` (smoothed) well inside ``mask``, so that every
    slice cuts through the brain rather than grazing its edge; the mask's centre when the map
    is flat there."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(mask, iterations=CUT_INSET)
    if inner.sum() < 27:
        inner = mask
    smooth = ndimage.gaussian_filter(np.abs(np.nan_to_num(vol)).astype(np.float32),
                                     CUT_SMOOTHING)
    inside = np.where(inner, smooth, 0)
    voxels = np.argwhere(inner) if np.any(inner) else np.argwhere(np.ones(vol.shape, bool))
    if not np.any(inside):
        ijk = voxels.mean(axis=0)
    else:  # the peak, kept within the central part of the brain along each axis
        peak = np.array(np.unravel_index(int(np.argmax(inside)), vol.shape), dtype=float)
        lo, hi = np.percentile(voxels, CUT_RANGE, axis=0)
        ijk = np.clip(peak, lo, hi)
    return tuple(float(v) for v in (affine @ np.array([*ijk, 1.0]))[:3])  # type: ignore


def maps_figure(maps: GroupMaps, modalities: list[str], labels: dict[str, str]) -> bytes:
    """Rows: each modality in ``modalities`` (input difference | decoded difference | glass
    brain), then the combined top-5 map; ``labels`` names each modality in the titles."""
    from nilearn import plotting

    rows = [m for m in modalities if m in maps.modalities]
    n = len(rows) + (maps.top_map is not None)
    fig = Figure(figsize=(WIDTH, ROW_HEIGHT * n))
    grid = fig.add_gridspec(n, len(COLUMNS), width_ratios=COLUMNS, wspace=0.0, hspace=0.25)
    axes = [[fig.add_subplot(grid[r, c]) for c in range(len(COLUMNS))] for r in range(n)]
    for row in axes:
        for c in (2, 5):
            row[c].set_axis_off()
    diff = maps.decoded_difference
    corr = maps.correlations
    what = f"{maps.negative} − {maps.positive}"
    with warnings.catch_warnings():  # nilearn warns about tiny or empty maps; the figure shows it
        warnings.simplefilter("ignore")
        for row, m in enumerate(rows):
            i = maps.modalities.index(m)
            # both columns cut through the input difference's peak: where the real effect is
            cut = _cut(maps.input_difference[i], maps.mask, maps.affine)
            for col, (vol, title) in ((0, (maps.input_difference[i], "input")),
                                      (3, (diff[i], "decoded"))):
                vmax = float(max(np.abs(vol[maps.mask]).max(), 1e-6))
                plotting.plot_stat_map(
                    nib.Nifti1Image(vol.astype(np.float32), maps.affine), axes=axes[row][col],
                    cut_coords=cut, vmax=vmax, threshold=DISPLAY_THRESHOLD * vmax,
                    draw_cross=False, annotate=False, colorbar=False, cmap=CMAP,
                    title=f"{m} {title} {what}")
                _colourbar(fig, axes[row][col + 1], vmax)
            vmax = float(max(np.abs(diff[i][maps.mask]).max(), 1e-6))
            plotting.plot_glass_brain(
                nib.Nifti1Image(diff[i].astype(np.float32), maps.affine), axes=axes[row][6],
                plot_abs=False, vmax=vmax, threshold=DISPLAY_THRESHOLD * vmax,
                colorbar=False, cmap=CMAP, title=f"{m} decoded (r = {corr[i]:.2f})")
        if maps.top_map is not None:
            last = axes[-1]
            img = nib.Nifti1Image(maps.top_map.astype(np.float32), maps.affine)
            vmax = float(max(np.abs(maps.top_map).max(), 1e-6))
            plotting.plot_stat_map(img, axes=last[0],
                                   cut_coords=_cut(maps.top_map, maps.mask, maps.affine),
                                   vmax=vmax, draw_cross=False, annotate=False, colorbar=False,
                                   cmap=CMAP, title=f"top-{len(maps.top_modalities)} map")
            _colourbar(fig, last[1], vmax)
            # the sum is 0 outside the kept voxels: a tiny threshold leaves them uncoloured
            plotting.plot_glass_brain(img, axes=last[6], plot_abs=False, vmax=vmax,
                                      threshold=1e-6 * vmax, colorbar=False, cmap=CMAP,
                                      title=f"top-{len(maps.top_modalities)} map")
            last[4].set_axis_off()
            last[3].set_axis_off()
            last[3].text(0.02, 0.5, f"Top-{len(maps.top_modalities)} map: the decoded "
                         f"{what} of\n" + "\n".join(
                f"{k + 1}. {labels.get(m, m)}" for k, m in enumerate(maps.top_modalities))
                + f"\neach kept where |value| reaches its {PERCENTILE:g}th"
                "\npercentile, sign kept, summed",
                va="center", fontsize=9)
    return render(fig)
