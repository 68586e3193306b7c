"""Committed, versioned datasets: unchanged reruns do nothing, new partitions are added without duplicates, a job
killed mid-write leaves the last snapshot intact, damage is caught by `verify` and by readers, the error budget."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from core.config import load_section
from core.errors import DatasetError, RejectBudgetError
from core.paths import to_url
from dataset import layout, snapshots
from dataset.info import load_dataset_info
from dataset.layout import SPLITS
from pipelines import writing
from pipelines.image_dataset import PreprocessImagesConfig, preprocess_images
from pipelines.sequence_dataset import PreprocessSequencesConfig, preprocess_sequences
from tests.conftest import REPO, snapshot_path, subprocess_env

pytestmark = pytest.mark.spark

WORDS = ["good", "bad", "plot", "acting", "long", "short", "fun", "dull"]


def write_partition(root, name: str, n: int, *, start: int = 0, bad: int = 0) -> None:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"text": f"review {start + i} {WORDS[i % 8]} {WORDS[(i * 3) % 8]}",
                         "label": "pos" if i % 2 else "neg"}) for i in range(n)]
    lines += ["{broken json"] * bad
    with (folder / "part.jsonl").open("a") as fh:
        fh.write("\n".join(lines) + "\n")


def sequences(spark, src, out, **flags) -> dict:
    config = load_section("preprocess_sequences", PreprocessSequencesConfig, flags={"ranks": 2, **flags})
    return preprocess_sequences(spark, input_url=to_url(str(src)), output_url=to_url(str(out)), fmt="jsonl",
                                config=config)


def rows(snapshot, key: str) -> list:
    """Every (key, split, label) of a snapshot's splits, from the Parquet files."""
    out = []
    for split in SPLITS:
        if any((snapshot / split).glob("*.parquet")):
            table = pq.read_table(snapshot / split, columns=[key, "label"])
            out += [(k, split, label) for k, label in zip(table.column(key).to_pylist(), table.column("label").to_pylist())]
    return out


def test_unchanged_rerun_does_nothing_and_new_or_changed_files_are_added_without_duplicates(spark, tmp_path):
    src, ds = tmp_path / "raw", tmp_path / "ds"
    write_partition(src, "date=2026-11-27", 20)
    write_partition(src, "date=2026-11-28", 20, start=20)
    first = sequences(spark, src, ds)
    a = snapshot_path(first)

    again = sequences(spark, src, ds)
    assert again["unchanged"] and again["snapshot"] == first["snapshot"]
    assert layout.snapshot_ids(to_url(str(ds))) == ([first["snapshot"]], [])

    write_partition(src, "date=2026-11-29", 15, start=40)
    third = sequences(spark, src, ds)
    b = snapshot_path(third)
    assert third["processed"] == (15, 0) and third["records_read"] == 55
    sources = [r[0] for r in rows(b, "source")]
    assert len(sources) == len(set(sources)) == 55
    assert set(rows(a, "source")) < set(rows(b, "source"))
    meta_b = json.loads((b / "metadata.json").read_text())
    assert meta_b["snapshot"]["parent"] == first["snapshot"] and meta_b["snapshot"]["inputs"]["added"] == 1
    assert load_dataset_info(str(ds)).snapshot_id == third["snapshot"]
    assert load_dataset_info(str(a)).snapshot_id == first["snapshot"]  # the old snapshot stays, pinned by its folder
    assert snapshots.verify(to_url(str(a)))[2] == []

    full = snapshot_path(sequences(spark, src, tmp_path / "full", mode="overwrite"))
    assert set(rows(b, "source")) == set(rows(full, "source"))  # incremental == everything processed again

    write_partition(src, "date=2026-11-27", 2, start=100)  # a changed file: its rows are replaced, not duplicated
    fourth = sequences(spark, src, ds)
    sources = [r[0] for r in rows(snapshot_path(fourth), "source")]
    assert fourth["processed"] == (22, 0) and len(sources) == len(set(sources)) == 57

    with pytest.raises(DatasetError, match="--mode error refuses"):
        sequences(spark, src, ds, mode="error")


def test_the_error_budget_fails_the_run_without_committing(spark, tmp_path):
    src, ds = tmp_path / "raw", tmp_path / "ds"
    write_partition(src, "date=2026-11-27", 6, bad=2)
    with pytest.raises(RejectBudgetError, match=r"2 of 8 records .* \(25\.0%\), more than max_reject_fraction 10\.0%"):
        sequences(spark, src, ds, max_reject_fraction=0.1)
    committed, uncommitted = layout.snapshot_ids(to_url(str(ds)))
    assert committed == [] and len(uncommitted) == 1
    rejected = pq.read_table(ds / "snapshots" / uncommitted[0] / "rejected").to_pylist()
    assert [r["source"] for r in rejected] == ["date=2026-11-27/part.jsonl:7", "date=2026-11-27/part.jsonl:8"]
    with pytest.raises(DatasetError, match="has no committed snapshot, only uncommitted ones"):
        load_dataset_info(str(ds))
    assert sequences(spark, src, ds, max_reject_fraction=0.3)["rejected"] == 2
    assert layout.snapshot_ids(to_url(str(ds)))[1] == []  # the failed run's leftovers are gone


def test_the_cli_exit_code_says_the_budget_was_exceeded(cli, tmp_path):
    src = tmp_path / "raw"
    write_partition(src, "d", 3, bad=1)
    code, _, err = cli("preprocess-sequences", "--input", str(src), "--output", str(tmp_path / "ds"),
                       "--max-reject-fraction", "0.2", "--quiet")
    assert code == 3, err[-3000:]
    assert "1 of 4 records read in this run were rejected" in err and "was not committed" in err


def flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_flipped_byte_is_caught_by_verify_and_by_readers(image_dataset, tmp_path, capsys):
    from jobs.verify import main as verify

    assert verify([str(image_dataset)]) == 0
    assert "OK, snapshot" in capsys.readouterr().out
    copy = tmp_path / "snap"
    shutil.copytree(image_dataset, copy)
    victim = sorted((copy / "train").glob("*.parquet"))[1]
    flip_a_byte(victim)
    assert verify([str(copy)]) == 1
    assert f"{victim.name}: sha256 differs from the manifest" in capsys.readouterr().out
    with pytest.raises(DatasetError, match=f"{victim.name}: sha256 differs"):
        load_dataset_info(str(copy))
    shutil.copy(victim, copy / "train" / "part-extra.parquet")
    assert verify([str(copy), "--quick"]) == 1
    out = capsys.readouterr().out
    assert "part-extra.parquet: is not in the manifest" in out and "sha256" not in out


def test_readers_never_open_an_uncommitted_snapshot(image_dataset, tmp_path):
    ds = tmp_path / "ds"
    committed = ds / "snapshots" / "000001-20261127T020000Z"
    shutil.copytree(image_dataset, committed)
    shutil.copytree(image_dataset, ds / "snapshots" / "000002-20261128T020000Z", ignore=shutil.ignore_patterns("metadata.json"))
    info = load_dataset_info(str(ds))
    assert info.url == to_url(str(committed)) and info.snapshot_id == json.loads(
        (image_dataset / "metadata.json").read_text())["snapshot"]["id"]
    assert info.splits["train"].url.startswith(info.url)
    shutil.rmtree(committed)
    with pytest.raises(DatasetError, match="000002-20261128T020000Z/metadata.json not found: .* no committed"):
        load_dataset_info(str(ds))


def test_verify_reports_a_dataset_with_only_an_uncommitted_snapshot_as_a_problem(image_dataset, tmp_path, capsys):
    from jobs.verify import main as verify

    ds = tmp_path / "ds"
    shutil.copytree(image_dataset, ds / "snapshots" / "000001-20261128T020000Z",
                    ignore=shutil.ignore_patterns("metadata.json"))
    assert verify([str(ds)]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"verify {to_url(str(ds))}: 1 problem(s)",
        f"  {to_url(str(ds))}: no committed snapshot; uncommitted folder snapshots/000001-20261128T020000Z left by "
        "a run that did not finish (or one still writing it): rerun the job"] and captured.err == ""
    assert verify([str(ds), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["problems"][0].endswith("rerun the job")


def test_datasets_list_takes_a_snapshot_folder_and_marks_it(image_dataset, tmp_path, capsys):
    from jobs.datasets import main as datasets

    ds = tmp_path / "ds"
    for sid in ("000001-20261127T020000Z", "000002-20261128T020000Z"):
        shutil.copytree(image_dataset, ds / "snapshots" / sid)
    shutil.copytree(image_dataset, ds / "snapshots" / "000003-20261129T020000Z",
                    ignore=shutil.ignore_patterns("metadata.json"))
    assert datasets(["list", str(ds)]) == 0
    whole = capsys.readouterr().out
    for given in ("000001-20261127T020000Z", "000003-20261129T020000Z"):
        assert datasets(["list", str(ds / "snapshots" / given)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line for line in lines if line.endswith("  <- given")] == [
            line + "  <- given" for line in whole.splitlines() if given in line]
        assert [line.removesuffix("  <- given") for line in lines] == whole.splitlines()
    assert datasets(["list", str(ds / "snapshots" / "000009-20261130T020000Z")]) == 1
    assert f"no snapshot 000009-20261130T020000Z in {to_url(str(ds))}" in capsys.readouterr().err


def test_verify_reads_a_dataset_on_s3(s3_server, image_dataset, tmp_path, monkeypatch, capsys):
    import fsspec
    import s3fs

    from jobs.verify import main as verify

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    fsspec.config.conf.clear()
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("bigtrain-verify")
    fs.put(str(image_dataset), "bigtrain-verify/ds/snapshots/000001-20261127T020000Z", recursive=True)
    assert verify(["s3://bigtrain-verify/ds"]) == 0
    victim = sorted((image_dataset / "test").glob("*.parquet"))[0]
    damaged = tmp_path / victim.name
    shutil.copy(victim, damaged)
    flip_a_byte(damaged)
    fs.put(str(damaged), f"bigtrain-verify/ds/snapshots/000001-20261127T020000Z/test/{victim.name}")
    capsys.readouterr()
    assert verify(["s3://bigtrain-verify/ds"]) == 1
    assert f"s3://bigtrain-verify/ds/snapshots/000001-20261127T020000Z/test/{victim.name}: sha256" in capsys.readouterr().out
    s3fs.S3FileSystem.clear_instance_cache()


def image_config(**flags):
    return load_section("preprocess_images", PreprocessImagesConfig, flags={"image_size": 16, "ranks": 2, **flags})


def test_a_job_killed_mid_write_leaves_the_last_snapshot_intact_and_the_next_run_completes(spark, tmp_path):
    from pipelines.samples import generate_images

    src, extra, ds = tmp_path / "raw", tmp_path / "extra", tmp_path / "ds"
    generate_images(src, per_class=3, seed=7, bad_files=0)
    first = preprocess_images(spark, input_url=to_url(str(src)), output_url=to_url(str(ds)), config=image_config())
    before = sorted(rows(snapshot_path(first), "sample_id"))
    generate_images(extra, per_class=3, seed=8, bad_files=0)
    for path in extra.rglob("*.*"):
        os.replace(path, src / path.parent.name / f"new-{path.name}")

    job = subprocess.Popen([sys.executable, "-m", "jobs.cli", "preprocess-images", "--input", str(src), "--output",
                            str(ds), "--image-size", "16", "--ranks", "2", "--master", "local[1]", "--quiet"],
                           cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        def write_begun() -> bool:  # the new snapshot's write has begun: Spark's staging folder or a split is there
            return any(p.parent.name != first["snapshot"] for pattern in (f"*/{writing.STAGING_DIR}", "*/train")
                       for p in (ds / "snapshots").glob(pattern))

        while not write_begun() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the driver (Python and its JVM), mid-write
        job.wait()
    assert job.returncode == -signal.SIGKILL, job.stderr.read()[-3000:]
    committed, uncommitted = layout.snapshot_ids(to_url(str(ds)))
    assert committed == [first["snapshot"]] and len(uncommitted) == 1
    info = load_dataset_info(str(ds))
    assert info.snapshot_id == first["snapshot"] and snapshots.verify(to_url(str(ds)))[2] == []
    assert sorted(rows(snapshot_path(first), "sample_id")) == before

    after = preprocess_images(spark, input_url=to_url(str(src)), output_url=to_url(str(ds)), config=image_config())
    ids = [r[0] for r in rows(snapshot_path(after), "sample_id")]
    assert after["processed"] == (30, 0) and len(ids) == len(set(ids)) == 60 and set(r[0] for r in before) < set(ids)
    assert layout.snapshot_ids(to_url(str(ds))) == ([first["snapshot"], after["snapshot"]], [])

    done = subprocess.run([sys.executable, "-m", "jobs.cli", "preprocess-images", "--input", str(src), "--output",
                           str(ds), "--image-size", "16", "--ranks", "2", "--master", "local[1]", "--quiet"],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"nothing to do: 60 input files and the config are unchanged since snapshot {after['snapshot']}" in done.stdout
