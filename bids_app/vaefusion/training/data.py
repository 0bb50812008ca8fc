"""Training data from the per-subject cache: batches of whole subjects, flattened to volumes.

One dataset item is one *whole* subject, ``(n_modalities, 1, X, Y, Z)`` float32 at the network
grid (area-downsampled per ``--downsample``); a batch of ``batch_subjects`` subjects is their
volumes concatenated, ``(sum of n_modalities, 1, X, Y, Z)``, because the shared VAE treats every
volume as an independent sample.

Two ways to serve batches, chosen automatically:

* **resident**: when the whole set fits a memory budget (half of the available RAM, or 40 % of
  the free GPU memory on CUDA), every volume is loaded once into one tensor on the device and a
  batch is an ``index_select``: no disk, no host-device copies, no workers.
* **streamed**: otherwise (or with ``augment``), a ``DataLoader`` reads subjects from the cache
  with worker processes, pinned memory on CUDA and seeded workers.

Both give bit-identical batches for the same ``(seed, epoch)``: the subject order of an epoch is
a pure function of the two (so a resumed run sees the same order), and the TorchIO augmentation
of an item is seeded by ``(seed, epoch, subject)``, independent of the worker that draws it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vaefusion.config import RAM_FRACTION, available_ram_bytes
from vaefusion.errors import DataError, MissingInputError
from vaefusion.inputs.cache import load_stack, read_meta
from vaefusion.model.network import Grid, downsample_volumes, downsampled_grid


# --------------------------------------------------------------------------- seeding helpers
def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """Subject order of one epoch: a pure function of ``(seed, epoch)`` (resume-safe)."""
    if not shuffle:
        return list(range(n))
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


def item_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one subject's augmentation in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed numpy and ``random`` from the worker's torch seed.

    The DataLoader derives each worker's torch seed from its seeded generator; numpy and the
    ``random`` module are not covered by that, so third-party code in a worker stays seeded.
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def default_augmentation() -> object:
    """Small TorchIO augmentation of one volume at the network grid.

    RandomAffine (scale +-5 %, rotation +-5 degrees, translation +-2 voxels, zero fill, as the
    maps' background is zero) then RandomNoise (std up to 0.02 of the [-1, 1] range).
    """
    import torchio as tio  # imported lazily: it is heavy and only needed with --augment

    return tio.Compose([
        tio.RandomAffine(scales=0.05, degrees=5, translation=2, default_pad_value=0.0),
        tio.RandomNoise(std=(0.0, 0.02)),
    ])


# --------------------------------------------------------------------------- dataset
class SubjectDataset(Dataset):
    """Whole subjects from the cache, at the network grid.

    ``dataset[i]`` or ``dataset[(epoch, i)]`` is subject ``i`` as ``(n_mod, 1, X, Y, Z)``
    float32; the epoch only matters with ``augment`` (it seeds that subject's transforms).
    """

    def __init__(self, paths: Sequence[Path], downsample: int = 1, augment: bool = False,
                 seed: int = 0) -> None:
        if not paths:
            raise DataError("no cached subjects to train on; run the participant level first.")
        self.paths = [Path(p) for p in paths]
        missing = [p for p in self.paths if not p.is_file()]
        if missing:
            raise MissingInputError(f"cached subject {missing[0]} is missing; re-run the "
                                    f"participant level for it.")
        self.downsample = int(downsample)
        self.augment = bool(augment)
        self.seed = int(seed)
        metas = [read_meta(p) for p in self.paths]
        shapes = {tuple(m.shape) for m in metas}
        if len(shapes) != 1:
            raise DataError(f"cached subjects have different grids {sorted(shapes)}; "
                            f"re-run the participant level so all share one grid.")
        self.source_grid: Grid = tuple(shapes.pop())  # type: ignore[assignment]
        self.grid: Grid = downsampled_grid(self.source_grid, self.downsample)
        self.modalities: list[list[str]] = [list(m.modalities) for m in metas]
        self.subjects: list[str] = [m.key for m in metas]
        self._transform = default_augmentation() if self.augment else None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def n_volumes(self) -> int:
        return sum(len(m) for m in self.modalities)

    def nbytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Size of all volumes at the network grid in ``dtype``."""
        item = torch.empty((), dtype=dtype).element_size()
        return self.n_volumes * int(np.prod(self.grid)) * item

    def load(self, index: int) -> torch.Tensor:
        """Subject ``index`` at the network grid, without augmentation."""
        stack = load_stack(self.paths[index])
        if stack.shape[0] != len(self.modalities[index]):
            raise DataError(f"{self.paths[index]} holds {stack.shape[0]} volumes but its sidecar "
                            f"lists {len(self.modalities[index])}; re-run the participant level.")
        x = torch.from_numpy(np.asarray(stack, dtype=np.float32)).unsqueeze(1)
        return downsample_volumes(x, self.downsample)

    def __getitem__(self, item: int | tuple[int, int]) -> torch.Tensor:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        x = self.load(index)
        if self._transform is None:
            return x
        # fork the RNG so augmentation in the main process leaves the training RNG alone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, epoch, index))
            vols = [self._transform(v) for v in x]  # each volume is an independent sample
        return torch.stack(vols).clamp_(-1.0, 1.0)


def cat_volumes(items: list[torch.Tensor]) -> torch.Tensor:
    """Collate whole subjects into one batch of volumes."""
    return torch.cat(items, dim=0)


# --------------------------------------------------------------------------- batches
class SubjectBatches:
    """Epochs of batches of ``batch_subjects`` whole subjects, as volumes on ``device``.

    ``resident=None`` decides from the memory budget (always streamed with ``augment``, whose
    random transforms run in worker processes). ``num_workers=None`` picks 0 on CPU without
    augmentation (workers would compete with the compute threads for the same cores), else up
    to 4.
    """

    def __init__(self, paths: Sequence[Path], *, device: torch.device | str = "cpu",
                 downsample: int = 1, batch_subjects: int = 1, augment: bool = False,
                 seed: int = 0, resident: bool | None = None, num_workers: int | None = None,
                 budget_bytes: int | None = None) -> None:
        self.device = torch.device(device)
        self.dataset = SubjectDataset(paths, downsample, augment, seed)
        self.batch_subjects = max(1, int(batch_subjects))
        self.seed = int(seed)
        self.grid = self.dataset.grid
        # the cache is float16: keep it so at full resolution (exact, half the memory);
        # downsampled volumes are averages and stay float32
        self._dtype = torch.float16 if self.dataset.downsample == 1 else torch.float32
        if resident is None:
            # without a budget (library use), half of the available host RAM
            budget = (int(RAM_FRACTION * available_ram_bytes()) if budget_bytes is None
                      else budget_bytes)
            resident = not augment and self.resident_bytes <= budget
        self.resident = bool(resident)
        if num_workers is None:
            cpus = os.cpu_count() or 1
            num_workers = 0 if (self.device.type == "cpu" and not augment) else min(4, cpus - 1)
        self.num_workers = max(0, int(num_workers))
        self._volumes: torch.Tensor | None = None
        self._offsets: list[int] = []
        if self.resident:
            self._load_resident()

    @property
    def n_subjects(self) -> int:
        return len(self.dataset)

    @property
    def n_volumes(self) -> int:
        return self.dataset.n_volumes

    @property
    def resident_bytes(self) -> int:
        """Memory the whole set takes when resident (float16 at full grid, else float32)."""
        return self.dataset.nbytes(self._dtype)

    def __len__(self) -> int:
        """Batches per epoch."""
        return -(-self.n_subjects // self.batch_subjects)

    def _load_resident(self) -> None:
        ds = self.dataset
        vols = torch.empty((ds.n_volumes, 1, *ds.grid), dtype=self._dtype, device=self.device)
        offset = 0
        for i in range(len(ds)):
            x = ds.load(i)
            vols[offset:offset + x.shape[0]].copy_(x)
            self._offsets.append(offset)
            offset += x.shape[0]
        self._offsets.append(offset)
        self._volumes = vols

    def batch_lists(self, epoch: int, shuffle: bool = True) -> list[list[int]]:
        """The subject indices of each batch of :meth:`epoch`, in order."""
        order = epoch_order(self.n_subjects, self.seed, epoch, shuffle)
        b = self.batch_subjects
        return [order[i:i + b] for i in range(0, len(order), b)]

    def subject_volumes(self, index: int) -> torch.Tensor:
        """Subject ``index`` as float32 volumes on the device, without augmentation."""
        if self.resident:
            assert self._volumes is not None
            lo, hi = self._offsets[index], self._offsets[index + 1]
            return self._volumes[lo:hi].float()
        return self.dataset.load(index).to(self.device)

    def epoch(self, epoch: int, shuffle: bool = True) -> Iterator[torch.Tensor]:
        """Yield the batches of one epoch, float32 volumes on the device."""
        return self.load_batches(self.batch_lists(epoch, shuffle), epoch)

    def load_batches(self, batches: list[list[int]], epoch: int = 0
                     ) -> Iterator[torch.Tensor]:
        """Yield the volumes of each list of subjects (non-empty lists; ``epoch`` seeds the
        augmentation), float32 on the device: one rank's shard of each batch in
        :mod:`vaefusion.training.distributed`."""
        if self.resident:
            assert self._volumes is not None
            for subjects in batches:
                idx = torch.cat([torch.arange(self._offsets[s], self._offsets[s + 1])
                                 for s in subjects]).to(self.device)
                yield self._volumes.index_select(0, idx).float()
            return
        sampler = [[(epoch, s) for s in subjects] for subjects in batches]
        loader = DataLoader(
            self.dataset, batch_sampler=sampler, collate_fn=cat_volumes,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            worker_init_fn=seed_worker if self.num_workers else None,
            generator=torch.Generator().manual_seed(self.seed + epoch),
            prefetch_factor=2 if self.num_workers else None,
        )
        for batch in loader:
            yield batch.to(self.device, non_blocking=True)

