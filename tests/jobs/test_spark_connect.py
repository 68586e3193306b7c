"""The preprocessing jobs and predict on a real Spark Connect server (``--remote sc://...``): the same input writes
the same rows, sample ids, splits, rejects and counts as on the classic session. The classic side is the session's
datasets (``image_dataset``, ``text_dataset``: the jobs' recipes on this session's Spark) and ``predict_cli``; the
Connect side runs the ``bigtrain`` command in a process of its own, with no JVM (the server has it)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import current_snapshot, subprocess_env, tool

pytestmark = [pytest.mark.spark, pytest.mark.slow]

SPLITS = ("train", "validation", "test")


def bigtrain(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([tool("bigtrain"), *args], capture_output=True, text=True, timeout=300,
                            env={**subprocess_env(), "SPARK_LOCAL_IP": "127.0.0.1"})
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def rows(folder: Path) -> list[dict]:
    files = sorted(folder.rglob("*.parquet"))
    assert files, f"no Parquet files in {folder}"
    table = pq.ParquetDataset([str(f) for f in files]).read()
    return sorted(table.to_pylist(), key=lambda row: json.dumps(row, sort_keys=True, default=repr))


def assert_same_snapshot(classic: Path, connect: Path) -> None:
    for split in SPLITS:
        expected = rows(classic / split)
        assert expected, split
        assert rows(connect / split) == expected, split
    assert rows(connect / "rejected") == rows(classic / "rejected")
    ours, theirs = (json.loads((folder / "metadata.json").read_text()) for folder in (classic, connect))
    for key in ("class_to_index", "classes", "records_read", "rejected", "rejected_by_reason", "splits",
                "schema_fingerprints", "config"):
        assert theirs[key] == ours[key], key
    assert theirs["snapshot"]["config_fingerprint"] == ours["snapshot"]["config_fingerprint"]
    assert (connect / "inputs.parquet").exists()


def test_the_image_job_on_spark_connect_writes_what_the_classic_session_writes(connect_server, sample_images,
                                                                               image_dataset, tmp_path):
    out = tmp_path / "ds"
    result = bigtrain("preprocess-images", "--input", str(sample_images), "--output", str(out), "--remote",
                      connect_server, "--image-size", "16", "--ranks", "3", "--codec", "png", "--quiet")
    manifest = json.loads((image_dataset / "metadata.json").read_text())
    written = sum(split["rows"] for split in manifest["splits"].values())
    assert (f"preprocess-images: {manifest['records_read']} files read = {written} rows written + "
            f"{manifest['rejected']} rejected") in result.stdout
    assert_same_snapshot(image_dataset, current_snapshot(out))


def test_the_sequence_job_on_spark_connect_writes_what_the_classic_session_writes(connect_server, sample_texts,
                                                                                  text_dataset, tmp_path):
    out = tmp_path / "ds"
    bigtrain("preprocess-sequences", "--input", str(sample_texts), "--output", str(out), "--remote", connect_server,
             "--ranks", "3", "--max-length", "24", "--quiet")
    snapshot = current_snapshot(out)
    assert_same_snapshot(text_dataset, snapshot)
    assert (snapshot / "vocab.json").read_text() == (text_dataset / "vocab.json").read_text()


def test_predict_on_spark_connect_scores_as_on_the_classic_session(connect_server, predict_cli, text_checkpoint,
                                                                   sample_texts, tmp_path):
    classic = predict_cli("--checkpoint", str(text_checkpoint), "--input", str(sample_texts),
                          "--output", str(tmp_path / "classic"))
    assert classic.returncode == 0, classic.stderr
    connect = bigtrain("predict", "--checkpoint", str(text_checkpoint), "--input", str(sample_texts),
                       "--output", str(tmp_path / "connect"), "--remote", connect_server)
    assert connect.stdout.splitlines()[0].split(" (")[0] == classic.stdout.splitlines()[0].split(" (")[0]
    expected = rows(tmp_path / "classic")
    assert len(expected) > 800
    assert rows(tmp_path / "connect") == expected
