"""Loader throughput: bigtrain's training loader against the decode-only limit of the same bytes (in as many
processes as the loader may use), plain Petastorm as a competent user sets it up, the image codecs, and the time to
the first batch of a resumed epoch."""
from __future__ import annotations

import glob
import multiprocessing
import os

import numpy as np

from benchmarks.common import Result, check, cores, rate, seconds
from compat import petastorm as petastorm_compat
from core.config import load_section
from dataset.info import load_dataset_info
from dataset.rows import LABEL, rows_of
from training.collation import ImageDecoder, padded_ids
from training.config import TrainConfig
from training.petastorm_source import PetastormSource
from training.shards import EpochCounter, plan_shard

BATCH = 64


def open_source(dataset: str, workers: int, *overrides: str) -> PetastormSource:
    config = load_section("train", TrainConfig, overrides=[f"train.loader_workers={workers}", "train.seed=1",
                                                           *overrides])
    return PetastormSource.open(dataset, config)


def epoch_runner(source: PetastormSource, *, batch_size: int = BATCH):
    """A callable that reads one training epoch of the whole split (a world of one) and returns its rows; the
    source's worker pool persists between calls, as it does between a run's epochs."""
    split = source.splits["train"]
    plan = plan_shard(split.row_group_sizes, 0, 1)
    epochs = iter(range(10**6))

    def run() -> int:
        n = 0
        for _, y, _ in source.training_batches(plan, batch_size=batch_size, epoch=next(epochs),
                                               counter=EpochCounter(split, plan)):
            n += len(y)
        return n
    return run


def train_dir(dataset: str) -> str:
    """The train split's folder in the dataset's current snapshot (<dataset>/snapshots/<id>/train)."""
    return load_dataset_info(dataset).splits["train"].url[len("file://"):]


def _files(dataset: str) -> list[str]:
    return sorted(glob.glob(os.path.join(train_dir(dataset), "*.parquet")))


def _column(dataset: str, name: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_arrays([chunk for f in _files(dataset) for chunk in pq.read_table(f, columns=[name])
                             .column(name).chunks])


def _decode_loop(codec: str, values: list[bytes], conn) -> None:
    """A decode-only process: each time it is asked, decode its share (inherited at fork), batch by batch."""
    decoder = ImageDecoder(codec)
    while conn.recv():
        for start in range(0, len(values), BATCH):
            decoder(values[start:start + BATCH])
        conn.send(len(values))


def decode_limit(dataset: str, processes: int):
    """Images/s of decoding the train split's stored bytes in ``processes`` processes that already hold them in
    memory: what the loader would reach if reading, shuffling, batching and handing over cost nothing.
    Returns (run, close)."""
    info = load_dataset_info(dataset)
    values = _column(dataset, "image").to_pylist()
    context = multiprocessing.get_context("fork")
    pipes, children = [], []
    for i in range(processes):
        parent, child = context.Pipe()
        process = context.Process(target=_decode_loop, args=(info.spec.image.codec, values[i::processes], child),
                                  daemon=True)
        process.start()
        pipes.append(parent)
        children.append(process)

    def run() -> int:
        for pipe in pipes:
            pipe.send(True)
        return sum(pipe.recv() for pipe in pipes)

    def close() -> None:
        for pipe, process in zip(pipes, children):
            pipe.send(False)
            process.join(timeout=10)
    return run, close


def token_limit(dataset: str):
    """Rows/s of one thread turning the stored token bytes (in memory) into padded id matrices, batch by batch."""
    info = load_dataset_info(dataset)
    tokens, lengths = _column(dataset, "tokens"), np.asarray(_column(dataset, "length"))
    dtype = info.spec.sequence.token_dtype

    def run() -> int:
        for start in range(0, len(lengths), BATCH):
            padded_ids(tokens.slice(start, BATCH), lengths[start:start + BATCH], dtype=dtype)
        return len(lengths)
    return run


def petastorm_reader(dataset: str, *, pool: str, workers: int | None, batched: bool):
    """What a user gets without bigtrain, set up as a competent user would: one reader for the whole run
    (``num_epochs=None``, so passes after the first pay no start-up), the seed set (an unset seed with row
    shuffling busy-polls); ``make_reader`` (row by row, Petastorm's codecs) into ``petastorm.pytorch.DataLoader``,
    or ``make_batch_reader`` with a ``TransformSpec`` that decodes whole row groups in the pool's workers. Returns
    (run, close): ``run`` reads one split's worth of rows from the stream.

    Petastorm's ventilator keeps up to ``workers x (1 + _VENTILATE_EXTRA_ROWGROUPS)`` row groups in flight (8 for a
    pool of 2, 40 for the default 10 threads), decoded ahead while the reader waits to be read: on a small split that
    is several passes. The first ``run`` (the warm-up of ``rate``) also reads that many row groups, so the timed runs
    see the pool's steady rate, not a drained backlog (before: a process pool of 2 "read" PNG images at up to 1.5x
    the decode-only limit of 2 processes)."""
    petastorm_compat.install()  # before Petastorm's first import
    from petastorm import TransformSpec, make_batch_reader, make_reader
    from petastorm.pytorch import DataLoader
    from petastorm.reader import _VENTILATE_EXTRA_ROWGROUPS

    info = load_dataset_info(dataset)
    split = info.splits["train"]
    url, rows = "file://" + train_dir(dataset), split.rows
    backlog = (workers or 10) * (1 + _VENTILATE_EXTRA_ROWGROUPS) * max(split.row_group_sizes)  # first run only
    extra = {} if workers is None else {"workers_count": workers}
    fields = [*rows_of(info.kind).features, LABEL]
    if batched:
        codec = info.spec.image.codec
        transform = TransformSpec(_decode_frame(codec), edit_fields=[("image", np.uint8, tuple(info.spec.image.shape),
                                                                      False)])
        with petastorm_compat.arrow_schema_only():
            reader = make_batch_reader(url, num_epochs=None, reader_pool_type=pool, seed=1, transform_spec=transform,
                                       schema_fields=fields, **extra)
        stream = (len(batch.label) for batch in reader)
    else:
        reader = make_reader(url, num_epochs=None, schema_fields=fields, reader_pool_type=pool, seed=1, **extra)
        stream = (len(batch["label"]) for batch in DataLoader(reader, batch_size=BATCH))

    def run() -> int:
        nonlocal backlog
        drain, backlog = backlog, 0
        n = 0
        while n < rows + drain:
            n += next(stream)
        return n

    def close() -> None:
        reader.stop()
        reader.join()
    return run, close


def _decode_frame(codec: str):
    def decode(frame):
        decoder = ImageDecoder(codec)
        frame["image"] = list(decoder(frame["image"].tolist()))
        return frame
    return decode


def loader_results(name: str, dataset: str, workers: int) -> list[Result]:
    """The loader (``workers`` processes) against the decode-only limit in as many processes and plain Petastorm."""
    group = f"loader/{name}"
    kind = load_dataset_info(dataset).kind
    source = open_source(dataset, workers)
    try:
        ours = rate(epoch_runner(source))
    finally:
        source.close()
    used = min(workers, cores())
    results = []
    if kind == "image":
        run, close = decode_limit(dataset, used)
        try:
            limit = rate(run)
        finally:
            close()
        ratio = ours.median / limit.median
        codec = load_dataset_info(dataset).spec.image.codec
        results.append(Result(group, f"loader / decode-only limit ({codec}, {used} processes)", ratio, "",
                              f"loader {ours.text()} with {workers} workers; decode only {limit.text()}",
                              ">= 0.75", check(ratio, ">=", 0.75)))
    else:
        limit = rate(token_limit(dataset))
        ratio = ours.median / (limit.median * used)
        results.append(Result(group, "loader / (per-core limit x cores)", ratio, "",
                              f"loader {ours.text()} with {workers} workers on {used} cores; one thread "
                              f"{limit.text()}", ">= 0.75", check(ratio, ">=", 0.75)))
    baselines = [("plain Petastorm make_reader, defaults", dict(pool="thread", workers=None, batched=False),
                  ">= 3" if kind == "image" else "", 3.0),
                 (f"Petastorm make_reader, process pool of {workers}", dict(pool="process", workers=workers,
                                                                             batched=False), "", None)]
    if kind == "image":
        baselines.append((f"Petastorm make_batch_reader + TransformSpec, process pool of {workers}",
                          dict(pool="process", workers=workers, batched=True), ">= 1.5", 1.5))
    for label, options, target, bound in baselines:
        try:
            run, close = petastorm_reader(dataset, **options)
            try:
                theirs = rate(run)
            finally:
                close()
            value, figures = ours.median / theirs.median, f"{label}: {theirs.text()}"
        except Exception as exc:  # noqa: BLE001 - report what a plain Petastorm user hits
            value, figures = None, f"{label} fails: {type(exc).__name__}: {str(exc)[:80]}"
        results.append(Result(group, f"loader / {label.split(',')[0]}" + (
            " (process pool)" if options["pool"] == "process" else ""), value, "x", figures, target,
            check(value, ">=", bound) if bound else None))
    return results


def resume_results(dataset: str, workers: int) -> list[Result]:
    """Time to the first batch of an epoch resumed at 10 % and at 90 % of it (the pool already running)."""
    source = open_source(dataset, workers)
    split = source.splits["train"]
    plan = plan_shard(split.row_group_sizes, 0, 1)
    steps = plan.steps(BATCH)

    def first_batch_at(fraction: float):
        def run() -> None:
            batches = source.training_batches(plan, batch_size=BATCH, epoch=0, counter=EpochCounter(split, plan),
                                              start=int(steps * fraction))
            next(batches)
            batches.close()
        return run

    try:
        epoch_runner(source)()  # start the pool
        early, late = seconds(first_batch_at(0.1)), seconds(first_batch_at(0.9))
    finally:
        source.close()
    ratio = late.median / early.median
    return [Result("loader/resume", "first batch of an epoch resumed at 90% / at 10%", ratio, "x",
                   f"{steps} steps: at 10% {early.text('.3f', ' s')}, at 90% {late.text('.3f', ' s')}",
                   "<= 1.5", check(ratio, "<=", 1.5))]


def codec_results(spark, raw: str, work: str, workers: int = 2) -> list[Result]:
    """Bytes per sample and loader throughput for each image codec, on the same images."""
    import pyarrow.parquet as pq

    from benchmarks.preprocess import run_image_job

    results, rates = [], {}
    for codec in ("png", "jpeg", "raw"):
        out = os.path.join(work, f"codec-{codec}")
        run_image_job(spark, raw, out, codec=codec)
        files = glob.glob(os.path.join(train_dir(out), "*.parquet"))
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        size = sum(os.path.getsize(f) for f in files) / rows
        source = open_source(out, workers)
        try:
            rates[codec] = rate(epoch_runner(source))
        finally:
            source.close()
        results.append(Result("codecs", f"{codec}: bytes per sample", size, "B",
                              f"loader {rates[codec].text()} with {workers} workers"))
    for codec in ("jpeg", "raw"):
        ratio = rates[codec].median / rates["png"].median
        results.append(Result("codecs", f"loader {codec} / png", ratio, "x", "", ">= 5" if codec == "raw" else "",
                              check(ratio, ">=", 5) if codec == "raw" else None))
    return results

