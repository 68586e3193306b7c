"""Loader throughput: bigtrain's training loader against the format's per-core limit, plain Petastorm, and memory."""
from __future__ import annotations

import collections
import glob
import os

import numpy as np
import torch

from benchmarks.common import Result, best_rate, check, cores
from dataset.info import load_dataset_info
from training.batching import training_batches
from training.collation import sequence_collate, task_for
from training.reading import ReadOptions
from training.shards import EpochCounter, plan_shard

BATCH = 64
Row = collections.namedtuple("Row", "tokens length label sample_id")


def bigtrain_loader(dataset: str, workers: int) -> tuple[callable, int]:
    from core.config import load_section
    from training.config import TrainConfig

    config = load_section("train", TrainConfig)
    info = load_dataset_info(dataset)
    task, split = task_for(info.spec, decode_threads=workers), info.splits["train"]
    plan = plan_shard(split.row_group_sizes, 0, 1)
    options = ReadOptions(task.fields, workers=workers, shuffle=True, shuffle_buffer=config.shuffle_buffer, seed=1,
                          columnar=task.columnar, sort_key=task.sort_key, prefetch=config.prefetch_batches)

    def run() -> int:
        n = 0
        for _, y, _ in training_batches(split, plan, options, batch_size=BATCH, epoch=0, collate=task.collate,
                                        counter=EpochCounter(split, plan)):
            n += len(y)
        return n
    return run, split.rows


def _files(dataset: str) -> list[str]:
    return sorted(glob.glob(os.path.join(train_dir(dataset), "*.parquet")))


def _decode_image(value: bytes, codec: str) -> np.ndarray:
    import cv2

    if codec == "raw":
        import io
        return np.load(io.BytesIO(value))
    image = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_UNCHANGED)
    return image[:, :, ::-1] if image.ndim == 3 else image


def pyarrow_loop(dataset: str) -> callable:
    """(a) One thread, no framework: pyarrow batches, the same decoding and the same tensors as the loader."""
    import pyarrow.parquet as pq

    spec = load_dataset_info(dataset).spec
    files = _files(dataset)

    def run() -> int:
        n = 0
        for path in files:
            if spec.kind == "image":
                codec = spec.image.codec
                for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH, columns=["image", "label"]):
                    images = np.stack([_decode_image(v, codec) for v in batch.column("image").to_pylist()])
                    if images.ndim == 3:
                        images = images[..., None]
                    torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float().div_(255.0)
                    n += len(images)
            else:
                dtype = spec.sequence.token_dtype
                for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH, columns=list(Row._fields)):
                    rows = list(map(Row._make, zip(*(batch.column(c).to_pylist() for c in Row._fields))))
                    sequence_collate(rows, dtype=dtype)
                    n += len(rows)
        return n
    return run


def train_dir(dataset: str) -> str:
    """The train split's folder in the dataset's current snapshot (<dataset>/snapshots/<id>/train)."""
    return load_dataset_info(dataset).splits["train"].url[len("file://"):]


def petastorm_plain(dataset: str) -> callable:
    """(b) What a user gets without bigtrain: make_reader + petastorm.pytorch.DataLoader, defaults."""
    from petastorm import make_reader
    from petastorm.pytorch import DataLoader

    fields = ["image", "label"] if load_dataset_info(dataset).kind == "image" else ["tokens", "length", "label"]
    url = "file://" + train_dir(dataset)

    def run() -> int:
        n = 0
        with DataLoader(make_reader(url, num_epochs=1, schema_fields=fields), batch_size=BATCH) as loader:
            for batch in loader:
                n += len(batch["label"])
        return n
    return run


def in_memory(dataset: str) -> callable:
    """(c) The ceiling: the same batches already collated in memory."""
    info = load_dataset_info(dataset)
    task, split = task_for(info.spec), info.splits["train"]
    plan = plan_shard(split.row_group_sizes, 0, 1)
    options = ReadOptions(task.fields, workers=2, shuffle=False, columnar=task.columnar)
    batches = list(training_batches(split, plan, options, batch_size=BATCH, epoch=0, collate=task.collate,
                                    counter=EpochCounter(split, plan)))

    def run() -> int:
        n = 0
        for inputs, y, _ in batches:
            inputs[0].sum()  # touch the data, as a training step would
            n += len(y)
        return n
    return run


def loader_results(name: str, dataset: str, workers: int) -> list[Result]:
    group = f"loader/{name}"
    loader, _ = bigtrain_loader(dataset, workers)
    ours = best_rate(loader)
    limit = best_rate(pyarrow_loop(dataset))
    ceiling = best_rate(in_memory(dataset))
    try:
        plain = best_rate(petastorm_plain(dataset))
        plain_text = f"{plain:,.0f}/s"
    except Exception as exc:  # noqa: BLE001 - report what a plain Petastorm user hits
        plain, plain_text = None, f"fails: {type(exc).__name__}: {str(exc)[:80]}"
    used = min(workers, cores())
    efficiency = ours / (limit * used)
    return [
        Result(group, "efficiency = loader / (pyarrow loop x cores)", efficiency, "",
               f"loader {ours:,.0f}/s with {workers} threads on {used} cores; pyarrow 1 thread {limit:,.0f}/s",
               ">= 0.7", check(efficiency, ">=", 0.7)),
        Result(group, "loader / plain Petastorm", None if plain is None else ours / plain, "x",
               f"plain make_reader + DataLoader {plain_text}",
               ">= 3" if name == "images" else "", check(None if plain is None else ours / plain, ">=", 3)
               if name == "images" else None),
        Result(group, "loader / in-memory tensors", ours / ceiling, "", f"in memory {ceiling:,.0f}/s"),
    ]
