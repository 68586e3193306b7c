"""The loader: shard plans, the epoch order (a function of seed, epoch, rank and world size only), equal steps per
rank on uneven shards, coverage checks, exactly-once evaluation, resume without reading what was trained."""
from __future__ import annotations

import collections
import json
import shutil
import threading
from dataclasses import replace

import numpy as np
import pytest

from core.config import load_section
from core.errors import DatasetError
from dataset.info import load_dataset_info
from training import loader as loader_module
from training.config import TrainConfig
from training.order import epoch_order, shard_pieces
from training.petastorm_source import PetastormSource
from training.shards import DataCoverageError, EpochCounter, plan_shard


def source_for(dataset, workers, *overrides):
    config = load_section("train", TrainConfig, overrides=[f"train.loader_workers={workers}", "train.seed=5",
                                                           "train.shuffle_buffer=8", *overrides])
    return PetastormSource.open(str(dataset), config)


def epoch_ids(source, plan, *, epoch=0, batch_size=5, start=0, counter=None):
    counter = counter or EpochCounter(source.splits["train"], plan)
    return [[int(i) for i in ids] for _, _, ids in source.training_batches(plan, batch_size=batch_size, epoch=epoch,
                                                                           counter=counter, start=start)]


def test_plan_shard_follows_petastorms_round_robin_over_row_groups():
    sizes = [5, 4, 4, 3, 3]
    plans = [plan_shard(sizes, r, 2) for r in range(2)]
    assert [p.local_rows for p in plans] == [5 + 4 + 3, 4 + 3]
    assert all(p.by_row_group and p.max_rows == 12 and p.steps(5) == 3 for p in plans)


def test_plan_shard_with_fewer_row_groups_than_ranks_splits_rows():
    plans = [plan_shard([7, 3], r, 3) for r in range(3)]
    assert [p.local_rows for p in plans] == [4, 3, 3] and not plans[0].by_row_group
    with pytest.raises(ValueError, match="rank 3"):
        plan_shard([7], 3, 3)


def _rows_of(order, sizes):
    """(row group, row) of every position of an epoch order, in batch order."""
    starts = np.cumsum((0, *sizes))
    rows = []
    for window in order.windows:
        laid = [starts[p.group] + r for p in window.pieces for r in range(p.start, p.stop, p.step)]
        rows.extend(np.asarray(laid)[order.positions(window)].tolist())
    return rows


@pytest.mark.parametrize("sizes,world", [([5, 4, 4, 3, 3], 2), ([40, 40, 37], 2), ([7, 3], 3), ([50], 1)])
def test_an_epoch_order_trains_every_row_of_the_shard_once_then_pads_from_it(sizes, world):
    seen = []
    for rank in range(world):
        plan = plan_shard(sizes, rank, world)
        order = epoch_order(sizes, plan, batch_size=4, seed=3, epoch=0, shuffle_rows=8)
        rows = _rows_of(order, sizes)
        assert len(rows) == plan.steps(4) * 4 == order.batches * 4  # equal steps on every rank
        first = rows[:plan.local_rows]
        assert len(set(first)) == plan.local_rows  # the shard's rows first, each once...
        assert set(rows[plan.local_rows:]) <= set(first)  # ...then padding from the same shard
        assert all(w.rows % 4 == 0 for w in order.windows[:-1])  # windows hold whole batches
        seen += first
    assert sorted(seen) == list(range(sum(sizes)))  # the ranks' shards partition the split


def test_the_order_depends_on_seed_epoch_rank_and_world_only():
    sizes = [30, 30, 30, 30]
    plan = plan_shard(sizes, 0, 2)

    def rows(seed=1, epoch=0, plan=plan):
        return _rows_of(epoch_order(sizes, plan, batch_size=8, seed=seed, epoch=epoch, shuffle_rows=16), sizes)

    assert rows() == rows()
    shard = list(range(0, 30)) + list(range(60, 90))  # row groups 0 and 2; the 4 rows after them are padding
    assert rows() != rows(epoch=1) and sorted(rows()[:60]) == sorted(rows(epoch=1)[:60]) == shard
    assert rows() != rows(seed=2)
    assert rows(seed=0) != rows(seed=0, epoch=1)  # seed 0 shuffles like any other seed
    evaluation = epoch_order(sizes, plan, batch_size=8, seed=1, epoch=0, shuffle_rows=16, training=False)
    assert _rows_of(evaluation, sizes) == list(range(0, 30)) + list(range(60, 90))  # stored order, no padding


def test_length_bucketing_batches_rows_of_similar_length():
    sizes = [256]
    plan = plan_shard(sizes, 0, 1)
    order = epoch_order(sizes, plan, batch_size=16, seed=1, epoch=0, shuffle_rows=256)
    lengths = np.random.default_rng(0).integers(1, 200, size=256)
    positions = order.positions(order.windows[0], lengths)
    batches = lengths[positions].reshape(16, 16)
    assert sorted(positions.tolist()) == list(range(256))
    assert (batches.max(1) - batches.min(1)).mean() < 40  # unbucketed: about 180
    assert not np.all(np.diff(batches.min(1)) >= 0)  # the batches themselves come in random order


def test_pieces_of_a_row_sharded_split_take_every_world_th_row():
    pieces = shard_pieces([7, 3], plan_shard([7, 3], 1, 3))
    assert [(p.group, list(range(p.start, p.stop, p.step))) for p in pieces] == [(0, [1, 4]), (1, [0])]


@pytest.mark.spark
@pytest.mark.parametrize("world", [1, 2, 3, 4])  # 4 > 3 row groups: every rank reads all and keeps every 4th row
def test_ranks_read_disjoint_shards_covering_the_split_in_equal_steps(image_dataset, world):
    source = source_for(image_dataset, 2)
    split = source.splits["train"]
    shards, steps = [], []
    try:
        for rank in range(world):
            plan = plan_shard(split.row_group_sizes, rank, world)
            shards.append([int(i) for _, _, ids in source.evaluation_batches("train", plan, batch_size=3)
                           for i in ids])
            counter = EpochCounter(split, plan)
            batches = epoch_ids(source, plan, counter=counter)
            steps.append(len(batches))
            assert all(len(b) == 5 for b in batches)
            assert counter.first_pass_rows == plan.local_rows == len(shards[-1])
            trained = collections.Counter(i for b in batches for i in b)
            assert set(trained) == set(shards[-1])  # the whole shard is trained on; padding only repeats its rows
            assert sum(trained.values()) - len(trained) == counter.padding_rows
    finally:
        source.close()
    assert len(set(steps)) == 1, f"ranks would run different numbers of steps: {steps}"
    everything = [i for shard in shards for i in shard]
    assert len(everything) == len(set(everything)) == split.rows


def test_a_pass_starts_with_one_batch_per_worker_then_whole_chunks():
    plan = plan_shard([40, 40, 37], 0, 1)
    order = epoch_order([40, 40, 37], plan, batch_size=4, seed=1, epoch=0, shuffle_rows=40)
    cut = list(loader_module.chunks(order, start=0, chunk=8, ramp=2))
    assert [last - first for _, first, last in cut[:3]] == [1, 1, 8]  # two workers' first chunks, then full ones
    assert [b for _, first, last in cut for b in range(first, last)] == list(range(order.batches))


@pytest.mark.spark
def test_the_loader_times_its_stages_and_starts_only_the_workers_a_pass_can_use(image_dataset):
    source = source_for(image_dataset, 8, "train.shuffle_buffer=1024")
    split = source.splits["train"]
    plan = plan_shard(split.row_group_sizes, 0, 1)
    try:
        counter = EpochCounter(split, plan)
        epoch_ids(source, plan, counter=counter, batch_size=16)
        started = source.loader.active_workers
    finally:
        source.close()
    assert 1 <= started < 8  # a few chunks per pass (train: one window; evaluation: one per row group)
    assert counter.loader.workers == started
    assert all(counter.loader.seconds[stage] > 0 for stage in ("read", "decode", "batch", "handover"))


@pytest.mark.spark
def test_a_pool_started_by_a_thread_that_has_ended_still_serves_passes(image_dataset):
    """The kernel's parent-death signal follows the thread that forked a worker: a pool started by a short-lived
    thread must not die with it (the next pass would wait for its workers until the loader's timeout)."""
    source = source_for(image_dataset, 2)
    plan = plan_shard(source.splits["train"].row_group_sizes, 0, 1)
    passes: list = []
    try:
        for _ in range(2):
            thread = threading.Thread(target=lambda: passes.append(epoch_ids(source, plan)), daemon=True)
            thread.start()
            thread.join(timeout=120)
            assert not thread.is_alive(), "a pass of a pool started by an ended thread hangs"
    finally:
        source.close()
    assert passes[0] == passes[1]


@pytest.mark.spark
def test_the_epoch_order_is_the_same_with_any_number_of_workers(image_dataset):
    plan = plan_shard(load_dataset_info(str(image_dataset)).splits["train"].row_group_sizes, 1, 2)
    orders = {}
    for workers in (0, 1, 3):
        source = source_for(image_dataset, workers)
        try:
            orders[workers] = [epoch_ids(source, plan, epoch=e, batch_size=4) for e in (0, 1, 0)]
        finally:
            source.close()
    first, second, again = orders[0]
    assert first == again and first != second  # reproducible, and shuffled anew every epoch
    assert orders[1] == orders[3] == orders[0]


@pytest.mark.spark
@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_epoch_starts_at_its_batch_without_reading_what_came_before(image_dataset, monkeypatch, workers):
    source = source_for(image_dataset, workers, "train.shuffle_buffer=0")
    split = source.splits["train"]
    plan = plan_shard(split.row_group_sizes, 0, 1)
    try:
        whole = epoch_ids(source, plan, batch_size=4)
        order = source.loader.passes.order(split, plan, training=True, epoch=0, batch_size=4)
        late = order.windows[-1].first_batch + 1  # inside the last window: every earlier window is skipped
        source.close()
        source = source_for(image_dataset, workers, "train.shuffle_buffer=0")  # nothing read or cached yet
        reads = []
        if workers == 0:  # in this process, where the reads can be watched
            real = loader_module.SplitReader.read_group
            monkeypatch.setattr(loader_module.SplitReader, "read_group",
                                lambda self, g, head=None: (reads.append(g), real(self, g, head))[1])
        counter = EpochCounter(split, plan)
        resumed = epoch_ids(source, plan, batch_size=4, start=late, counter=counter)
    finally:
        source.close()
    assert resumed == whole[late:]
    assert counter.first_pass_rows == plan.local_rows  # the skipped batches are counted, not read
    if workers == 0:
        assert sorted(set(reads)) == list(order.windows[-1].groups) and len(order.windows) > 1


@pytest.mark.spark
@pytest.mark.parametrize("world", [2, 4])
def test_evaluation_reads_every_row_exactly_once(image_dataset, world):
    source = source_for(image_dataset, 1)
    split = source.splits["test"]
    seen = []
    try:
        for rank in range(world):
            plan = plan_shard(split.row_group_sizes, rank, world)
            for _, _, ids in source.evaluation_batches("test", plan, batch_size=3):
                seen.extend(int(i) for i in ids)
    finally:
        source.close()
    assert len(seen) == len(set(seen)) == split.rows


@pytest.mark.spark
@pytest.mark.parametrize("workers", [0, 2])
def test_a_short_row_group_is_an_error_not_a_short_epoch(image_dataset, workers):
    source = source_for(image_dataset, workers)
    split = source.splits["train"]
    inflated = replace(split, row_group_sizes=tuple(n + 2 for n in split.row_group_sizes))
    source.splits["train"] = source.loader.passes.splits["train"] = inflated
    plan = plan_shard(inflated.row_group_sizes, 0, 1)
    try:
        with pytest.raises(DataCoverageError, match=r"row group \d+ of .* holds \d+ rows, its footer said \d+"):
            epoch_ids(source, plan, batch_size=4)
    finally:
        source.close()


def _damage_image(path, rows=(0,)) -> list[int]:
    """The PNG bytes of ``rows`` of a one-row-group file replaced by bytes that do not decode (the Parquet file
    itself stays valid); returns their sample ids."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    images = table.column("image").to_pylist()
    for row in rows:
        images[row] = b"\x89PNG\r\n\x1a\n damaged"
    pq.write_table(table.set_column(table.schema.get_field_index("image"), "image",
                                    pa.array(images, table.schema.field("image").type)), path,
                   row_group_size=table.num_rows)
    return [table.column("sample_id")[row].as_py() for row in rows]


def _truncate(path) -> None:
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])  # a copy cut short: no footer


@pytest.mark.spark
@pytest.mark.parametrize("workers", [0, 2])
def test_a_row_that_does_not_decode_is_replaced_by_a_stand_in_of_its_window_the_same_every_time(image_dataset,
                                                                                              tmp_path, workers):
    """A stored image damaged after the snapshot was written (the file still valid Parquet): each such row is
    replaced by a row of its window chosen from its sample id, so the epoch keeps its steps and rows per batch, a
    rerun or a resume makes the same choice, and the loader reports each one."""
    copy = tmp_path / "ds"
    shutil.copytree(image_dataset, copy)
    split = load_dataset_info(str(copy)).splits["train"]
    plan = plan_shard(split.row_group_sizes, 0, 1)
    config = load_section("train", TrainConfig, overrides=[f"train.loader_workers={workers}"])
    clean = PetastormSource(_info_without_checks(copy), config)
    try:
        before = epoch_ids(clean, plan, batch_size=4)
    finally:
        clean.close()
    path, _ = split.row_group_files[0]
    damaged = _damage_image(path, rows=(0, 1, 2))
    runs = []
    for _ in range(2):
        source = PetastormSource(_info_without_checks(copy), config)
        try:
            runs.append((epoch_ids(source, plan, batch_size=4), source.take_read_errors()))
        finally:
            source.close()
    (after, errors), (again, errors_again) = runs
    assert after == again and errors == errors_again  # the same stand-ins every time
    assert [len(b) for b in after] == [len(b) for b in before]  # the same steps, full batches
    flat_before, flat_after = sum(before, []), sum(after, [])
    assert not set(damaged) & set(flat_after) and set(damaged) <= set(flat_before)
    assert sorted(e["sample_id"] for e in errors) == sorted(damaged)
    assert all(e["reason"] == "a stored png image does not decode" and e["split"] == "train" and e["epoch"] == 1
               and e["replaced_by"] not in damaged for e in errors)
    for e in errors:  # the stand-in sits where the damaged row sat
        position = flat_before.index(e["sample_id"])
        assert flat_after[position] == e["replaced_by"] and position // 4 == e["batch"]


@pytest.mark.spark
@pytest.mark.parametrize("damage,message", [(_truncate, r"^ArrowInvalid: ")])
def test_a_damaged_file_fails_the_epoch_with_one_line_naming_it(image_dataset, tmp_path, damage, message):
    """A worker's error reaches the training process as one error naming the file and row group it was reading,
    not as a worker traceback (the file damaged after the run opened the dataset)."""
    copy = tmp_path / "ds"
    shutil.copytree(image_dataset, copy)
    split = load_dataset_info(str(copy)).splits["train"]
    path, _ = split.row_group_files[0]
    source = PetastormSource(_info_without_checks(copy),
                             load_section("train", TrainConfig, overrides=["train.loader_workers=2"]))
    damage(path)
    try:
        with pytest.raises(DatasetError, match=message) as error:
            epoch_ids(source, plan_shard(split.row_group_sizes, 0, 1), batch_size=4)
        assert "Traceback" not in str(error.value)
        assert f"(reading train of {split.url}: " in str(error.value) and f"{path} row group 0" in str(error.value)
    finally:
        source.close()


def _info_without_checks(dataset):
    """The dataset opened as load_dataset_info does, without its checksum check (the test altered a file)."""
    from dataset import layout, manifest
    from dataset.info import DatasetInfo, SplitInfo

    url = layout.resolve_snapshot(f"file://{dataset}")
    contents = manifest.read(url)
    splits = {}
    for name, counts in contents.splits.items():
        groups = layout.row_groups(f"{url}/{name}") if counts.rows else []
        splits[name] = SplitInfo(name, f"{url}/{name}", counts.rows, tuple(n for _, _, n in groups),
                                 tuple((f, i) for f, i, _ in groups))
    return DatasetInfo(url, contents, splits)


@pytest.mark.spark
def test_metadata_that_disagrees_with_the_files_is_refused(image_dataset, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(image_dataset, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["splits"]["train"]["rows"] += 1
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="metadata.json says .* rows"):
        load_dataset_info(str(copy))
    (copy / "metadata.json").unlink()
    with pytest.raises(DatasetError, match="metadata.json not found"):
        load_dataset_info(str(copy))


@pytest.mark.parametrize("kind", ["image", "sequence"])
def test_a_chunk_cut_into_batches_equals_each_batch_collated_alone(kind):
    """The loader's vectorised chunk (one buffer per dtype) gives exactly the tensors of collate, batch by batch."""
    import io

    import torch

    from dataset.manifest import DatasetSpec, ImageSpec, SequenceSpec
    from training.collation import task_for
    from training.loader import unpack

    rng = np.random.default_rng(0)
    n = 40
    if kind == "image":
        spec = DatasetSpec("image", ["a", "b"], image=ImageSpec(4, 3, "raw", [4, 4, 3]))
        pixels = []
        for _ in range(n):
            buffer = io.BytesIO()
            np.save(buffer, rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
            pixels.append(buffer.getvalue())
        columns = {"image": pixels}
    else:
        spec = DatasetSpec("sequence", ["a", "b"], sequence=SequenceSpec(50, "<u2", 9, "word", longest=9))
        lengths = rng.integers(1, 10, n)
        columns = {"tokens": [rng.integers(2, 50, k).astype("<u2").tobytes() for k in lengths], "length": lengths}
    columns.update(label=rng.integers(0, 2, n), sample_id=np.arange(100, 100 + n))
    task = task_for(spec)
    prepared = task.prepare(columns)
    batches = [rng.permutation(n)[:16], rng.permutation(n)[:16], rng.permutation(n)[:5]]
    buffers, layouts = task.chunk(prepared, batches)
    cut = unpack(({k: torch.from_numpy(v) for k, v in buffers.items()}, layouts))
    for index, got in zip(batches, cut):
        want = task.collate(prepared, index)
        for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
            assert torch.equal(a, b)


@pytest.mark.spark
@pytest.mark.parametrize("workers", [0, 1])
def test_reading_an_epoch_leaves_the_global_random_state_alone(image_dataset, workers):
    """A resumed run must draw the same dropout masks as an uninterrupted one: the loader never consumes torch's
    global random numbers (a DataLoader draws a seed from them unless given its own generator)."""
    import torch

    source = source_for(image_dataset, workers)
    plan = plan_shard(source.splits["train"].row_group_sizes, 0, 1)
    try:
        torch.manual_seed(7)
        expected = torch.rand(3)
        torch.manual_seed(7)
        epoch_ids(source, plan, batch_size=8)
        epoch_ids(source, plan, epoch=1, batch_size=8)
        assert torch.equal(torch.rand(3), expected)
    finally:
        source.close()


@pytest.fixture(scope="module")
def raw_image_dataset(spark, sample_images, tmp_path_factory):
    """The sample images of ``image_dataset`` stored with the default codec at 16 px (auto: raw pixels)."""
    from core.paths import to_url
    from pipelines.image_dataset import PreprocessImagesConfig, preprocess_images
    from tests.conftest import snapshot_path

    config = load_section("preprocess_images", PreprocessImagesConfig, flags={"image_size": 16, "ranks": 3})
    out = tmp_path_factory.mktemp("raw-images") / "ds"
    return snapshot_path(preprocess_images(spark, input_url=to_url(str(sample_images)), output_url=to_url(str(out)),
                                           config=config))


@pytest.mark.spark
def test_small_images_are_stored_raw_by_default_and_load_to_the_same_pixels_as_png(image_dataset,
                                                                                  raw_image_dataset):
    """auto stores 16 px images as raw pixels; the loader's one-reshape decoding of that column gives, sample by
    sample, exactly the pixels PNG (lossless) gives."""
    import torch

    from pipelines.image_dataset import storage_codec

    assert storage_codec("auto", 64) == "raw" and storage_codec("auto", 65) == "png" and storage_codec("png", 8) == "png"
    assert load_dataset_info(str(raw_image_dataset)).spec.image.codec == "raw"
    assert load_dataset_info(str(image_dataset)).spec.image.codec == "png"
    pixels = []
    for dataset in (image_dataset, raw_image_dataset):
        source = source_for(dataset, 2)
        split = source.splits["train"]
        try:
            pixels.append({int(i): x for (images,), _, ids in source.evaluation_batches(
                "train", plan_shard(split.row_group_sizes, 0, 1), batch_size=7) for i, x in zip(ids, images)})
        finally:
            source.close()
    assert pixels[0].keys() == pixels[1].keys() and len(pixels[0]) > 0
    assert all(torch.equal(pixels[0][i], pixels[1][i]) for i in pixels[0])
