"""Everything a reader gets out of a committed bigtrain snapshot, as JSON: the record that two stacks must agree on.

``reads(snapshot)`` reads every split with Petastorm's ``make_reader`` (the stored codecs, stored order), with
``make_batch_reader`` (columns as Parquet stores them, stored order), in seeded shuffled orders (several
workers, seeds 0 and 7), and with bigtrain's own loader (an epoch of batches, seeded). Image pixels and token
bytes enter as SHA-256 digests, so the record stays small but any changed value changes it.

``python -m tests.compat.stack_reads SNAPSHOT`` prints the record: the cross-stack test runs it under the other
stack's Python.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import sys

import numpy as np

from compat import petastorm as petastorm_compat
from dataset.layout import SPLITS


def _value(value):
    if isinstance(value, np.ndarray):
        return {"sha256": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest(),
                "shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, (bytes, np.bytes_)):
        return {"sha256": hashlib.sha256(bytes(value)).hexdigest()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _petastorm(url: str, *, columnar: bool, **options) -> list[dict]:
    from petastorm import make_batch_reader, make_reader

    make = make_batch_reader if columnar else make_reader
    schema = petastorm_compat.arrow_schema_only() if columnar else contextlib.nullcontext()
    with schema:
        reader = make(url, reader_pool_type="thread", num_epochs=1, **options)
    try:
        if not columnar:
            return [{k: _value(v) for k, v in row._asdict().items()} for row in reader]
        rows = []
        for batch in reader:
            fields = batch._asdict()
            for i in range(len(fields["sample_id"])):
                rows.append({k: _value(v[i]) for k, v in fields.items()})
        return rows
    finally:
        reader.stop()
        reader.join()


def _loader_epoch(snapshot: str) -> list[list[int]]:
    from core.config import load_section
    from training.config import TrainConfig
    from training.petastorm_source import PetastormSource
    from training.shards import EpochCounter, plan_shard

    config = load_section("train", TrainConfig, overrides=["train.loader_workers=1", "train.seed=5",
                                                           "train.shuffle_buffer=8"])
    source = PetastormSource.open(snapshot, config)
    try:
        split = source.splits["train"]
        plan = plan_shard(split.row_group_sizes, 0, 1)
        counter = EpochCounter(split, plan)
        batches = []
        for inputs, labels, ids in source.training_batches(plan, batch_size=4, epoch=1, counter=counter):
            digest = hashlib.sha256(b"".join(np.ascontiguousarray(t.numpy()).tobytes() for t in inputs)).hexdigest()
            batches.append([[int(i) for i in ids], [int(x) for x in labels], digest])
        return batches
    finally:
        source.close()


def reads(snapshot: str) -> dict:
    petastorm_compat.install()
    record: dict = {}
    for split in SPLITS:
        url = f"file://{snapshot}/{split}"
        ids = lambda rows: [r["sample_id"] for r in rows]  # noqa: E731
        record[split] = {
            "make_reader": _petastorm(url, columnar=False, workers_count=1, shuffle_row_groups=False),
            "make_batch_reader": _petastorm(url, columnar=True, workers_count=1, shuffle_row_groups=False),
            "make_reader_seed_7": ids(_petastorm(url, columnar=False, workers_count=3, seed=7, shuffle_rows=True)),
            "make_batch_reader_seed_0": ids(_petastorm(url, columnar=True, workers_count=2, seed=0,
                                                       shuffle_rows=True)),
        }
    record["loader_epoch_1"] = _loader_epoch(snapshot)
    return record


if __name__ == "__main__":
    json.dump(reads(sys.argv[1]), sys.stdout, sort_keys=True)
