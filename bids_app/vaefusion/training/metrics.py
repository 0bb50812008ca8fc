"""What one pass over a data set learned, so that posterior collapse is visible.

Per pass (an epoch's training or its validation) :class:`PassAccumulator` sums, in float64 on
the device (one host sync per pass), and :class:`PassStats` reports per volume:

* ``loss``, ``recon``, ``kl``: the negative ELBO and its terms (true NLL, constants included);
* ``kl_dims``: the KL of each latent dimension (they sum to ``kl``);
* ``active_units`` (Burda et al. 2016): latent dimensions whose posterior mean varies across
  the pass's volumes with variance above :data:`ACTIVE_UNIT_VARIANCE`. Every volume is a
  sample, so a dimension that only tells modalities apart is active too; ``r2_subject`` is the
  measure of subject-level information;
* ``r2``: reconstruction R^2 against the per-modality mean *intensity* of the training subjects
  (one number per modality), ``1 - SSE_m / sum (x - mean_m)^2`` per modality ``m``, then
  averaged over the modalities (each weighs the same, so the one dense GMV volume cannot hide
  ICN maps drawn as zeros): the share of each volume's voxel variance the reconstruction
  explains. A decoder that draws zeros or one blurred map for every modality stays near or
  below 0;
* ``r2_subject``: the stricter R^2 against the training subjects' mean *map* of the modality,
  ``1 - SSE_m / sum ||x - meanmap_m||^2``, averaged over modalities alike: above 0 only when
  the reconstruction carries subject-specific detail beyond the modality's group template.
  Its ceiling is the share of between-subject variation that is not measurement noise: on
  the simulator's calibrated data the noiseless truth reaches about 0.13 at 12 mm (measured by
  ``benchmarks/r2_ceiling.py``, see docs/simulation.md); the linear twin (``pca-shared`` at
  the same latent size, :mod:`vaefusion.training.twin`) is the reference a VAE should reach;
* ``sigma``: the decoder's standard deviation used (batch-volume weighted RMS; 1 for ``unit``).
* ``within_units``: latent dimensions whose posterior mean varies across *subjects within a
  modality* (variance above :data:`ACTIVE_UNIT_VARIANCE`, pooled over modalities). Modality
  identity alone makes many ``active_units`` active (a decoder on the zeros plateau still
  needs 53 codes); only within-modality units carry subject-level information;
* ``r2_modality``, ``r2_subject_modality``: the per-modality values behind ``r2`` and
  ``r2_subject`` (in the order of ``ModalityMeans.names``);
* ``dead_head``: per modality, the share of the decoder head's channels that are silent
  (activation <= 0 at every voxel of every volume of that modality in the pass): with the
  paper's ReLU head a fully silent head draws the modality as exactly zero.

Training-pass values are running means over the epoch (sampled z, weights changing as they
train); validation values use the end-of-epoch model and decode the posterior means. Nothing
here draws random numbers, so the metrics leave the training RNG (and determinism) alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import torch

from vaefusion.model.likelihood import LOG_2PI, LossTerms, kl_per_dim
from vaefusion.training.data import SubjectBatches

#: Burda et al. (2016): a unit is active when Var_x(E_q[z_d | x]) exceeds this.
ACTIVE_UNIT_VARIANCE: float = 0.01


class PassStats(NamedTuple):
    """Means per volume over one pass (see the module doc) and the number of volumes."""

    loss: float
    recon: float
    kl: float
    volumes: int
    sigma: float = 1.0
    r2: float = math.nan
    active_units: int = 0
    kl_dims: tuple[float, ...] = ()
    r2_subject: float = math.nan
    within_units: int = 0
    r2_modality: tuple[float, ...] = ()
    r2_subject_modality: tuple[float, ...] = ()
    dead_head: tuple[float, ...] = ()


@dataclass(frozen=True)
class ModalityMeans:
    """The mean volume of each modality over the training subjects (the R^2 baselines).

    ``means`` is ``(n_modalities + 1, 1, X, Y, Z)`` on the device; its last row is zero, the
    baseline of a modality no training subject has. A map's mean over voxels is the
    modality's mean intensity, the baseline of ``r2``.
    """

    names: tuple[str, ...]
    means: torch.Tensor

    @cached_property
    def levels(self) -> torch.Tensor:
        """Each row's mean over voxels, ``(n_modalities + 1, 1, 1, 1, 1)``: computed once, not
        in every chunk of every pass."""
        return self.means.double().mean(dim=(1, 2, 3, 4), keepdim=True)

    def index(self, modalities: Sequence[str]) -> torch.Tensor:
        """Rows of :attr:`means` for these volumes' modalities (the zero row when unknown)."""
        rows = {n: i for i, n in enumerate(self.names)}
        idx = [rows.get(m, len(self.names)) for m in modalities]
        return torch.tensor(idx, dtype=torch.long, device=self.means.device)


def modality_names(data: SubjectBatches) -> list[str]:
    """``data``'s modalities in order of first appearance (the rows of :class:`ModalityMeans`
    and of a voxelwise network's statistics)."""
    names: list[str] = []
    for mods in data.dataset.modalities:
        names.extend(m for m in mods if m not in names)
    return names


def _modality_average(data: SubjectBatches, names: Sequence[str],
                      value: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                      ) -> torch.Tensor:
    """Per modality row (``names``, plus a zero row for unknown ones), the mean over ``data``'s
    subjects of ``value(volumes, rows)`` (default: the volumes), from float64 sums."""
    rows = {n: i for i, n in enumerate(names)}
    sums = torch.zeros((len(names) + 1, 1, *data.grid), dtype=torch.float64, device=data.device)
    counts = torch.zeros(len(names) + 1, dtype=torch.float64, device=data.device)
    for s, mods in enumerate(data.dataset.modalities):
        idx = torch.tensor([rows[m] for m in mods], dtype=torch.long, device=data.device)
        vols = data.subject_volumes(s).double()
        sums.index_add_(0, idx, vols if value is None else value(vols, idx))
        counts.index_add_(0, idx, torch.ones(len(mods), dtype=torch.float64,
                                              device=data.device))
    return sums / counts.clamp_min(1.0).view(-1, 1, 1, 1, 1)


def modality_means(data: SubjectBatches) -> ModalityMeans:
    """Per-modality mean volumes of ``data``'s subjects (unaugmented, float64 sums)."""
    names = modality_names(data)
    return ModalityMeans(tuple(names), _modality_average(data, names).float())


def modality_sds(data: SubjectBatches, baseline: ModalityMeans) -> torch.Tensor:
    """Per-modality voxelwise SDs of ``data``'s subjects around ``baseline``'s means,
    ``(n_modalities, 1, X, Y, Z)`` (float64 sums; the voxelwise scaling's statistics)."""
    means = baseline.means.to(data.device).double()
    var = _modality_average(data, baseline.names, lambda v, idx: (v - means[idx]).pow(2))
    return var[:-1].sqrt().float()


class PassAccumulator:
    """Float64 sums over the batches of one pass; :meth:`result` gives the :class:`PassStats`.

    ``baseline`` (the training subjects' modality means) enables R^2; without it R^2 is NaN.
    """

    def __init__(self, latent_dim: int, n_voxels: int, beta: float, device: torch.device,
                 baseline: ModalityMeans | None = None, box_sse: bool = True) -> None:
        # box_sse: the loss terms' SSE covers the whole box (not only a mask), so R^2 uses it
        self.box_sse = box_sse
        self.n_voxels = int(n_voxels)
        self.beta = float(beta)
        self.baseline = baseline
        f64 = dict(dtype=torch.float64, device=device)
        # nll, kl, sse, sigma2 * volumes
        self.sums = torch.zeros(4, **f64)
        # per baseline row (modality): sse, sst against the mean map, sst against the mean level
        rows = baseline.means.shape[0] if baseline is not None else 1
        self.by_modality = torch.zeros((3, rows), **f64)
        self.mu = torch.zeros(latent_dim, **f64)
        self.mu2 = torch.zeros(latent_dim, **f64)
        # per modality row: count, sum of mu, sum of mu^2 (within-modality units)
        self.mod_n = torch.zeros(rows, **f64)
        self.mod_mu = torch.zeros((rows, latent_dim), **f64)
        self.mod_mu2 = torch.zeros((rows, latent_dim), **f64)
        # per modality row: volumes seen, and per head channel whether it ever fired
        self.head_fired: torch.Tensor | None = None
        self.kl_dims = torch.zeros(latent_dim, **f64)
        self.n = 0

    def add(self, x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor,
            logvar: torch.Tensor, terms: LossTerms, rows: torch.Tensor | None) -> None:
        """One chunk: its inputs, outputs, loss terms and baseline rows (``ModalityMeans``)."""
        mu, logvar = mu.detach().double(), logvar.detach().double()
        self.mu += mu.sum(0)
        self.mu2 += mu.pow(2).sum(0)
        # in float64, so that the KL is the sum of the per-dimension KLs to the last digit
        kl_dims = kl_per_dim(mu, logvar).sum(0)
        self.kl_dims += kl_dims
        sse_v = terms.sse.double()
        sse = sse_v.sum()
        b = x.shape[0]
        s2 = terms.sigma2.detach().double().expand(b)  # one per volume (shared: repeated)
        # the NLL from the SSE in float64, constants included (see model.likelihood)
        nll = (0.5 * self.n_voxels * (LOG_2PI + torch.log(s2)) + sse_v / (2.0 * s2)).sum()
        if self.baseline is not None and rows is not None:
            xd = x.detach().double()
            ref = self.baseline.means.index_select(0, rows).double()
            level = self.baseline.levels.index_select(0, rows)
            # R^2 always over the whole box (masked likelihoods count fewer voxels in sse)
            box = (terms.sse.detach().double() if self.box_sse
                   else (recon.detach().double() - xd).pow(2).flatten(1).sum(1))
            per_volume = torch.stack([box,
                                      (xd - ref).pow(2).flatten(1).sum(1),
                                      (xd - level).pow(2).flatten(1).sum(1)])
            self.by_modality.index_add_(1, rows, per_volume)
            self.mod_n.index_add_(0, rows, torch.ones_like(rows, dtype=torch.float64))
            self.mod_mu.index_add_(0, rows, mu)
            self.mod_mu2.index_add_(0, rows, mu.pow(2))
        self.sums += torch.stack([nll, kl_dims.sum(), sse, s2.sum()])
        self.n += b

    def add_head(self, head: torch.Tensor, rows: torch.Tensor) -> None:
        """The decoder head's pre-activations of a chunk ``(n, C, X, Y, Z)``: records, per
        modality row and channel, whether the channel was ever positive."""
        fired = (head.detach().flatten(2) > 0).any(dim=2).double()  # (n, C)
        if self.head_fired is None:
            self.head_fired = torch.zeros((self.mod_n.shape[0], fired.shape[1]),
                                          dtype=torch.float64, device=fired.device)
        self.head_fired.index_add_(0, rows, fired)

    def _modality_mean_r2(self, baseline_row: int) -> float:
        """The mean over modalities of each modality's R^2 against baseline ``1`` (mean maps)
        or ``2`` (mean levels). Each modality weighs the same: pooled sums would let the one
        dense GMV volume hide 53 ICN maps that the decoder draws as zeros."""
        if self.baseline is None:
            return math.nan
        sse, sst = self.by_modality[0], self.by_modality[baseline_row]
        seen = sst > 0
        if not bool(seen.any()):
            return math.nan
        return float((1.0 - sse[seen] / sst[seen]).mean().item())

    def _per_modality_r2(self, baseline_row: int) -> tuple[float, ...]:
        """Each modality's R^2 (NaN for a modality the pass did not see)."""
        if self.baseline is None:
            return ()
        sse, sst = self.by_modality[0], self.by_modality[baseline_row]
        names = len(self.baseline.names)
        r2 = torch.where(sst > 0, 1.0 - sse / sst.clamp_min(1e-30),
                         torch.full_like(sst, math.nan))
        return tuple(r2[:names].tolist())

    def _within_units(self) -> int:
        """Units whose mu varies across subjects within modalities (pooled variance)."""
        seen = self.mod_n > 1
        if not bool(seen.any()):
            return 0
        n = self.mod_n[seen].unsqueeze(1)
        var = self.mod_mu2[seen] / n - (self.mod_mu[seen] / n).pow(2)
        pooled = (var * n).sum(0) / n.sum()
        return int((pooled > ACTIVE_UNIT_VARIANCE).sum().item())

    def _dead_head(self) -> tuple[float, ...]:
        if self.head_fired is None or self.baseline is None:
            return ()
        names = len(self.baseline.names)
        seen = self.mod_n[:names] > 0
        dead = (self.head_fired[:names] == 0).double().mean(dim=1)
        return tuple(torch.where(seen, dead, torch.full_like(dead, math.nan)).tolist())

    def result(self) -> PassStats:
        n = max(self.n, 1)
        nll, kl, _, s2 = (self.sums / n).tolist()
        var = self.mu2 / n - (self.mu / n).pow(2)
        active = int((var > ACTIVE_UNIT_VARIANCE).sum().item())
        r2, r2_subject = (self._modality_mean_r2(i) for i in (2, 1))
        return PassStats(loss=nll + self.beta * kl, recon=nll, kl=kl, volumes=self.n,
                         sigma=math.sqrt(s2), r2=r2, active_units=active,
                         kl_dims=tuple((self.kl_dims / n).tolist()), r2_subject=r2_subject,
                         within_units=self._within_units(),
                         r2_modality=self._per_modality_r2(2),
                         r2_subject_modality=self._per_modality_r2(1),
                         dead_head=self._dead_head())
