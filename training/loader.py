"""The training loader: a rank's shard of a Petastorm dataset read as columns and made into batches in persistent
worker processes, delivered in one order whatever the number of workers.

* **Units of work.** An epoch's order (``training.order``) is a list of windows, each a few row ranges of the
  shard's row groups. Its batches are cut into *chunks* of consecutive batches of one window; chunk ``t`` goes to
  worker ``t % workers``. A worker reads the row groups of its chunk's window with pyarrow (the columns as Parquet
  stores them, in Petastorm's row-group order and sharding), prepares them (``training.collation``: raw pixels
  reshaped in one step, PNG/JPEG decoded image by image, token ids scattered into a padded matrix), and sends the
  chunk back as one shared-memory buffer per dtype (``unpack`` cuts the batches out as views).
* **One pool per run.** The workers are a ``torch.utils.data.DataLoader`` with ``persistent_workers``: started
  once, on the first batch, and reused by every epoch and every evaluation pass; a small shared tensor tells them
  which split, epoch, rank and starting batch the next pass is.
* **Order and accounting stay in the training process.** Batches arrive as the workers finish them and are handed
  on in the epoch's order; the loader counts the shard's rows and the padding rows of every batch and checks the
  number of batches. A resumed epoch starts at its batch: the windows before it are never read.
* **Memory.** A worker holds the encoded columns of one window; the training process holds at most about
  ``workers * chunk`` decoded batches waiting for their turn, and the chunk is sized to keep that under
  ``BUFFER_BYTES``.

With ``workers=0`` the same code runs in a background thread of the training process (``prefetched``).
"""
from __future__ import annotations

import functools
import logging
import math
import os
import pickle
import threading
import time
from typing import Any, Iterator

import numpy as np
import torch
import torch.utils.data

from core.errors import DatasetError, LaunchError
from core.paths import filesystem
from dataset.info import SplitInfo
from dataset.manifest import DatasetSpec
from training.collation import Prepared, Task
from training.feed import prefetched
from training.ledger import StageClock
from training.order import EpochOrder, Remainder, Window, epoch_order, remainder, resumed_plan
from training.shards import DataCoverageError, EpochCounter, ShardPlan, plan_shard

log = logging.getLogger("bigtrain.train")

BUFFER_BYTES = 128 * 2**20  # decoded batches per chunk times workers: what waits for its turn (x ~3 with prefetch)
# Batches per chunk at most where decoding dominates (PNG/JPEG): a chunk is handed over whole, so its first batch
# waits for its last, and small chunks spread a window over the workers. Where reading dominates (raw pixels,
# token ids) a chunk is a whole window, so that every row group is read by one worker.
DECODE_CHUNK = 8
_ERROR = -1
WORKER_TIMEOUT_S = 900  # a chunk not delivered for this long is an error (a stuck read), not a run that hangs
SHM = "/dev/shm"  # where chunks cross from the workers (torch's shared-memory tensors); containers often give 64 MB
SHM_SHARE = 0.5   # the loader's chunks in flight use at most this share of what is free there


def shm_free_bytes(path: str = SHM) -> int | None:
    """Bytes free in the shared-memory file system (None where there is none to measure)."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def default_workers(local_ranks: int = 1) -> int:
    """The cores this process may use, shared among the ranks on this host."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_ranks))


def batch_bytes(spec: DatasetSpec, batch_size: int) -> int:
    """Bytes of one decoded batch (the images, or the padded token ids at their longest)."""
    if spec.kind == "image":
        return batch_size * spec.image.size * spec.image.size * spec.image.channels
    return batch_size * max(1, spec.sequence.max_length) * 8


class SplitReader:
    """Reads windows of one split: the row groups its pieces come from, sliced and laid end to end."""

    def __init__(self, split: SplitInfo, fields: tuple[str, ...]):
        if len(split.row_group_files) != len(split.row_group_sizes):
            raise DatasetError(f"split {split.url}: its row groups were listed without their files")
        self.split, self.fields = split, fields
        self._fs = None

    def _open(self, path: str):
        import pyarrow.parquet as pq

        if self.split.url.startswith("file:") or "://" not in self.split.url:
            return pq.ParquetFile(path)
        if self._fs is None or self._fs[0] != os.getpid():  # a file system of this process, never a parent's
            self._fs = os.getpid(), filesystem(self.split.url)[0]
        return pq.ParquetFile(self._fs[1].open(path, "rb"))

    def read_group(self, group: int, head: int | None = None):
        """Row group ``group`` (its columns of the loader's fields), or only its first ``head`` rows: a window that
        needs just the start of a row group reads its first pages, not all of it."""
        path, index = self.split.row_group_files[group]
        parquet = self._open(path)
        stored, expected = parquet.metadata.row_group(index).num_rows, self.split.row_group_sizes[group]
        if head is not None and head < stored:
            import pyarrow as pa

            batch = next(parquet.iter_batches(batch_size=head, row_groups=[index], columns=list(self.fields),
                                              use_threads=False))
            table = pa.Table.from_batches([batch])
        else:
            table = parquet.read_row_group(index, columns=list(self.fields), use_threads=False)
        if stored != expected or (head is None and table.num_rows != expected):
            raise DataCoverageError(f"row group {index} of {path} holds {stored} rows, its footer said {expected} "
                                    "when the dataset was opened")
        return table

    def read_window(self, window: Window) -> dict[str, Any]:
        """The window's rows, column by column (pyarrow arrays), pieces laid end to end."""
        import pyarrow as pa

        tables = {}
        for g in window.groups:
            pieces = [p for p in window.pieces if p.group == g]
            start, stop = min(p.start for p in pieces), max(p.stop for p in pieces)
            # the head of a row group the next window reads whole (a window's last rows): read only that far
            head = stop if start == 0 and stop <= self.split.row_group_sizes[g] // 2 else None
            tables[g] = self.read_group(g, head)
        parts: dict[str, list] = {name: [] for name in self.fields}
        for piece in window.pieces:
            table = tables[piece.group]
            if piece.step == 1:
                sliced = table.slice(piece.start, piece.stop - piece.start)
            else:
                sliced = table.take(pa.array(np.arange(piece.start, piece.stop, piece.step)))
            for name in self.fields:
                parts[name].extend(sliced.column(name).chunks)
        # one chunk (a window of one row group, the common case with large row groups) is used as it is: no copy
        return {name: chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks) for name, chunks in parts.items()}


# control[]: what the next pass over the data is (set by the training process before each pass)
_SPLIT, _TRAINING, _EPOCH, _START, _RANK, _WORLD, _BATCH, _CHUNK, _RAMP = range(9)
MAX_STRETCHES = 64  # earlier stretches of a resumed epoch (each a resume on another world size) the workers take
WORKER_STAGES = ("read", "decode", "batch")


class _Passes(torch.utils.data.IterableDataset):
    """The workers' side: each pass, the chunks of the epoch that fall to this worker, batch by batch."""

    def __init__(self, splits: dict[str, SplitInfo], task: Task, *, seed: int, shuffle_rows: int):
        super().__init__()
        self.names = sorted(splits)
        self.splits, self.task, self.seed, self.shuffle_rows = splits, task, seed, shuffle_rows
        self.control = torch.zeros(9, dtype=torch.int64).share_memory_()
        # the pass's plan.stretches (an epoch resumed on another world size): their count, then (world, end) pairs
        self.stretches = torch.zeros(1 + 2 * MAX_STRETCHES, dtype=torch.int64).share_memory_()
        self._readers: dict[str, SplitReader] = {}
        self._cached: tuple[Any, Prepared] | None = None
        self._left: tuple[Any, Remainder] | None = None  # the last remainder computed (training.order.remainder)

    def set_pass(self, split: str, *, training: bool, epoch: int, start: int, plan: ShardPlan, batch_size: int,
                 chunk: int, ramp: int) -> None:
        stretches = plan.stretches if training else ()
        if len(stretches) > MAX_STRETCHES:
            raise DatasetError(f"epoch {epoch + 1} was resumed on another world size {len(stretches)} times, more "
                               f"than the loader takes ({MAX_STRETCHES}): resume it on the world size it has now")
        flat = [len(stretches), *(v for stretch in stretches for v in stretch)]
        self.stretches.copy_(torch.tensor(flat + [0] * (len(self.stretches) - len(flat))))
        self.control.copy_(torch.tensor([self.names.index(split), int(training), epoch, start, plan.rank,
                                         plan.world, batch_size, chunk, ramp]))

    def _reader(self, split: SplitInfo) -> SplitReader:
        return self._readers.get(split.url) or self._readers.setdefault(split.url, SplitReader(split, self.task.fields))

    def remainder(self, split: SplitInfo, stretches: tuple[tuple[int, int], ...], world: int, *, epoch: int,
                  batch_size: int) -> Remainder:
        """The rows of ``split`` the ``stretches`` of ``epoch`` left, dealt to ``world`` ranks
        (``training.order.remainder``; with length bucketing the windows cut short are read for their lengths);
        the last one is kept."""
        key = (split.url, stretches, world, epoch, batch_size)
        if self._left is None or self._left[0] != key:
            lengths_of = None
            if self.task.bucket_by_length:
                reader = self._reader(split)

                def lengths_of(window: Window) -> np.ndarray:
                    return self.task.prepare(reader.read_window(window)).lengths

            self._left = key, remainder(split.row_group_sizes, stretches, world, batch_size=batch_size, seed=self.seed,
                                        epoch=epoch, shuffle_rows=self.shuffle_rows, lengths_of=lengths_of)
        return self._left[1]

    def plan(self, split: SplitInfo, rank: int, world: int, stretches: tuple[tuple[int, int], ...] = (), *,
             epoch: int = 0, batch_size: int = 1) -> ShardPlan:
        """Rank ``rank``'s shard: Petastorm's, or with ``stretches`` its part of the rows they left in ``epoch``."""
        if not stretches:
            return plan_shard(split.row_group_sizes, rank, world)
        left = self.remainder(split, stretches, world, epoch=epoch, batch_size=batch_size)
        return resumed_plan(left, rank, world, stretches)

    def order(self, split: SplitInfo, plan: ShardPlan, *, training: bool, epoch: int, batch_size: int) -> EpochOrder:
        left = None
        if training and plan.stretches:
            left = self.remainder(split, plan.stretches, plan.world, epoch=epoch, batch_size=batch_size)
        return epoch_order(split.row_group_sizes, plan, batch_size=batch_size, seed=self.seed, epoch=epoch,
                           shuffle_rows=self.shuffle_rows, training=training, left=left)

    def __iter__(self) -> Iterator[tuple]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        c = [int(v) for v in self.control]
        split = self.splits[self.names[c[_SPLIT]]]
        flat = [int(v) for v in self.stretches[1:1 + 2 * int(self.stretches[0])]]
        stretches = tuple(zip(flat[::2], flat[1::2]))
        plan = self.plan(split, c[_RANK], c[_WORLD], stretches, epoch=c[_EPOCH], batch_size=c[_BATCH])
        order = self.order(split, plan, training=bool(c[_TRAINING]), epoch=c[_EPOCH], batch_size=c[_BATCH])
        for number, (window, first, last) in enumerate(chunks(order, start=c[_START], chunk=c[_CHUNK],
                                                              ramp=c[_RAMP])):
            if number % workers != worker:
                continue
            try:
                clock = StageClock(WORKER_STAGES)  # the stage ledger's worker side, sent with the chunk
                prepared, positions = self._prepare(split, order, window, clock)
                batches, reals = [], []
                for batch in range(first, last):
                    at = (batch - window.first_batch) * order.batch_size
                    index = positions[at:at + order.batch_size]
                    reals.append(max(0, min(len(index), order.local_rows - (batch - order.first) * order.batch_size)))
                    batches.append(index)
                buffers, layouts = self.task.chunk(prepared, batches, decoded=lambda: clock.mark("decode"))
                packed = ({k: torch.from_numpy(v) for k, v in buffers.items()}, layouts)
                ids = prepared.sample_ids
                unreadable = tuple((first + b, int(ids[row]), int(ids[instead]), why)
                                   for b, row, instead, why in prepared.take_read_errors())
                clock.mark("batch")
                work = (*(clock.seconds[s] for s in WORKER_STAGES), time.monotonic())  # monotonic: one clock per host
                yield first, tuple(reals), packed, work, unreadable
            except Exception as exc:  # noqa: BLE001 - handed to the training process, which raises it
                yield _ERROR, (), _picklable(_located(exc, split, window)), None, ()
                return

    def _prepare(self, split: SplitInfo, order: EpochOrder, window: Window,
                 clock: StageClock) -> tuple[Prepared, np.ndarray]:
        key = (split.url, order.epoch, order.rank, order.world, order.training, order.batch_size, order.key, window)
        if self._cached is None or self._cached[0] != key:
            columns = self._reader(split).read_window(window)
            clock.mark("read")
            prepared = self.task.prepare(columns)  # raw pixels: the .npy headers checked and cut off
            clock.mark("decode")
            lengths = prepared.lengths if self.task.bucket_by_length and order.training else None
            self._cached = key, (prepared, order.positions(window, lengths))
        return self._cached[1]


def chunks(order: EpochOrder, *, start: int, chunk: int, ramp: int = 0) -> Iterator[tuple[Window, int, int]]:
    """(window, first batch, end batch) of every chunk of ``order`` from batch ``start`` on. The first ``ramp``
    chunks (one per worker) hold one batch each: a pass's first batches come after one batch's decoding, not a
    whole chunk's."""
    number = 0
    for window in order.windows:
        end = window.first_batch + window.batches
        first = max(window.first_batch, start)
        while first < end:
            size = 1 if number < ramp else chunk
            yield window, first, min(end, first + size)
            first += size
            number += 1


def unpack(packed: tuple) -> list[Any]:
    """The batches of a chunk (``training.collation.Task.chunk``: flat buffers and each batch's layout in them), as
    views of its buffers: one shared-memory transfer (and one pinning) per chunk and dtype, not one per tensor."""
    buffers, layouts = packed

    def cut(item):
        if isinstance(item[0], str):
            dtype, at, shape = item
            return buffers[dtype][at:at + math.prod(shape)].view(shape)
        return tuple(cut(part) for part in item)

    return [cut(layout) for layout in layouts]


def _located(exc: Exception, split: SplitInfo, window: Window) -> Exception:
    """A reader's error naming the files and row groups it was reading (a coverage error names them already)."""
    if isinstance(exc, DataCoverageError):
        return exc
    where = "; ".join(f"{split.row_group_files[g][0]} row group {split.row_group_files[g][1]}" for g in window.groups
                      if g < len(split.row_group_files))
    return DatasetError(f"{exc if isinstance(exc, DatasetError) else f'{type(exc).__name__}: {exc}'} (reading "
                        f"{split.name} of {split.url}: {where or 'rows held in memory'})")


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - an exception that cannot cross processes: keep its type name and message
        return DatasetError(f"{type(exc).__name__}: {exc}")


def _as_is(item):
    return item


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the training process dies (even by SIGKILL), at once; torch's own
    watchdog only notices within seconds."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_init(_worker_id: int, *, die_with_parent: bool = True) -> None:
    """A forked worker: one compute thread, and fsspec's event loop for object stores made anew (the parent's
    loop thread does not exist in the child; a call into it would wait forever). ``die_with_parent`` only for a
    pool started by the main thread: the kernel's parent-death signal follows the *thread* that forked."""
    torch.set_num_threads(1)
    if die_with_parent:
        _die_with_parent()
    try:
        import fsspec.asyn

        fsspec.asyn.reset_lock()
    except ImportError:
        pass
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass


class Loader:
    """Batches of a dataset's splits for one run: ``workers`` persistent processes (0: a thread of this process),
    ``prefetch`` batches prepared ahead, pinned when ``pin_memory`` (a GPU run). The pool is started on the first
    pass with at most as many workers as a pass of the run has chunks: a small split is not slowed down by workers
    that would only start and stop every pass."""

    def __init__(self, splits: dict[str, SplitInfo], spec: DatasetSpec, task: Task, *, workers: int, seed: int,
                 shuffle_rows: int, prefetch: int, pin_memory: bool = False):
        self.spec, self.task, self.workers, self.prefetch, self.pin_memory = spec, task, workers, prefetch, pin_memory
        self.passes = _Passes(splits, task, seed=seed, shuffle_rows=shuffle_rows)
        self._dataloader: torch.utils.data.DataLoader | None = None
        self._at: tuple[SplitInfo, EpochOrder, list[int]] | None = None  # the pass being read, for ``position``
        self.expected = 0  # the next batch the pass hands on
        # rows that did not read, each replaced by a stand-in of its window (training.collation.substitute): the
        # trainer takes them (take_read_errors) into <output>/read_errors.jsonl
        self.read_errors: list[dict[str, Any]] = []

    def _loader(self, workers: int) -> torch.utils.data.DataLoader:
        if self._dataloader is None:
            options: dict[str, Any] = {}
            if workers:
                main = threading.current_thread() is threading.main_thread()
                options = dict(persistent_workers=True, timeout=WORKER_TIMEOUT_S,
                               worker_init_fn=functools.partial(_worker_init, die_with_parent=main),
                               prefetch_factor=max(2, math.ceil(self.prefetch / workers)))
            # Its own generator: every DataLoader iterator draws a seed, which would otherwise come from the global
            # torch RNG and shift the dropout masks of a resumed run against an uninterrupted one.
            self._dataloader = torch.utils.data.DataLoader(
                self.passes, batch_size=None, num_workers=workers, collate_fn=_as_is, pin_memory=self.pin_memory,
                generator=torch.Generator().manual_seed(self.passes.seed % 2**63), **options)
        return self._dataloader

    @property
    def active_workers(self) -> int:
        """The worker processes of the pool (0 before the first pass, and when batches are made in a thread)."""
        return self._dataloader.num_workers if self._dataloader is not None else 0

    @property
    def _in_flight(self) -> int:
        """Chunks per worker that can exist at once: those asked for ahead (the prefetch factor) and one waiting
        for its turn in the training process."""
        return max(2, math.ceil(self.prefetch / max(1, self.workers))) + 1

    def chunk_for(self, batches_per_window: int, batch_size: int) -> int:
        """Batches per chunk: whole windows where reading dominates, at most ``DECODE_CHUNK`` where decoding does,
        within ``BUFFER_BYTES`` for all workers' chunks and, with worker processes, within ``SHM_SHARE`` of the free
        shared memory. Shared memory too small for even one batch per chunk is a ``LaunchError`` saying what to
        give the container: without it the workers would wait for room until ``WORKER_TIMEOUT_S``."""
        one = batch_bytes(self.spec, batch_size)
        budget = BUFFER_BYTES
        free = shm_free_bytes() if self.workers else None
        if free is not None:
            budget = min(budget, int(free * SHM_SHARE) // self._in_flight)
            if one * self.workers > budget:
                need = one * self.workers * self._in_flight / SHM_SHARE
                raise LaunchError(
                    f"{SHM} has {free / 2**20:.0f} MiB free; the loader's {self.workers} worker processes hand their "
                    f"batches (batch {batch_size}: {one / 2**20:.1f} MiB each, {self._in_flight} in flight per "
                    f"worker) to training through it and need about {need / 2**20:.0f} MiB: give the container more "
                    "shared memory (docker run --shm-size=2g; Kubernetes: an emptyDir volume with medium: Memory "
                    "mounted at /dev/shm), or lower train.loader_workers (--loader-workers) or train.batch_size")
        room = budget // max(1, max(1, self.workers) * one)
        return max(1, min(batches_per_window, room, DECODE_CHUNK if self._decodes else batches_per_window))

    @property
    def _decodes(self) -> bool:
        return self.spec.kind == "image" and self.spec.image.codec in ("png", "jpeg")

    def _units(self, plan: ShardPlan, batch_size: int, chunk: int) -> int:
        """The most chunks a pass of this run has (a training epoch or an evaluation of any split), before a pass's
        first chunks are cut to one batch each."""
        most = 0
        for split in self.passes.splits.values():
            shard = plan_shard(split.row_group_sizes, plan.rank, plan.world)
            for training in (True, False):
                order = self.passes.order(split, shard, training=training, epoch=0, batch_size=batch_size)
                most = max(most, sum(1 for _ in chunks(order, start=0, chunk=chunk)))
        return most

    def _where(self) -> str:
        position = self.position()
        if not position:
            return "its data"
        groups = "; ".join(f"{path} row group {index}" for path, index in position["row_groups"])
        return f"{position['split']} batch {position['batch'] + 1} ({groups})"

    def position(self) -> dict[str, Any] | None:
        """Where the pass stands: the batch it hands on next and the files and row groups it comes from (the
        watchdog's heartbeat names them when a rank is stuck waiting for data)."""
        if self._at is None:
            return None
        split, order, ends = self._at
        batch = self.expected
        index = next((i for i, end in enumerate(ends) if batch < end), len(ends) - 1)
        groups = order.windows[index].groups if order.windows else ()
        return {"split": split.name, "batch": batch,
                "row_groups": [[split.row_group_files[g][0], split.row_group_files[g][1]] for g in groups]}

    def batches(self, split: SplitInfo, plan: ShardPlan, *, batch_size: int, epoch: int, training: bool,
                start: int = 0, counter: EpochCounter | None = None) -> Iterator[Any]:
        """The pass's batches from batch ``start`` on, in the epoch's order; with a ``counter``, the shard's rows
        (``first_pass_rows``, including those of the batches before ``start``) and the padding rows are counted,
        the first pass is checked against the plan when the pass ends, and the loader's stages are timed into
        ``counter.loader`` (``training.ledger``). The pass starts here, in the calling thread (the first pass starts
        the worker processes: they live as long as the thread that starts them, see ``_worker_init``); the
        iterator returned may then be read in another thread (``training.feed``)."""
        order = self.passes.order(split, plan, training=training, epoch=epoch, batch_size=batch_size)
        total = order.end
        if training and plan.steps(batch_size) and not plan.local_rows and not plan.stretches:
            raise DataCoverageError(f"rank {plan.rank}: its shard of {split.url} is empty, nothing to fill "
                                    f"{plan.steps(batch_size)} steps with")
        if counter is not None and start > order.first:  # a resumed stretch: its own batches before ``start``
            before = (min(start, total) - order.first) * batch_size
            counter.first_pass_rows += min(before, plan.local_rows)
            counter.padding_rows += max(0, before - plan.local_rows)
        if start >= total:
            return self._delivered(iter(()), plan, split, start, total, counter)
        widest = max(w.batches for w in order.windows)
        chunk = self.chunk_for(widest, batch_size)
        if self._dataloader is None and self.workers:
            workers = max(1, min(self.workers, self._units(plan, batch_size, chunk)))
        else:
            workers = self.active_workers
        ramp = max(1, workers) if self._decodes and chunk > 1 else 0
        # the workers read what this pass is when it starts (one pass at a time: a new pass resets the pool)
        self.passes.set_pass(split.name, training=training, epoch=epoch, start=start, plan=plan,
                             batch_size=batch_size, chunk=chunk, ramp=ramp)
        items = iter(self._loader(workers))
        if not workers:
            items = prefetched(items, self.prefetch)
        self._at, self.expected = (split, order, list(order.first + np.cumsum([w.batches for w in order.windows]))), start
        if counter is not None:
            counter.loader.workers = max(counter.loader.workers, workers)
        return self._delivered(items, plan, split, start, total, counter)

    def _delivered(self, items: Iterator[tuple], plan: ShardPlan, split: SplitInfo, start: int, total: int,
                   counter: EpochCounter | None) -> Iterator[Any]:
        try:
            yield from self._in_order(items, start, counter.loader if counter is not None else None, counter)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
        if self.expected != total:
            raise DataCoverageError(f"rank {plan.rank}: the loader delivered {self.expected - start} of the "
                                    f"{total - start} batches of {split.url} it was asked for")
        if counter is not None:
            counter.check_first_pass()

    def _in_order(self, items: Iterator[tuple], start: int, times, counter: EpochCounter | None) -> Iterator[Any]:
        """The chunks' batches handed on in the epoch's order, counted; the hand-over timed: a chunk's transfer from
        its worker (from when it was sent, or when it was asked for if it was sent before) and the work here."""
        waiting: dict[int, tuple[int, Any]] = {}
        self.expected = start
        iterator = iter(items)
        while True:
            asked = time.monotonic()
            try:
                first, reals, packed, work, unreadable = next(iterator)
            except StopIteration:
                break
            except RuntimeError as exc:  # torch's DataLoader: a worker killed (out of memory?), or gone silent
                if "DataLoader" not in str(exc):
                    raise
                raise DatasetError(f"the loader's worker processes failed while reading {self._where()}: "
                                   f"{exc}") from None
            got = time.monotonic()
            if first == _ERROR:
                raise packed
            for index, (real, batch) in enumerate(zip(reals, unpack(packed)), start=first):
                waiting[index] = (real, batch)
            if unreadable:
                split, order, _ = self._at
                self.read_errors.extend({"split": split.name, "epoch": order.epoch + 1, "batch": int(batch),
                                         "sample_id": int(sample_id), "replaced_by": int(instead), "reason": why}
                                        for batch, sample_id, instead, why in unreadable)
            if times is not None:
                for stage, seconds in zip(WORKER_STAGES, work):
                    times.add(stage, seconds)
                times.add("handover", got - max(asked, work[-1]))
            while self.expected in waiting:
                real, batch = waiting.pop(self.expected)
                self.expected += 1
                if counter is not None:
                    counter.first_pass_rows += real
                    counter.padding_rows += len(batch[1]) - real
                if times is not None:
                    times.add("handover", time.monotonic() - got)
                yield batch
                got = time.monotonic()
            if times is not None:
                times.add("handover", time.monotonic() - got)
        if waiting:
            raise DataCoverageError(f"the loader delivered batches {sorted(waiting)[:5]} out of order and never the "
                                    f"batch {self.expected} before them")

    def take_read_errors(self) -> list[dict[str, Any]]:
        """The unreadable rows met since the last call (split, epoch, batch, sample_id, replaced_by, reason)."""
        taken, self.read_errors = self.read_errors, []
        return taken

    def close(self) -> None:
        """Stop the worker processes (they also stop with this process)."""
        loader, self._dataloader = self._dataloader, None
        iterator = getattr(loader, "_iterator", None) if loader is not None else None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
