"""Rows to batches: shuffled (bounded buffer) or length-bucketed, exactly ``plan.steps(batch_size)`` full training
batches on every rank (a short shard padded from a sample of its own rows), evaluation batches that read each row
once, and a background thread that prepares the next batches while the model trains."""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from dataset.info import SplitInfo
from training import reading
from training.reading import ReadOptions
from training.shards import DataCoverageError, EpochCounter, ShardPlan


def bucketed(rows: Iterator[Any], *, key: Callable[[Any], Any], batch_size: int, window_batches: int,
             rng: np.random.Generator) -> Iterator[Any]:
    """Within windows of ``window_batches`` batches, sort rows by ``key`` and emit batch-sized groups in random
    order: batches hold rows of similar length (little padding) without ordering the epoch by length."""
    window = batch_size * window_batches
    buffer: list[Any] = []

    def flush() -> Iterator[Any]:
        buffer.sort(key=key)
        groups = [buffer[i:i + batch_size] for i in range(0, len(buffer), batch_size)]
        for g in rng.permutation(len(groups)):
            yield from groups[g]
        buffer.clear()

    for row in rows:
        buffer.append(row)
        if len(buffer) == window:
            yield from flush()
    yield from flush()


def shuffled(rows: Iterator[Any], buffer_size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Shuffle a stream through a bounded buffer (memory stays at ``buffer_size`` rows)."""
    if buffer_size <= 1:
        yield from rows
        return
    buffer: list[Any] = []
    draws: list[int] = []
    for row in rows:
        if len(buffer) < buffer_size:
            buffer.append(row)
            continue
        if not draws:  # random slots drawn 4,096 at a time: one numpy call per row would dominate
            draws = rng.integers(buffer_size, size=4096).tolist()
        i = draws.pop()
        buffer[i], row = row, buffer[i]
        yield row
    rng.shuffle(buffer)
    yield from buffer


PADDING_RESERVOIR_ROWS = 8192  # padding up to this many rows comes from memory; more is re-read from the shard


class Reservoir:
    """A uniform random sample of ``size`` rows of a stream (Algorithm R), kept to pad a short shard without
    reading it again."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng, self.rows, self.seen = size, rng, [], 0
        self._uniform: list[float] = []

    def offer(self, row: Any) -> None:
        self.seen += 1
        if len(self.rows) < self.size:
            self.rows.append(row)
            return
        if not self._uniform:  # drawn 4,096 at a time: one numpy call per row would cost more than the row
            self._uniform = self.rng.random(4096).tolist()
        j = int(self._uniform.pop() * self.seen)
        if j < self.size:
            self.rows[j] = row

    def cycle(self) -> Iterator[Any]:
        while self.rows:
            yield from (self.rows[i] for i in self.rng.permutation(len(self.rows)))


def training_batches(split: SplitInfo, plan: ShardPlan, options: ReadOptions, *, batch_size: int, epoch: int,
                     collate: Callable[[list[Any]], Any], counter: EpochCounter) -> Iterator[Any]:
    """Exactly ``plan.steps(batch_size)`` full batches: the shard once, then padding rows of the same shard.

    Padding (the rows a shorter shard needs to fill the last batches) is drawn from a random sample of the first
    pass kept in memory; only if more than PADDING_RESERVOIR_ROWS are needed is the shard read again.
    """
    steps = plan.steps(batch_size)
    rng = np.random.default_rng([options.seed, epoch, plan.rank])
    padding = steps * batch_size - plan.local_rows
    reservoir = Reservoir(padding, rng) if 0 < padding <= PADDING_RESERVOIR_ROWS else None

    def produce() -> Iterator[Any]:
        rows = _padded_rows(split, plan, options, batch_size, epoch, rng, counter, reservoir)
        batches = _batched(rows, batch_size)
        try:
            for _ in range(steps):
                yield collate(next(batches))
        finally:  # stop the readers of a pass that is only partly consumed
            batches.close()
            rows.close()

    yield from prefetched(produce(), options.prefetch)


def prefetched(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run ``items`` (reading, decoding, collating) in a background thread, ``depth`` items ahead, so the next
    batch is being prepared while the model trains on this one. Errors surface in the caller, in order."""
    import queue
    import threading

    if depth <= 0:
        yield from items
        return
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(entry) -> bool:
        """Hand ``entry`` over unless the consumer has gone (it stopped early or raised): a blocking put on a full
        queue nobody reads would leave the consumer's join waiting forever."""
        while not stop.is_set():
            try:
                buffer.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            put((done, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # generators: stop their readers in the thread that ran them
                close()

    thread = threading.Thread(target=work, name="bigtrain-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _batched(rows: Iterator[Any], batch_size: int) -> Iterator[list[Any]]:
    pending: list[Any] = []
    for row in rows:
        pending.append(row)
        if len(pending) == batch_size:
            yield pending
            pending = []


def _padded_rows(split: SplitInfo, plan: ShardPlan, options: ReadOptions, batch_size: int, epoch: int,
                 rng: np.random.Generator, counter: EpochCounter, reservoir: Reservoir | None) -> Iterator[Any]:
    """The shard's rows once (counted), then padding rows without end (the caller takes what it needs)."""
    def pass_rows(pass_index: int) -> Iterator[Any]:
        rows = reading.read_shard_once(split, plan, options, pass_seed=options.seed + 7919 * epoch + pass_index)
        source = shuffled(rows, options.shuffle_buffer if options.shuffle else 0, rng)
        if options.sort_key is not None:
            source = bucketed(source, key=options.sort_key, batch_size=batch_size, window_batches=32, rng=rng)
        return source

    for row in pass_rows(0):
        counter.first_pass_rows += 1
        if counter.first_pass_rows > plan.local_rows:
            counter.check_first_pass()  # more rows than the shard holds: fail now, not after training on them
        if reservoir is not None:
            reservoir.offer(row)
        yield row
    counter.check_first_pass()
    if reservoir is not None:
        for row in reservoir.cycle():
            counter.padding_rows += 1
            yield row
    pass_index = 1
    while True:
        delivered = 0
        for row in pass_rows(pass_index):
            delivered += 1
            counter.padding_rows += 1
            yield row
        if delivered == 0:
            raise DataCoverageError(f"rank {plan.rank}: a padding pass over {split.url} delivered no rows")
        pass_index += 1


def evaluation_batches(split: SplitInfo, plan: ShardPlan, options: ReadOptions, *, batch_size: int,
                       collate: Callable[[list[Any]], Any]) -> Iterator[Any]:
    """This rank's shard exactly once, in batches (the last may be short), with no shuffling."""
    eval_options = ReadOptions(options.fields, options.workers, shuffle=False, shuffle_buffer=0, seed=options.seed,
                               columnar=options.columnar, prefetch=options.prefetch)
    pending: list[Any] = []
    for row in reading.read_shard_once(split, plan, eval_options, pass_seed=options.seed):
        pending.append(row)
        if len(pending) == batch_size:
            yield collate(pending)
            pending = []
    if pending:
        yield collate(pending)
