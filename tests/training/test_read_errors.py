"""Rows damaged inside a committed file (the Parquet file valid, its manifest rewritten to match, so every checksum
passes): training replaces each by a stand-in of its window and names it in read_errors.jsonl, with equal steps;
over train.max_read_errors it stops with exit 8; `bigtrain verify` names the same rows."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from core.errors import EXIT_READ_ERRORS
from dataset.info import load_dataset_info
from tests.training.test_data import _damage_image

pytestmark = pytest.mark.spark  # the session's image dataset (PNG)


@pytest.fixture
def damaged(image_dataset, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(image_dataset, copy)
    split = load_dataset_info(str(copy)).splits["train"]
    path, _ = split.row_group_files[0]
    ids = _damage_image(path, rows=(0, 1, 2))
    manifest_file = copy / "metadata.json"
    contents = json.loads(manifest_file.read_text())
    relpath = path[len(str(copy)) + 1:]
    data = open(path, "rb").read()
    contents["files"][relpath].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest_file.write_text(json.dumps(contents))
    return copy, set(ids), path


def test_training_replaces_damaged_rows_names_them_and_verify_finds_the_same(damaged, image_dataset, cli, tmp_path):
    from jobs.train import main

    copy, ids, path = damaged
    code, out, _ = cli("verify", str(copy))
    assert code == 1 and out.count("the stored image does not decode") == 3
    assert all(str(i) in out for i in ids) and path in out

    run = tmp_path / "run"
    assert main(["--data", str(copy), "--output", str(run), "--epochs", "1", "--batch-size", "8", "--backend",
                 "single", "--no-progress"]) == 0
    events = [json.loads(line) for line in (run / "read_errors.jsonl").read_text().splitlines()]
    assert {e["sample_id"] for e in events} == ids and len(events) == 3
    assert all(e["file"] == path and e["source"] and e["rank"] == 0 and e["epoch"] == 1 and e["step"] >= 1
               and e["split"] == "train" and e["replaced_by"] not in ids for e in events)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["read_errors"] == 3 and metrics["history"][0]["read_errors"] == 3
    clean = tmp_path / "clean"  # the same run on the undamaged dataset: the same steps
    assert main(["--data", str(image_dataset), "--output", str(clean), "--epochs", "1", "--batch-size", "8",
                 "--backend", "single", "--no-progress"]) == 0
    damaged_steps, clean_steps = ((d / "digests" / "rank0.tsv").read_text().splitlines() for d in (run, clean))
    assert [line.split("\t")[:3] for line in damaged_steps] == [line.split("\t")[:3] for line in clean_steps]
    differing = [a for a, b in zip(damaged_steps, clean_steps) if a != b]
    assert 1 <= len(differing) <= 3 and {int(line.split("\t")[1]) for line in differing} == {e["step"] for e in events}


def test_more_damaged_rows_than_the_budget_stop_the_run_with_exit_8(damaged, tmp_path, capsys):
    from jobs.train import main

    copy, _, _ = damaged
    run = tmp_path / "run"
    code = main(["--data", str(copy), "--output", str(run), "--epochs", "2", "--batch-size", "8", "--backend",
                 "single", "--no-progress", "--set", "train.max_read_errors=2"])
    assert code == EXIT_READ_ERRORS == 8
    err = capsys.readouterr().err
    assert "3 stored rows failed to read so far, over train.max_read_errors 2" in err and "read_errors.jsonl" in err
    assert len((run / "read_errors.jsonl").read_text().splitlines()) == 3
    assert list((run / "checkpoints").glob("step-*-e1.pt"))  # the epoch's resume point was saved first


def test_token_ids_that_disagree_with_their_length_are_replaced_in_the_batch():
    import numpy as np

    from training.collation import Task
    from training.loader import unpack

    task = Task(kind="sequence", fields=("tokens", "length", "label", "sample_id"), token_dtype="uint16")
    tokens = [np.array([5, 6], "<u2").tobytes(), np.array([7], "<u2").tobytes()[:1],  # row 1: a byte short
              np.array([8, 9, 10], "<u2").tobytes(), np.array([11], "<u2").tobytes()]
    prepared = task.prepare({"label": [0, 1, 0, 1], "sample_id": [100, 101, 102, 103], "tokens": tokens,
                             "length": [2, 1, 3, 1]})
    assert list(prepared.replaced) == [1]
    buffers, layouts = task.chunk(prepared, [np.array([0, 1]), np.array([2, 3])])
    import torch

    batches = unpack(({k: torch.from_numpy(v) for k, v in buffers.items()}, layouts))
    (_, _), _, first_ids = batches[0]
    stand_in = prepared.replaced[1][0]
    assert 101 not in first_ids.tolist() and 100 + stand_in in first_ids.tolist()
    assert prepared.take_read_errors() == [(0, 1, stand_in, "stored token ids and length disagree")]
