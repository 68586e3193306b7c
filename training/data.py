"""Petastorm to PyTorch: each rank streams its own shard of a split, in batches, with equal steps on every rank.

Sharding follows Petastorm (``cur_shard``/``shard_count`` assign row groups by position). Because the preprocessing
job writes row groups of near-equal size, shards are near-equal, but never assumed equal:

* every rank computes, from the Parquet footers, how many rows each rank's shard holds (``plan_shard``);
* a training epoch runs ``ceil(max_rows_of_any_rank / batch_size)`` steps on every rank, a rank whose shard is
  smaller topping up its last batches from a fresh pass over its own shard (so allreduce never waits on a rank
  that has stopped);
* the first pass over the shard is counted, and a count that differs from the footers is an error
  (``DataCoverageError``), never a silently short epoch;
* with fewer row groups than ranks, each rank reads every row group and keeps every ``world``-th row.
"""
from __future__ import annotations

import contextlib
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from pipelines import layout
from training import petastorm_fixes

log = logging.getLogger(__name__)
petastorm_fixes.install()  # Petastorm 0.13.1 can end a read early and unpickles schemas; see training/petastorm_fixes.py
# Sequence datasets hold only plain Parquet types (ScalarCodec), which make_batch_reader reads as they are; its
# warning that a Petastorm dataset wants make_reader is about codec-encoded fields.
warnings.filterwarnings("ignore", message=r"Please use make_reader", category=UserWarning)


class DataCoverageError(layout.DatasetError):
    """The rows a rank or an epoch delivered differ from what the dataset holds."""


@dataclass(frozen=True)
class SplitInfo:
    name: str
    url: str
    rows: int
    row_group_sizes: tuple[int, ...]


@dataclass(frozen=True)
class DatasetInfo:
    url: str                    # the snapshot folder read (a dataset folder resolves to its current snapshot)
    metadata: dict[str, Any]    # the snapshot's metadata.json (its manifest)
    splits: dict[str, SplitInfo]

    @property
    def kind(self) -> str:
        return self.metadata["kind"]

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])

    @property
    def snapshot_id(self) -> str:
        """The committed snapshot's id, the same every time it is read (checkpoints record it)."""
        return self.metadata["snapshot"]["id"]


def load_dataset_info(dataset_url: str) -> DatasetInfo:
    """Metadata plus each split's row groups, of a dataset's current committed snapshot (or of the snapshot folder
    given, to pin one). Uncommitted snapshots are never read; files that disagree with the manifest (missing,
    added, resized, altered: see pipelines.snapshots.reader_checksums) or with the split row counts are refused."""
    from pipelines import snapshots

    url = layout.resolve_snapshot(layout.to_url(dataset_url))
    metadata = layout.read_metadata(url)
    snapshots.check_for_readers(url, metadata)
    splits = {}
    for name, info in metadata["splits"].items():
        split_url = layout.join(url, name)
        sizes = tuple(layout.row_group_sizes(split_url)) if info["rows"] else ()
        if sum(sizes) != info["rows"]:
            raise layout.DatasetError(f"split {split_url}: metadata.json says {info['rows']} rows, "
                                      f"the Parquet files hold {sum(sizes)}: the dataset is incomplete or was altered")
        splits[name] = SplitInfo(name, split_url, info["rows"], sizes)
    return DatasetInfo(url, metadata, splits)


@dataclass(frozen=True)
class ShardPlan:
    rank: int
    world: int
    by_row_group: bool        # False: fewer row groups than ranks, so every rank reads all and keeps every world-th row
    local_rows: int           # rows this rank's shard holds
    rows_per_rank: tuple[int, ...]

    @property
    def max_rows(self) -> int:
        return max(self.rows_per_rank)

    def steps(self, batch_size: int) -> int:
        """Training steps per epoch, the same on every rank."""
        return math.ceil(self.max_rows / batch_size)


def plan_shard(row_group_sizes: tuple[int, ...] | list[int], rank: int, world: int) -> ShardPlan:
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a world of {world}")
    total = sum(row_group_sizes)
    if len(row_group_sizes) >= world:
        per_rank = tuple(sum(n for i, n in enumerate(row_group_sizes) if i % world == r) for r in range(world))
        return ShardPlan(rank, world, True, per_rank[rank], per_rank)
    per_rank = tuple(len(range(r, total, world)) for r in range(world))
    return ShardPlan(rank, world, False, per_rank[rank], per_rank)


@dataclass(frozen=True)
class ReadOptions:
    fields: tuple[str, ...]
    workers: int = 2
    shuffle: bool = True
    shuffle_buffer: int = 1024
    seed: int = 0
    # True: Petastorm's make_batch_reader (whole row groups as columns, as Parquet stores them; never unpickles the
    # stored schema). False: make_reader, which decodes Petastorm codecs (images to arrays) and for that needs the
    # Unischema pickled in the dataset (and pyspark to unpickle it): only for reading a dataset the way plain
    # Petastorm does; training and evaluation never use it.
    columnar: bool = True
    sort_key: Callable[[Any], Any] | None = None  # training: batch rows of similar key (length) together
    prefetch: int = 0                            # batches collated ahead in a background thread (0: none)


def _reader_kwargs(plan: ShardPlan, options: ReadOptions, pass_seed: int) -> dict[str, Any]:
    if plan.by_row_group:
        return dict(cur_shard=plan.rank, shard_count=plan.world, workers_count=options.workers,
                    shuffle_row_groups=options.shuffle, shuffle_rows=options.shuffle, seed=pass_seed)
    # One worker and no shuffling keep the row order fixed, so "every world-th row" is a partition of the split.
    return dict(workers_count=1, shuffle_row_groups=False, shuffle_rows=False)


def _columnar_rows(reader, fields: tuple[str, ...]) -> Iterator[Any]:
    """Rows out of make_batch_reader's column batches (one per row group), as light namedtuples."""
    row_type = _row_type(fields)
    for batch in reader:
        yield from map(row_type._make, zip(*(getattr(batch, name) for name in fields)))


_ROW_TYPES: dict[tuple[str, ...], type] = {}


def _row_type(fields: tuple[str, ...]) -> type:
    import collections

    if fields not in _ROW_TYPES:
        _ROW_TYPES[fields] = collections.namedtuple("Row", fields)
    return _ROW_TYPES[fields]


def legacy_filesystem(url: str):
    """For object stores: the fsspec filesystem wrapped in pyarrow's legacy interface, or None for local files.

    Petastorm 0.13.1 hands s3:// datasets to pyarrow 14 as a bare fsspec filesystem, which sends them down the new
    Dataset API, and that refuses Petastorm's ``validate_schema`` argument ("Keyword 'validate_schema' is not yet
    supported with the new Dataset API"). Wrapped, they take the legacy path that local files take. Credentials and
    endpoint come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...).
    """
    import fsspec

    scheme = url.split("://", 1)[0] if "://" in url else "file"
    if scheme == "file":
        return None
    return _legacy_wrapper()(fsspec.filesystem(scheme))


def _legacy_wrapper():
    """pyarrow's DaskFileSystem (the legacy wrapper of an fsspec filesystem) with the two methods it leaves out;
    its S3FSWrapper calls a private s3fs method that is a coroutine in current s3fs."""
    from pyarrow.filesystem import DaskFileSystem

    class FsspecLegacyFileSystem(DaskFileSystem):
        def isdir(self, path):
            return self.fs.isdir(path)

        def isfile(self, path):
            return self.fs.isfile(path)

    return FsspecLegacyFileSystem


def read_shard_once(split: SplitInfo, plan: ShardPlan, options: ReadOptions, pass_seed: int) -> Iterator[Any]:
    """Every row of this rank's shard exactly once (namedtuples of the requested fields)."""
    from petastorm import make_batch_reader, make_reader

    if split.rows == 0:
        return
    make = make_batch_reader if options.columnar else make_reader
    schema = petastorm_fixes.arrow_schema_only() if options.columnar else contextlib.nullcontext()
    with schema:  # columnar: the columns as Parquet stores them; the pickled schema is never loaded
        reader = make(split.url, schema_fields=list(options.fields), reader_pool_type="thread", num_epochs=1,
                      filesystem=legacy_filesystem(split.url), **_reader_kwargs(plan, options, pass_seed))
    try:
        rows = _columnar_rows(reader, options.fields) if options.columnar else iter(reader)
        for position, row in enumerate(rows):
            if plan.by_row_group or position % plan.world == plan.rank:
                yield row
    finally:  # not `with reader:`, whose exit prints "Cache cleanup complete." to stdout on every pass
        reader.stop()
        reader.join()


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


class EpochCounter:
    """Counts the first-pass rows of one epoch on this rank and checks them against the plan."""

    def __init__(self, split: SplitInfo, plan: ShardPlan):
        self.split, self.plan, self.first_pass_rows, self.padding_rows = split, plan, 0, 0

    def check_first_pass(self) -> None:
        if self.first_pass_rows != self.plan.local_rows:
            raise DataCoverageError(
                f"rank {self.plan.rank}/{self.plan.world} read {self.first_pass_rows} rows of split "
                f"{self.split.url}, but its shard holds {self.plan.local_rows} (Parquet footers): refusing to train "
                "on silently missing data")


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
        rows = read_shard_once(split, plan, options, pass_seed=options.seed + 7919 * epoch + pass_index)
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
    for row in read_shard_once(split, plan, eval_options, pass_seed=options.seed):
        pending.append(row)
        if len(pending) == batch_size:
            yield collate(pending)
            pending = []
    if pending:
        yield collate(pending)


def _labels_and_ids(rows: list[Any]):
    import torch

    y = torch.from_numpy(np.fromiter((row.label for row in rows), dtype=np.int64, count=len(rows)))
    ids = torch.from_numpy(np.fromiter((row.sample_id for row in rows), dtype=np.int64, count=len(rows)))
    return y, ids


class ImageDecoder:
    """Decodes a batch of stored images (PNG or JPEG bytes, or .npy bytes for the raw codec) on a thread pool:
    OpenCV releases the GIL while decoding, so the threads really run in parallel."""

    def __init__(self, codec: str, threads: int):
        from concurrent.futures import ThreadPoolExecutor

        self.codec, self.threads = codec, threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="bigtrain-decode") if threads > 1 else None

    def decode(self, value: bytes) -> np.ndarray:
        import io

        import cv2

        if self.codec == "raw":
            return np.load(io.BytesIO(value))
        image = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:  # the job wrote only decodable images: the stored bytes were damaged since
            raise layout.DatasetError(f"a stored {self.codec} image cannot be decoded: the dataset's files were "
                                      "damaged after it was written (`bigtrain verify DATASET` names the file)")
        return image[:, :, ::-1] if image.ndim == 3 else image  # OpenCV decodes to BGR

    def decode_all(self, values: list[bytes]) -> list[np.ndarray]:
        return [self.decode(v) for v in values]

    def __call__(self, values: list[bytes]) -> list[np.ndarray]:
        if self.pool is None:
            return self.decode_all(values)
        # One task per thread, not per image: a future costs about as much as decoding a small image.
        step = -(-len(values) // self.threads)
        chunks = self.pool.map(self.decode_all, [values[i:i + step] for i in range(0, len(values), step)])
        return [image for chunk in chunks for image in chunk]


def image_collate(rows: list[Any], decoder: ImageDecoder | None = None):
    """Rows -> ((images uint8 (B, C, H, W),), labels int64 (B,), sample ids int64 (B,)).

    Images stay uint8 until they are on the training device (a quarter of float32's bytes to copy); the models
    scale them to [0, 1] there. With a ``decoder`` the rows hold the stored bytes (columnar reading) and are
    decoded here, as a batch."""
    import torch

    images = np.stack(decoder([row.image for row in rows]) if decoder else [row.image for row in rows])
    if images.ndim == 3:  # grayscale is stored as (H, W)
        images = images[:, :, :, None]
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return (x,), *_labels_and_ids(rows)


def sequence_collate(rows: list[Any], *, dtype: str, longest_first: bool = False):
    """Rows -> ((token ids int64 (B, T) padded with 0 to the longest in the batch, lengths int64 (B,)), labels, ids).

    ``longest_first`` orders the batch by length, longest first (the order of rows in a training or evaluation
    batch means nothing, and the RNNs then pack it without reordering on the GPU)."""
    import torch

    lengths = np.fromiter((row.length for row in rows), dtype=np.int64, count=len(rows))
    if longest_first:
        order = np.argsort(-lengths, kind="stable")
        rows, lengths = [rows[i] for i in order], lengths[order]
    tokens = np.zeros((len(rows), int(lengths.max())), dtype=np.int64)
    for i, row in enumerate(rows):
        tokens[i, :lengths[i]] = np.frombuffer(row.tokens, dtype=dtype)
    return (torch.from_numpy(tokens), torch.from_numpy(lengths)), *_labels_and_ids(rows)


@dataclass(frozen=True)
class Task:
    """What the loader and the loop need to know about a dataset kind."""
    fields: tuple[str, ...]
    collate: Callable[[list[Any]], Any]
    columnar: bool
    sort_key: Callable[[Any], Any] | None
    host_inputs: tuple[int, ...] = ()   # model inputs that stay on the host (sequence lengths, read by packing)


def task_for(metadata: dict[str, Any], *, length_bucketing: bool = True, decode_threads: int = 2) -> Task:
    """Both kinds are read through Petastorm's columnar reader (make_batch_reader): images arrive as their stored
    bytes and are decoded a batch at a time on ``decode_threads`` threads; sequences are already compact ids."""
    import functools

    kind = metadata["kind"]
    if kind == "image":
        decoder = ImageDecoder(metadata["image"]["codec"], decode_threads)
        return Task(("image", "label", "sample_id"), functools.partial(image_collate, decoder=decoder),
                    columnar=True, sort_key=None)
    if kind == "sequence":
        collate = functools.partial(sequence_collate, dtype=metadata["sequence"]["token_dtype"], longest_first=True)
        return Task(("tokens", "length", "label", "sample_id"), collate, columnar=True,
                    sort_key=_length if length_bucketing else None, host_inputs=(1,))
    raise layout.DatasetError(f"dataset kind {kind!r} is not image or sequence")


def _length(row: Any) -> int:
    return int(row.length)
