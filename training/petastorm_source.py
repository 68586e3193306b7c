"""The trainer's batches from a committed bigtrain dataset, read with Petastorm (``training.sources.BatchSource``):
the dataset's manifest and row groups (``dataset.info``), Petastorm's readers (``training.reading``), exactly
``steps`` padded training batches per rank (``training.batching``) and the collate of the dataset's kind
(``training.collation``)."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

from dataset.info import DatasetInfo, load_dataset_info
from training import checkpoint
from training.batching import evaluation_batches, training_batches
from training.collation import task_for
from training.config import TrainConfig
from training.device import pinned
from training.reading import ReadOptions
from training.shards import EpochCounter, ShardPlan
from training.sources import Batch


class PetastormSource:
    """A dataset's splits through Petastorm, read as ``config`` says (reader threads, shuffle buffer and seed,
    length bucketing, batches prefetched); ``pin_memory`` for a GPU run: batches are collated into page-locked
    memory in the loader's thread, so copying them to the GPU does not block."""

    def __init__(self, info: DatasetInfo, config: TrainConfig, *, pin_memory: bool = False):
        task = task_for(info.spec, length_bucketing=config.length_bucketing, decode_threads=config.loader_workers)
        if pin_memory:
            task = dataclasses.replace(task, collate=pinned(task.collate, task.host_inputs))
        self.info, self.task = info, task
        self.options = ReadOptions(task.fields, workers=config.loader_workers, shuffle=True,
                                   shuffle_buffer=config.shuffle_buffer, seed=config.seed, columnar=task.columnar,
                                   sort_key=task.sort_key, prefetch=config.prefetch_batches)
        self.name, self.identity, self.spec = info.url, info.snapshot_id, info.spec
        self.class_to_index, self.splits, self.host_inputs = info.manifest.class_to_index, info.splits, task.host_inputs

    @classmethod
    def open(cls, data_url: str, config: TrainConfig, *, pin_memory: bool = False) -> PetastormSource:
        """The current committed snapshot of ``data_url`` (or the snapshot folder given), checked against its files."""
        return cls(load_dataset_info(data_url), config, pin_memory=pin_memory)

    def training_batches(self, plan: ShardPlan, *, batch_size: int, epoch: int,
                         counter: EpochCounter) -> Iterator[Batch]:
        return training_batches(self.splits["train"], plan, self.options, batch_size=batch_size, epoch=epoch,
                                collate=self.task.collate, counter=counter)

    def evaluation_batches(self, split: str, plan: ShardPlan, *, batch_size: int) -> Iterator[Batch]:
        return evaluation_batches(self.splits[split], plan, self.options, batch_size=batch_size,
                                  collate=self.task.collate)

    def dataset_entry(self) -> dict[str, Any]:
        return checkpoint.dataset_entry(self.info)
