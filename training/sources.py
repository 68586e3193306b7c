"""Where the trainer's batches come from: the small protocol it reads through (``BatchSource``), and a source that
holds a small dataset in memory (``InMemorySource``), for tests and notebooks. The Petastorm source, which reads a
committed bigtrain dataset, is ``training.petastorm_source.PetastormSource``.

A source shards each split across ranks by its row groups (``training.shards.plan_shard``, Petastorm's rule), and
gives every rank exactly ``plan.steps(batch_size)`` full training batches per epoch: the rank's shard once, then
rows of the same shard again to fill the steps, counted apart so the trainer can check that every row was seen.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch

from core.errors import DatasetError
from dataset.info import SplitInfo
from dataset.layout import SPLITS
from dataset.manifest import DatasetSpec, ImageSpec, SequenceSpec
from training import checkpoint
from training.shards import DataCoverageError, EpochCounter, ShardPlan

# (model inputs, labels int64 (B,), sample ids int64 (B,)): what the collate functions of training.collation make
Batch = tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]


class BatchSource(Protocol):
    """What the trainer needs of its data."""
    name: str                          # where the data is (a dataset URL): logs, errors, metrics.json's "dataset"
    identity: str                      # the snapshot id: checkpoints record it, resuming on other data is refused
    spec: DatasetSpec                  # kind, classes, image shape or vocabulary: what the model is built for
    class_to_index: dict[str, int]
    splits: Mapping[str, SplitInfo]    # train, validation, test: rows and the row groups ranks shard by
    host_inputs: tuple[int, ...]       # model inputs that stay on the host (sequence lengths, read by packing)

    def training_batches(self, plan: ShardPlan, *, batch_size: int, epoch: int, counter: EpochCounter,
                         start: int = 0) -> Iterator[Batch]:
        """Exactly ``plan.steps(batch_size)`` full batches of the train split's shard ``plan``: every row of it once
        (counted in ``counter.first_pass_rows``), then rows of the same shard again (``counter.padding_rows``);
        the same batches every time for the same epoch, in an order that depends only on the seed, the epoch and
        the plan. ``start``: begin at that batch (a resumed epoch), counting the rows of the batches before it."""

    def evaluation_batches(self, split: str, plan: ShardPlan, *, batch_size: int) -> Iterator[Batch]:
        """Every row of ``split``'s shard ``plan`` once, unshuffled; the last batch may be short."""

    # Optional: ``resumed_plan(rank, world, stretches, *, batch_size, epoch) -> ShardPlan``, the plan of an epoch
    # resumed on another world size (``training.order.remainder``; ``PetastormSource`` has it). A source without it
    # starts such an epoch over on the new shards.

    def class_rows(self, split: str) -> list[int]:
        """Rows of ``split`` per class, in the order of ``spec.classes``."""

    def dataset_entry(self) -> dict[str, Any]:
        """The checkpoints' ``dataset`` entry (``training.checkpoint.dataset_entry_for``)."""


def check_classes(batches: BatchSource, *, allow_single_class: bool) -> None:
    """A DatasetError when the train split holds rows of a single class (unless ``train.allow_single_class``): a
    model of one class is right on every row and learns nothing, a 100 % accuracy that means nothing. A train split
    of no rows is the trainer's to refuse."""
    present = [name for name, rows in zip(batches.spec.classes, batches.class_rows("train")) if rows]
    if len(present) == 1 and not allow_single_class:
        raise DatasetError(f"{batches.name}: every row of the train split is of one class, {present[0]} (of "
                           f"{len(batches.spec.classes)} in the dataset): a model of one class learns nothing; set "
                           "train.allow_single_class: true to train on it anyway")


@dataclass(frozen=True)
class Examples:
    """One split held in memory: model inputs (images uint8 (N, C, H, W); or token ids int64 (N, T) and lengths
    int64 (N,)), labels int64 (N,) and sample ids int64 (N,)."""
    inputs: tuple[torch.Tensor, ...]
    labels: torch.Tensor
    sample_ids: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


class InMemorySource:
    """A small dataset in memory, sharded, shuffled and padded as the Petastorm source does it.

    Each split is cut into row groups of ``row_group_rows`` rows; ranks shard them with ``plan_shard``. Every epoch
    shuffles a rank's shard with ``seed`` (pass the run's ``train.seed`` to let one seed decide the run), and a
    short shard is padded with its own rows drawn again. The identity is a digest of the rows, the row groups and
    the seed: a resume point is only continued on the same data in the same order.
    """

    def __init__(self, splits: Mapping[str, Examples], spec: DatasetSpec, *, row_group_rows: int = 64,
                 seed: int = 0, name: str = "memory"):
        if "train" not in splits or set(splits) - set(SPLITS):
            raise DatasetError(f"in-memory dataset {name}: splits are {sorted(splits)}, expected train and "
                               "optionally validation and test")
        if row_group_rows < 1:
            raise DatasetError(f"in-memory dataset {name}: row_group_rows must be at least 1, got {row_group_rows}")
        train = splits["train"]
        self.examples = {s: splits[s] if s in splits else _empty_like(train) for s in SPLITS}
        for split, examples in self.examples.items():
            _check(examples, spec, f"{name}/{split}")
        self.spec, self.name, self.seed = spec, name, seed
        self.class_to_index = {c: i for i, c in enumerate(spec.classes)}
        self.host_inputs = (1,) if spec.kind == "sequence" else ()
        self.splits = {s: SplitInfo(s, f"{name}/{s}", len(e), _row_groups(len(e), row_group_rows))
                       for s, e in self.examples.items()}
        self.identity = "memory-" + _digest(self.examples, spec, row_group_rows, seed)

    @classmethod
    def images(cls, splits: Mapping[str, tuple[Any, Any]], *, classes: Sequence[str], **options) -> InMemorySource:
        """Images uint8 (N, C, H, W), square, and their labels, per split: ``{"train": (images, labels), ...}``."""
        examples = _numbered({s: ((torch.as_tensor(x),), torch.as_tensor(y)) for s, (x, y) in splits.items()})
        _, channels, height, width = examples["train"].inputs[0].shape
        if height != width:
            raise DatasetError(f"in-memory images are {height}x{width}: the CNN takes square images")
        shape = [height, width] if channels == 1 else [height, width, channels]  # as the image job stores them
        spec = DatasetSpec("image", list(classes), image=ImageSpec(height, channels, "raw", shape))
        return cls(examples, spec, **options)

    @classmethod
    def sequences(cls, splits: Mapping[str, tuple[Any, Any, Any]], *, classes: Sequence[str], vocab_size: int,
                  **options) -> InMemorySource:
        """Token ids int64 (N, T) padded with 0, their lengths (N,) and labels, per split:
        ``{"train": (tokens, lengths, labels), ...}``; ids below ``vocab_size`` (0 padding, 1 unknown)."""
        examples = _numbered({s: ((torch.as_tensor(t).long(), torch.as_tensor(n).long()), torch.as_tensor(y))
                              for s, (t, n, y) in splits.items()})
        longest = max(int(e.inputs[1].max()) if len(e) else 0 for e in examples.values())
        sequence = SequenceSpec(vocab_size, "int64", int(examples["train"].inputs[0].shape[1]), "in-memory",
                                longest=longest)
        return cls(examples, DatasetSpec("sequence", list(classes), sequence=sequence), **options)

    def training_batches(self, plan: ShardPlan, *, batch_size: int, epoch: int, counter: EpochCounter,
                         start: int = 0) -> Iterator[Batch]:
        rows = self._shard("train", plan)
        rng = np.random.default_rng([self.seed, epoch, plan.rank])
        needed = plan.steps(batch_size) * batch_size
        if len(rows) == 0 and needed:
            raise DataCoverageError(f"rank {plan.rank}: its shard of {self.splits['train'].url} is empty, nothing "
                                    f"to fill {plan.steps(batch_size)} steps with")
        order = [rng.permutation(rows)]
        while sum(map(len, order)) < needed:  # padding: the shard again, in a new order each time round
            order.append(rng.permutation(rows))
        order = np.concatenate(order)[:needed]
        for first in range(0, needed, batch_size):
            real = max(0, min(batch_size, len(rows) - first))
            counter.first_pass_rows += real
            counter.padding_rows += batch_size - real
            if first >= start * batch_size:
                yield self._batch("train", order[first:first + batch_size])
        counter.check_first_pass()

    def evaluation_batches(self, split: str, plan: ShardPlan, *, batch_size: int) -> Iterator[Batch]:
        rows = self._shard(split, plan)
        for start in range(0, len(rows), batch_size):
            yield self._batch(split, rows[start:start + batch_size])

    def class_rows(self, split: str) -> list[int]:
        return torch.bincount(self.examples[split].labels, minlength=len(self.spec.classes)).tolist()

    def dataset_entry(self) -> dict[str, Any]:
        return checkpoint.dataset_entry_for(self.spec, url=self.name, snapshot_id=self.identity)

    def _shard(self, split: str, plan: ShardPlan) -> np.ndarray:
        """Positions in ``split`` of the rows of shard ``plan``, in stored order (as Petastorm assigns them)."""
        sizes = self.splits[split].row_group_sizes
        if not plan.by_row_group:  # fewer row groups than ranks: every world-th row
            return np.arange(plan.rank, sum(sizes), plan.world)
        starts = np.cumsum((0, *sizes))
        groups = [np.arange(starts[g], starts[g + 1]) for g in range(plan.rank, len(sizes), plan.world)]
        return np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)

    def _batch(self, split: str, rows: np.ndarray) -> Batch:
        examples = self.examples[split]
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        if self.spec.kind == "sequence":  # longest first and trimmed to the longest, as sequence_collate does
            lengths = examples.inputs[1][index]
            order = torch.argsort(-lengths, stable=True)
            index, lengths = index[order], lengths[order]
            tokens = examples.inputs[0][index][:, :int(lengths.max())]
            inputs = (tokens, lengths)
        else:
            inputs = tuple(t[index] for t in examples.inputs)
        return inputs, examples.labels[index], examples.sample_ids[index]


def _numbered(splits: Mapping[str, tuple[tuple[torch.Tensor, ...], torch.Tensor]]) -> dict[str, Examples]:
    """Examples with sample ids 0.. numbered through the splits in order (unique across splits, as in a dataset)."""
    extra = set(splits) - set(SPLITS)
    if extra:
        raise DatasetError(f"in-memory dataset: unknown split(s) {', '.join(sorted(extra))}; expected {SPLITS}")
    examples, offset = {}, 0
    for split in (s for s in SPLITS if s in splits):
        inputs, labels = splits[split]
        rows = len(labels)
        examples[split] = Examples(inputs, labels.long(), torch.arange(offset, offset + rows, dtype=torch.int64))
        offset += rows
    return examples


def _empty_like(examples: Examples) -> Examples:
    return Examples(tuple(t[:0] for t in examples.inputs), examples.labels[:0], examples.sample_ids[:0])


def _check(examples: Examples, spec: DatasetSpec, where: str) -> None:
    """Labels and inputs that fit the spec: a wrong label would train silently on the wrong class."""
    rows = len(examples)
    if any(len(t) != rows for t in examples.inputs) or len(examples.sample_ids) != rows:
        raise DatasetError(f"{where}: inputs, labels and sample ids differ in length "
                           f"({[len(t) for t in examples.inputs]}, {rows}, {len(examples.sample_ids)})")
    bad = examples.labels[(examples.labels < 0) | (examples.labels >= len(spec.classes))]
    if len(bad):
        raise DatasetError(f"{where}: label {int(bad[0])} is not a class index of {spec.classes}")
    if spec.kind == "image":
        want = (spec.image.channels, spec.image.size, spec.image.size)
        if tuple(examples.inputs[0].shape[1:]) != want:
            raise DatasetError(f"{where}: images are {tuple(examples.inputs[0].shape[1:])}, the dataset's are {want} "
                               "(C, H, W)")
    if spec.kind == "sequence" and rows:
        tokens, lengths = examples.inputs
        if int(lengths.min()) < 1 or int(lengths.max()) > tokens.shape[1]:
            raise DatasetError(f"{where}: lengths must be in [1, {tokens.shape[1]}], got {int(lengths.min())}.."
                               f"{int(lengths.max())}")
        if int(tokens.max()) >= spec.sequence.vocab_size or int(tokens.min()) < 0:
            raise DatasetError(f"{where}: token ids must be in [0, {spec.sequence.vocab_size}), got "
                               f"{int(tokens.min())}..{int(tokens.max())}")


def _row_groups(rows: int, size: int) -> tuple[int, ...]:
    return (size,) * (rows // size) + ((rows % size,) if rows % size else ())


def _digest(examples: Mapping[str, Examples], spec: DatasetSpec, row_group_rows: int, seed: int) -> str:
    digest = hashlib.sha256(repr((spec.to_dict(), row_group_rows, seed)).encode())
    for split in SPLITS:
        for tensor in (*examples[split].inputs, examples[split].labels, examples[split].sample_ids):
            digest.update(split.encode())
            digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
