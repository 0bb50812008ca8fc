"""Streaming training data larger than memory: one packed, memory-mapped float16 cache.

The per-subject cache (``WORK_DIR/cache/sub-*.npy``) is packed once, at the network grid
(after ``--downsample``), into one file of all volumes, float16 ``(V, X, Y, Z)``, plus the
offsets of each subject's volumes. A subject is then one contiguous read of a memory-mapped
file: DataLoader workers copy it out of the mapping, drop the mapped pages
(``madvise(MADV_DONTNEED)``, the page cache keeps them for the next epoch if RAM allows),
collate whole subjects, pin the batch on CUDA and send it as float16, so the resident memory
of the process and its workers stays flat in the number of subjects; only the offsets grow.

Batches are the same subjects in the same order as :class:`vaefusion.training.data.
SubjectBatches` (``batch_lists``), volumes converted to float32 on the device.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vaefusion.inputs.cache import load_stack
from vaefusion.model.network import downsample_volumes, downsampled_grid

VOLUMES = "volumes.f16"
INDEX = "index.json"
PAGE = mmap.PAGESIZE
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def pack_cache(paths: Sequence[Path], downsample: int, out_dir: Path) -> Path:
    """Write the packed cache of ``paths`` at ``--downsample`` into ``out_dir``; returns it.

    The index is written last (its presence marks a complete pack)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    offsets, grid = [0], None
    with open(out_dir / VOLUMES, "wb") as fh:
        for path in paths:
            x = torch.from_numpy(np.asarray(load_stack(Path(path)), dtype=np.float32))
            x = downsample_volumes(x.unsqueeze(1), downsample)[:, 0]
            grid = tuple(x.shape[1:])
            fh.write(x.to(torch.float16).numpy().tobytes())
            offsets.append(offsets[-1] + x.shape[0])
    write_index(out_dir, offsets, grid or (0, 0, 0), [Path(p).stem for p in paths])
    return out_dir


def write_index(out_dir: Path, offsets: Sequence[int], grid: Sequence[int],
                subjects: Sequence[str]) -> None:
    """The packed cache's index: subjects, their volume offsets and the grid."""
    tmp = Path(out_dir) / (INDEX + ".part")
    tmp.write_text(json.dumps({"grid": list(grid), "offsets": list(map(int, offsets)),
                               "subjects": list(subjects)}))
    os.replace(tmp, Path(out_dir) / INDEX)


class PackedSubjects(Dataset):
    """Whole subjects of a packed cache, ``(n_mod, 1, X, Y, Z)`` float16, read through a
    memory map opened lazily in each worker."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        index = json.loads((self.folder / INDEX).read_text())
        self.grid = tuple(index["grid"])
        self.offsets = np.asarray(index["offsets"], dtype=np.int64)
        self.subjects = list(index["subjects"])
        self._voxels = int(np.prod(self.grid))
        self._map: mmap.mmap | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getstate__(self) -> dict:  # workers open their own mapping
        return {**self.__dict__, "_map": None}

    def _mapping(self) -> mmap.mmap:
        if self._map is None:
            with open(self.folder / VOLUMES, "rb") as fh:
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def __getitem__(self, index: int) -> torch.Tensor:
        mm = self._mapping()
        lo, hi = int(self.offsets[index]), int(self.offsets[index + 1])
        start, stop = 2 * lo * self._voxels, 2 * hi * self._voxels
        out = np.frombuffer(mm, dtype=np.float16, count=(hi - lo) * self._voxels,
                            offset=start).copy()
        # release the mapped pages: RSS must not grow with the bytes streamed
        first = start - start % PAGE
        mm.madvise(mmap.MADV_DONTNEED, first, stop - first)
        return torch.from_numpy(out).view(hi - lo, 1, *self.grid)


def _cat(items: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(items, dim=0)


def large_buffers_to_os(_worker: int | None = None) -> None:
    """glibc only: serve every allocation above 64 KiB with its own ``mmap``, returned to the
    OS when freed. Measured: with glibc's default (a threshold that rises to the size of the
    last freed block), the multi-MB batch buffers stayed in the heaps and the peak RSS of the
    main process and its workers grew with the subjects streamed (0.4 GB at N=20, 1.8 GB at
    N=1,000); with a fixed threshold it stays at ~0.25 GB."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def stream_batches(data: PackedSubjects, batches: list[list[int]], device: torch.device | str,
                   workers: int = 2, prefetch: int = 4) -> Iterator[torch.Tensor]:
    """Yield each batch's volumes as float32 on ``device``: worker processes read, pinned
    float16 host memory on CUDA, an asynchronous copy, the cast on the device."""
    device = torch.device(device)
    large_buffers_to_os()
    loader = DataLoader(data, batch_sampler=batches, collate_fn=_cat, num_workers=workers,
                        worker_init_fn=large_buffers_to_os, pin_memory=device.type == "cuda",
                        prefetch_factor=prefetch if workers else None,
                        persistent_workers=False)
    for batch in loader:
        yield batch.to(device, non_blocking=True).float()


def packed_grid(grid: Sequence[int], downsample: int) -> tuple[int, ...]:
    """The grid a pack at ``downsample`` holds (the network grid)."""
    return tuple(downsampled_grid(grid, downsample))
