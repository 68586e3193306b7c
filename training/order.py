"""The order in which a rank reads its shard: a pure function of (seed, epoch, rank, world size) and the dataset's
row groups, whatever the number of loader workers and wherever an epoch is resumed.

A rank's shard is a list of *pieces*: rows ``start:stop:step`` of one row group (a whole row group when the shard
is by row group, as Petastorm assigns them; every ``world``-th row when there are fewer row groups than ranks).
A training epoch:

1. permutes the shard's pieces (``rng(seed, epoch, rank, world)``) and lays their rows end to end; when the shard
   is shorter than the epoch's ``steps * batch_size`` rows (``training.shards``), padding passes follow, the shard
   again in new permutations, cut to the rows needed;
2. cuts that sequence into *windows* of ``window_rows`` rows (a multiple of the batch size, at least one row
   group), each made of row ranges of a few row groups;
3. permutes the rows of each window on their own (``rng(seed, epoch, rank, world, window)``), the shard's rows
   before the padding rows, so that real rows always come first in the epoch and metrics can count them; with
   length bucketing, the real rows of a window are sorted by length, cut into batches, and the full batches
   permuted.

Batch ``b`` of the epoch is rows ``b * batch_size ...`` of that order. A window is the unit of reading: whoever
produces its batches reads only its pieces, so a resumed epoch starts at its window without reading the ones
before it, and a batch's rows never leave the few row groups in memory. Evaluation reads the shard's pieces in
stored order, unshuffled, in windows of the same size; its last batch may be short.
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from training.shards import ShardPlan


@dataclass(frozen=True)
class Piece:
    """Rows ``start:stop:step`` of row group ``group`` (its position in the split, in Petastorm's order)."""
    group: int
    start: int
    stop: int
    step: int = 1

    @property
    def rows(self) -> int:
        return len(range(self.start, self.stop, self.step))

    def head(self, n: int) -> Piece:
        return Piece(self.group, self.start, self.start + n * self.step, self.step)

    def tail(self, n: int) -> Piece:
        """All but the first ``n`` rows."""
        return Piece(self.group, self.start + n * self.step, self.stop, self.step)


@dataclass(frozen=True)
class Window:
    """Rows of ``pieces`` laid end to end; the first ``real`` of them are the shard's first pass, the rest padding.
    Its batches are the epoch's batches ``first_batch .. first_batch + batches - 1``."""
    index: int
    pieces: tuple[Piece, ...]
    real: int
    first_batch: int
    batches: int

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.pieces)

    @property
    def groups(self) -> tuple[int, ...]:
        return tuple(sorted({p.group for p in self.pieces}))


def shard_pieces(sizes: Sequence[int], plan: ShardPlan) -> list[Piece]:
    """The pieces of ``plan``'s shard, in stored order."""
    if plan.by_row_group:
        return [Piece(g, 0, n) for g, n in enumerate(sizes) if g % plan.world == plan.rank and n]
    pieces, offset = [], 0
    for g, n in enumerate(sizes):  # every world-th row of the split: rank, rank + world, ...
        first = (plan.rank - offset) % plan.world
        if first < n:
            pieces.append(Piece(g, first, n, plan.world))
        offset += n
    return pieces


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([k % 2**63 for k in key])


def window_rows_for(sizes: Sequence[int], batch_size: int, shuffle_rows: int) -> int:
    """Rows per window: ``shuffle_rows`` but at least the largest row group (so a row group is read by at most two
    windows), rounded up to a multiple of the batch size."""
    rows = max(shuffle_rows, max(sizes, default=0), batch_size, 1)
    return math.ceil(rows / batch_size) * batch_size


@dataclass(frozen=True)
class EpochOrder:
    """The windows of one epoch (or one evaluation pass) of one rank."""
    seed: int
    epoch: int
    rank: int
    world: int
    batch_size: int
    windows: tuple[Window, ...]
    training: bool
    local_rows: int

    @property
    def batches(self) -> int:
        return sum(w.batches for w in self.windows)

    def positions(self, window: Window, lengths: np.ndarray | None = None) -> np.ndarray:
        """The order of ``window``'s rows (positions into its pieces laid end to end) for its batches; ``lengths``
        (of those rows, in the same layout) turns on length bucketing for the real rows."""
        if not self.training:
            return np.arange(window.rows)
        rng = _rng(self.seed, self.epoch, self.rank, self.world, window.index)
        real = rng.permutation(window.real)
        if lengths is not None and window.real:
            real = real[np.argsort(lengths[real], kind="stable")]
            full = window.real // self.batch_size
            groups = real[:full * self.batch_size].reshape(full, self.batch_size)[rng.permutation(full)]
            real = np.concatenate([groups.reshape(-1), real[full * self.batch_size:]])
        padding = window.real + rng.permutation(window.rows - window.real)
        return np.concatenate([real, padding]).astype(np.int64, copy=False)


def epoch_order(sizes: Sequence[int], plan: ShardPlan, *, batch_size: int, seed: int, epoch: int,
                shuffle_rows: int, training: bool = True) -> EpochOrder:
    """The windows of ``plan``'s shard for one training epoch (``plan.steps(batch_size)`` full batches, padded) or,
    with ``training=False``, one unshuffled evaluation pass (every row once, the last batch possibly short)."""
    pieces = shard_pieces(sizes, plan)
    local = sum(p.rows for p in pieces)
    if local != plan.local_rows:
        raise ValueError(f"shard pieces hold {local} rows, the plan {plan.local_rows}")
    window_rows = window_rows_for(sizes, batch_size, shuffle_rows if training else 0)
    if training:
        total = plan.steps(batch_size) * batch_size
        rng = _rng(seed, epoch, plan.rank, plan.world)
        sequence = [pieces[i] for i in rng.permutation(len(pieces))]
        laid, passes = local, 0
        while laid < total and local:  # padding: the shard again, in a new order each time round
            passes += 1
            for i in _rng(seed, epoch, plan.rank, plan.world, -passes).permutation(len(pieces)):
                if laid >= total:
                    break
                take = min(pieces[i].rows, total - laid)
                sequence.append(pieces[i].head(take))
                laid += take
    else:
        total, sequence = local, list(pieces)
    windows, current, filled, start = [], [], 0, 0
    queue = collections.deque(sequence)
    while queue:
        piece = queue.popleft()
        room = window_rows - filled
        if piece.rows > room:  # the piece straddles two windows: its head closes this one
            queue.appendleft(piece.tail(room))
            piece = piece.head(room)
        current.append(piece)
        filled += piece.rows
        if filled == window_rows or not queue:
            real = max(0, min(filled, local - start))
            batches = math.ceil(filled / batch_size)
            first = windows[-1].first_batch + windows[-1].batches if windows else 0
            windows.append(Window(len(windows), tuple(current), real, first, batches))
            start += filled
            current, filled = [], 0
    return EpochOrder(seed, epoch, plan.rank, plan.world, batch_size, tuple(windows), training, local)
