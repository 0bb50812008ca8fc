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


def _peak_mm(vol: np.ndarray, affine: np.ndarray) -> tuple[float, float, float]:
    ijk = np.unravel_index(int(np.argmax(np.abs(vol))), vol.shape)
    return tuple(float(v) for v in (affine @ np.array([*ijk, 1.0]))[:3])  # type: ignore


def maps_figure(maps: GroupMaps, modalities: list[str], labels: dict[str, str]) -> bytes:
    """Rows: each modality in ``modalities`` (input difference | decoded difference | glass
    brain), then the combined top-5 map; ``labels`` names each modality in the titles."""
    from nilearn import plotting

    rows = [m for m in modalities if m in maps.modalities]
    n = len(rows) + (maps.top_map is not None)
    fig = Figure(figsize=(15, 2.7 * n))
    axes = fig.subplots(n, 3, squeeze=False, gridspec_kw={"width_ratios": [1.25, 1.25, 1]})
    diff = maps.decoded_difference
    corr = maps.correlations
    what = f"{maps.negative} − {maps.positive}"
    with warnings.catch_warnings():  # nilearn warns about tiny or empty maps; the figure shows it
        warnings.simplefilter("ignore")
        for row, m in enumerate(rows):
            i = maps.modalities.index(m)
            # both columns cut through the input difference's peak: where the real effect is
            cut = _peak_mm(np.where(maps.mask, maps.input_difference[i], 0), maps.affine)
            for col, (vol, title) in enumerate(((maps.input_difference[i], "input"),
                                                (diff[i], "decoded"))):
                vmax = float(max(np.abs(vol[maps.mask]).max(), 1e-6))
                plotting.plot_stat_map(
                    nib.Nifti1Image(vol.astype(np.float32), maps.affine), axes=axes[row, col],
                    cut_coords=cut, vmax=vmax, threshold=DISPLAY_THRESHOLD * vmax,
                    draw_cross=False, annotate=False, colorbar=True,
                    title=f"{m} {title} {what}")
            vmax = float(max(np.abs(diff[i][maps.mask]).max(), 1e-6))
            plotting.plot_glass_brain(
                nib.Nifti1Image(diff[i].astype(np.float32), maps.affine), axes=axes[row, 2],
                plot_abs=False, vmax=vmax, threshold=DISPLAY_THRESHOLD * vmax,
                colorbar=False, cmap="RdBu_r", title=f"{m} decoded (r = {corr[i]:.2f})")
        if maps.top_map is not None:
            img = nib.Nifti1Image(maps.top_map.astype(np.float32), maps.affine)
            vmax = float(max(np.abs(maps.top_map).max(), 1e-6))
            plotting.plot_stat_map(img, axes=axes[-1, 0], cut_coords=_peak_mm(maps.top_map,
                                                                              maps.affine),
                                   vmax=vmax, draw_cross=False, annotate=False,
                                   title=f"top-{len(maps.top_modalities)} map")
            # the sum is 0 outside the kept voxels: a tiny threshold leaves them uncoloured
            plotting.plot_glass_brain(img, axes=axes[-1, 2], plot_abs=False, vmax=vmax,
                                      threshold=1e-6 * vmax, colorbar=False, cmap="RdBu_r",
                                      title=f"top-{len(maps.top_modalities)} map")
            axes[-1, 1].set_axis_off()
            axes[-1, 1].text(0.02, 0.5, f"Top-{len(maps.top_modalities)} map: the decoded "
                             f"{what} of\n" + "\n".join(
                f"{k + 1}. {labels.get(m, m)}" for k, m in enumerate(maps.top_modalities))
                + f"\neach kept above its {PERCENTILE:g}th percentile, summed",
                va="center", fontsize=9)
    return render(fig)
