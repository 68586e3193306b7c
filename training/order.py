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

**An epoch resumed on another world size.** A run stopped after step ``s`` of an epoch at world size ``N`` and
resumed at ``M`` continues the epoch with the rows no rank trained in it yet, each once (``remainder``). The rows
the ``N`` ranks trained follow from the order above (seed, epoch, rank, ``N``, their first ``s`` batches, padding
left out); the rows left are cut into pieces (runs of one row group), the row groups laid end to end in a permuted
order, and that sequence cut into ``M`` near-equal parts, one per new rank. Every new rank then runs the same
``ceil(max part / batch_size)`` steps, its part first and padding (its part again, or the whole remainder for a
rank whose part is empty) after, in windows permuted as above; its batches are the epoch's batches ``s, s + 1,
...``. A resume point records this as *stretches* (``ShardPlan.stretches``): the (world size, steps trained by
then) of each earlier stretch of the epoch, a few integers, from which every rank recomputes its part; a stretch
resumed again on yet another size adds one. The next epoch is the plain order for ``M``.
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from training.shards import DataCoverageError, ShardPlan, plan_shard

# (world size, the epoch's steps trained when it stopped): one earlier stretch of an epoch resumed on another size
Stretch = tuple[int, int]
RESUMED = 0x7E5  # in the random keys of a resumed stretch's order, apart from the plain order's keys


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
    first: int = 0                  # the epoch's batch the order starts at (a resumed stretch: the steps before it)
    key: tuple[int, ...] = ()       # added to the random keys of a resumed stretch's windows

    @property
    def batches(self) -> int:
        return sum(w.batches for w in self.windows)

    @property
    def end(self) -> int:
        """The epoch's batch after the order's last."""
        return self.first + self.batches

    def positions(self, window: Window, lengths: np.ndarray | None = None) -> np.ndarray:
        """The order of ``window``'s rows (positions into its pieces laid end to end) for its batches; ``lengths``
        (of those rows, in the same layout) turns on length bucketing for the real rows."""
        if not self.training:
            return np.arange(window.rows)
        rng = _rng(self.seed, self.epoch, self.rank, self.world, window.index, *self.key)
        real = rng.permutation(window.real)
        if lengths is not None and window.real:
            real = real[np.argsort(lengths[real], kind="stable")]
            full = window.real // self.batch_size
            groups = real[:full * self.batch_size].reshape(full, self.batch_size)[rng.permutation(full)]
            real = np.concatenate([groups.reshape(-1), real[full * self.batch_size:]])
        padding = window.real + rng.permutation(window.rows - window.real)
        return np.concatenate([real, padding]).astype(np.int64, copy=False)


def epoch_order(sizes: Sequence[int], plan: ShardPlan, *, batch_size: int, seed: int, epoch: int,
                shuffle_rows: int, training: bool = True, left: Remainder | None = None,
                lengths_of: Callable[[Window], np.ndarray] | None = None) -> EpochOrder:
    """The windows of ``plan``'s shard for one training epoch (``plan.steps(batch_size)`` full batches, padded) or,
    with ``training=False``, one unshuffled evaluation pass (every row once, the last batch possibly short). A plan
    with ``stretches`` is a resumed stretch of the epoch: its rank's part of the rows left (``left``, computed here
    when not given; ``lengths_of`` as ``remainder`` takes it)."""
    window_rows = window_rows_for(sizes, batch_size, shuffle_rows if training else 0)
    if training and plan.stretches:
        if left is None:
            left = remainder(sizes, plan.stretches, plan.world, batch_size=batch_size, seed=seed, epoch=epoch,
                             shuffle_rows=shuffle_rows, lengths_of=lengths_of)
        return _resumed_order(sizes, left, plan.rank, plan.world, plan.stretches, batch_size=batch_size, seed=seed,
                              epoch=epoch, window_rows=window_rows)
    pieces = shard_pieces(sizes, plan)
    local = sum(p.rows for p in pieces)
    if local != plan.local_rows:
        raise ValueError(f"shard pieces hold {local} rows, the plan {plan.local_rows}")
    if training:
        total = plan.steps(batch_size) * batch_size
        rng = _rng(seed, epoch, plan.rank, plan.world)
        sequence = [pieces[i] for i in rng.permutation(len(pieces))]
        sequence += _padding(pieces, local, total, (seed, epoch, plan.rank, plan.world))
    else:
        sequence = list(pieces)
    windows = _windows(sequence, local, window_rows, batch_size)
    return EpochOrder(seed, epoch, plan.rank, plan.world, batch_size, windows, training, local)


def _padding(pool: Sequence[Piece], laid: int, total: int, key: tuple[int, ...]) -> list[Piece]:
    """Rows of ``pool`` again after ``laid`` rows, up to ``total``: the pool in a new order each time round."""
    padding, passes, rows = [], 0, sum(p.rows for p in pool)
    while laid < total and rows:
        passes += 1
        for i in _rng(*key, -passes).permutation(len(pool)):
            if laid >= total:
                break
            take = min(pool[i].rows, total - laid)
            padding.append(pool[i].head(take))
            laid += take
    return padding


def _windows(sequence: Sequence[Piece], local: int, window_rows: int, batch_size: int,
             first_batch: int = 0) -> tuple[Window, ...]:
    """``sequence`` cut into windows of ``window_rows`` rows; the first ``local`` rows are real, the rest padding."""
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
            first = windows[-1].first_batch + windows[-1].batches if windows else first_batch
            windows.append(Window(len(windows), tuple(current), real, first, batches))
            start += filled
            current, filled = [], 0
    return tuple(windows)


@dataclass(frozen=True)
class Remainder:
    """The rows of an epoch not trained by its earlier stretches, dealt to the ranks of the new world size: part
    ``r`` is what rank ``r`` trains, in order. ``trained``: the rows the earlier stretches trained."""
    parts: tuple[tuple[Piece, ...], ...]
    trained: int

    @property
    def rows_per_rank(self) -> tuple[int, ...]:
        return tuple(sum(p.rows for p in part) for part in self.parts)

    @property
    def pool(self) -> tuple[Piece, ...]:
        """Every piece left: the padding of a rank whose part is empty."""
        return tuple(p for part in self.parts for p in part)


def remainder(sizes: Sequence[int], stretches: Sequence[Stretch], world: int, *, batch_size: int, seed: int,
              epoch: int, shuffle_rows: int,
              lengths_of: Callable[[Window], np.ndarray] | None = None) -> Remainder:
    """The rows of the train split (row groups of ``sizes``) that the ``stretches`` of epoch ``epoch`` did not
    train, dealt to ``world`` ranks. Each stretch ``(w, end)`` trained the epoch's batches up to ``end`` on ``w``
    ranks, in the plain order for the first, in the resumed order of the rows left by those before it for the
    others. ``lengths_of(window)``: the lengths of a window's rows (pieces laid end to end) where batches are
    bucketed by length (the rows of a window cut short depend on them); None without length bucketing. A row that
    two ranks trained, which the orders never give, is a ``DataCoverageError``."""
    sizes = tuple(int(n) for n in sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
    trained = np.zeros(int(offsets[-1]), dtype=bool)
    window_rows = window_rows_for(sizes, batch_size, shuffle_rows)
    left: Remainder | None = None
    for i, (width, end) in enumerate(stretches):
        for rank in range(width):
            if left is None:
                order = epoch_order(sizes, plan_shard(sizes, rank, width), batch_size=batch_size, seed=seed,
                                    epoch=epoch, shuffle_rows=shuffle_rows)
            else:
                order = _resumed_order(sizes, left, rank, width, stretches[:i], batch_size=batch_size, seed=seed,
                                       epoch=epoch, window_rows=window_rows)
            _mark_trained(order, end, offsets, trained, lengths_of)
        left = _deal(sizes, offsets, trained, stretches[i + 1][0] if i + 1 < len(stretches) else world,
                     (seed, epoch, RESUMED, *_flat(stretches[:i + 1])))
    if left is None:
        raise ValueError("remainder: no earlier stretch of the epoch")
    return left


def resumed_plan(left: Remainder, rank: int, world: int, stretches: Sequence[Stretch]) -> ShardPlan:
    """The plan of rank ``rank`` of ``world`` for the stretch after ``stretches``: its part of ``left``."""
    if len(left.parts) != world or not 0 <= rank < world:
        raise ValueError(f"rank {rank} of {world}: the remainder is dealt to {len(left.parts)} ranks")
    per_rank = left.rows_per_rank
    return ShardPlan(rank, world, True, per_rank[rank], per_rank, first_step=int(stretches[-1][1]),
                     stretches=tuple((int(w), int(e)) for w, e in stretches))


def _flat(stretches: Sequence[Stretch]) -> tuple[int, ...]:
    return tuple(int(v) for stretch in stretches for v in stretch)


def _resumed_order(sizes: Sequence[int], left: Remainder, rank: int, world: int, stretches: Sequence[Stretch], *,
                   batch_size: int, seed: int, epoch: int, window_rows: int) -> EpochOrder:
    """Rank ``rank``'s order for the stretch after ``stretches``: its part of ``left``, then padding."""
    plan = resumed_plan(left, rank, world, stretches)
    part = list(left.parts[rank])
    local = plan.local_rows
    key = (RESUMED, *_flat(stretches))
    total = (plan.steps(batch_size) - plan.first_step) * batch_size
    sequence = part + _padding(part or list(left.pool), local, total, (seed, epoch, rank, world, *key))
    windows = _windows(sequence, local, window_rows, batch_size, plan.first_step)
    return EpochOrder(seed, epoch, rank, world, batch_size, windows, True, local, plan.first_step, key)


def _mark_trained(order: EpochOrder, end: int, offsets: np.ndarray, trained: np.ndarray,
                  lengths_of: Callable[[Window], np.ndarray] | None) -> None:
    """Mark in ``trained`` the real rows (by position in the split) of ``order``'s batches before ``end``."""
    size = order.batch_size
    for window in order.windows:
        done = min(end - window.first_batch, window.batches)
        if done <= 0:
            break
        laid = np.concatenate([offsets[p.group] + np.arange(p.start, p.stop, p.step, dtype=np.int64)
                               for p in window.pieces])
        if done == window.batches:
            rows = laid[:window.real]
        else:  # the window cut short: the rows of its first batches, in the window's permuted order
            lengths = lengths_of(window) if lengths_of is not None else None
            positions = order.positions(window, lengths)[:done * size]
            rows = laid[positions[positions < window.real]]
        if trained[rows].any() or len(np.unique(rows)) != len(rows):
            raise DataCoverageError(f"epoch {order.epoch + 1}: rank {order.rank} of {order.world} trained a row "
                                    "another rank (or step) trained already in that epoch")
        trained[rows] = True


def _deal(sizes: Sequence[int], offsets: np.ndarray, trained: np.ndarray, world: int,
          key: tuple[int, ...]) -> Remainder:
    """The rows not ``trained`` as pieces (runs within a row group), row groups in a permuted order, cut into
    ``world`` near-equal parts."""
    groups = []
    for g, n in enumerate(sizes):
        rows = np.flatnonzero(~trained[offsets[g]:offsets[g] + n])
        if len(rows):
            runs = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)
            groups.append([Piece(g, int(run[0]), int(run[-1]) + 1) for run in runs])
    queue = collections.deque(p for i in _rng(*key).permutation(len(groups)) for p in groups[i])
    total = int((~trained).sum())
    parts = []
    for rank in range(world):
        want, part = (rank + 1) * total // world - rank * total // world, []
        while want:
            piece = queue.popleft()
            if piece.rows > want:
                queue.appendleft(piece.tail(want))
                piece = piece.head(want)
            part.append(piece)
            want -= piece.rows
        parts.append(tuple(part))
    return Remainder(tuple(parts), int(trained.sum()))
