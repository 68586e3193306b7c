"""The loader and a small /dev/shm (Docker's and Kubernetes' default is 64 MB): chunks shrink to fit, and where not
even one batch per worker fits, the run stops at once with a message saying what to give the container."""
from __future__ import annotations

import pytest

from core.errors import LaunchError
from dataset.info import SplitInfo
from dataset.manifest import DatasetSpec, ImageSpec
from training import loader as loader_module
from training.collation import task_for
from training.loader import Loader
from training.shards import plan_shard

SPEC = DatasetSpec("image", ["a", "b"], image=ImageSpec(64, 3, "raw", [64, 64, 3]))  # 12 KiB an image
SPLIT = SplitInfo("train", "file:///nowhere/train", 4096, (1024,) * 4, tuple((f"/nowhere/{g}.parquet", 0)
                                                                              for g in range(4)))


def loader(workers: int) -> Loader:
    return Loader({"train": SPLIT}, SPEC, task_for(SPEC), workers=workers, seed=1, shuffle_rows=1024, prefetch=4)


def test_chunks_shrink_to_the_shared_memory_there_is(monkeypatch):
    monkeypatch.setattr(loader_module, "shm_free_bytes", lambda path=loader_module.SHM: 2**40)
    roomy = loader(2).chunk_for(16, 64)
    monkeypatch.setattr(loader_module, "shm_free_bytes", lambda path=loader_module.SHM: 64 * 2**20)
    tight = loader(2).chunk_for(16, 64)
    batch = 64 * 64 * 64 * 3
    assert roomy == 16 and 1 <= tight < roomy
    assert tight * batch * 2 * loader(2)._in_flight <= 64 * 2**20 * loader_module.SHM_SHARE


def test_too_little_shared_memory_for_one_batch_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(loader_module, "shm_free_bytes", lambda path=loader_module.SHM: 8 * 2**20)
    source = loader(4)
    with pytest.raises(LaunchError, match=r"/dev/shm has 8 MiB free; .* --shm-size=2g.* train\.loader_workers"):
        next(source.batches(SPLIT, plan_shard(SPLIT.row_group_sizes, 0, 1), batch_size=256, epoch=0, training=True))
    assert source.active_workers == 0  # refused before any worker process started


def test_batches_made_in_the_training_process_need_no_shared_memory(monkeypatch):
    monkeypatch.setattr(loader_module, "shm_free_bytes", lambda path=loader_module.SHM: 0)
    assert loader(0).chunk_for(16, 64) == 16
