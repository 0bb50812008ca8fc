"""The streamed data path: a packed, memory-mapped float16 cache read by DataLoader workers."""

from __future__ import annotations

import torch

from test_training import make_cache
from vaefusion.bench.stream import PackedSubjects, pack_cache, stream_batches
from vaefusion.training.data import SubjectBatches


def test_streamed_batches_are_the_resident_batches(tmp_path):
    paths = make_cache(tmp_path / "cache", n_subjects=5)
    for downsample in (1, 2):
        resident = SubjectBatches(paths, downsample=downsample, batch_subjects=2, seed=3,
                                  resident=True)
        packed = PackedSubjects(pack_cache(paths, downsample, tmp_path / f"pack{downsample}"))
        assert len(packed) == 5 and packed.grid == resident.grid
        batches = resident.batch_lists(1)
        for workers in (0, 2):
            got = list(stream_batches(packed, batches, "cpu", workers))
            want = list(resident.epoch(1))
            assert [g.shape for g in got] == [w.shape for w in want]
            for g, w in zip(got, want, strict=True):
                assert g.dtype == torch.float32
                if downsample == 1:  # the cache is float16: exact
                    assert torch.equal(g, w)
                else:  # averages kept in float16 by the pack, float32 when resident
                    torch.testing.assert_close(g, w, atol=1e-3, rtol=0)
