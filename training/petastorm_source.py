"""The trainer's batches from a committed bigtrain dataset (``training.sources.BatchSource``): the dataset's
manifest and row groups (``dataset.info``), read and batched by the loader's worker processes
(``training.loader``) in the order of ``training.order``, collated for the dataset's kind
(``training.collation``)."""
from __future__ import annotations

from typing import Any, Iterator

from dataset.info import DatasetInfo, load_dataset_info
from training import checkpoint
from training.collation import task_for
from training.config import TrainConfig
from training.loader import Loader, default_workers
from training.shards import EpochCounter, ShardPlan
from training.sources import Batch


class PetastormSource:
    """A dataset's splits (Petastorm's layout and row-group sharding), read as ``config`` says: loader workers
    (``auto``: the cores per rank), shuffle window and seed, length bucketing, batches prefetched; ``pin_memory``
    for a GPU run: batches arrive in page-locked memory, so copying them to the GPU does not block. One pool of
    workers serves every epoch and evaluation of the run; ``close`` stops it."""

    def __init__(self, info: DatasetInfo, config: TrainConfig, *, pin_memory: bool = False, local_ranks: int = 1):
        task = task_for(info.spec, length_bucketing=config.length_bucketing)
        workers = default_workers(local_ranks) if config.loader_workers == "auto" else config.loader_workers
        self.info, self.task = info, task
        self.loader = Loader(info.splits, info.spec, task, workers=workers, seed=config.seed,
                             shuffle_rows=config.shuffle_buffer, prefetch=config.prefetch_batches,
                             pin_memory=pin_memory)
        self.name, self.identity, self.spec = info.url, info.snapshot_id, info.spec
        self.class_to_index, self.splits, self.host_inputs = info.manifest.class_to_index, info.splits, task.host_inputs

    @classmethod
    def open(cls, data_url: str, config: TrainConfig, *, pin_memory: bool = False,
             local_ranks: int = 1) -> PetastormSource:
        """The current committed snapshot of ``data_url`` (or the snapshot folder given), checked against its files."""
        return cls(load_dataset_info(data_url), config, pin_memory=pin_memory, local_ranks=local_ranks)

    def training_batches(self, plan: ShardPlan, *, batch_size: int, epoch: int, counter: EpochCounter,
                         start: int = 0) -> Iterator[Batch]:
        return self.loader.batches(self.splits["train"], plan, batch_size=batch_size, epoch=epoch, training=True,
                                   start=start, counter=counter)

    def resumed_plan(self, rank: int, world: int, stretches: tuple[tuple[int, int], ...], *, batch_size: int,
                     epoch: int) -> ShardPlan:
        """Rank ``rank``'s plan for the rest of epoch ``epoch`` resumed at world size ``world``: its part of the
        train split's rows that the earlier ``stretches`` of the epoch did not train (``training.order``)."""
        return self.loader.passes.plan(self.splits["train"], rank, world, stretches, epoch=epoch,
                                       batch_size=batch_size)

    def evaluation_batches(self, split: str, plan: ShardPlan, *, batch_size: int) -> Iterator[Batch]:
        return self.loader.batches(self.splits[split], plan, batch_size=batch_size, epoch=0, training=False)

    def class_rows(self, split: str) -> list[int]:
        per_class = self.info.manifest.splits[split].per_class
        return [per_class.get(name, 0) for name in self.spec.classes]

    def dataset_entry(self) -> dict[str, Any]:
        return checkpoint.dataset_entry(self.info)

    def take_read_errors(self) -> list[dict[str, Any]]:
        """The stored rows that failed to read since the last call (``training.loader``)."""
        return self.loader.take_read_errors()

    def close(self) -> None:
        self.loader.close()
