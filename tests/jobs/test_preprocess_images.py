"""The preprocessing job end to end: images -> Spark -> Petastorm -> the loader, and its command line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from core.config import load_section
from core.errors import EXIT_REMOVALS, RemovalsError
from core.paths import to_url
from dataset import layout, manifest
from dataset.info import load_dataset_info
from dataset.layout import SPLITS
from jobs.common import run_main
from jobs.preprocess_images import main
from pipelines.image_dataset import PreprocessImagesConfig, preprocess_images
from pipelines.samples import SHAPE_CLASSES, generate_images
from tests.conftest import REPO, current_snapshot, subprocess_env, tool
from tests.petastorm_rows import petastorm_rows

pytestmark = pytest.mark.spark


def source_files(root: Path) -> tuple[dict[str, str], list[str]]:
    """(relpath -> class folder) of the usable sample files, and the relpaths of the unusable ones."""
    good, bad = {}, []
    for path in root.rglob("*"):
        if path.is_file():
            rel = path.relative_to(root).as_posix()
            (bad.append(rel) if path.name.startswith("bad_") else good.__setitem__(rel, rel.split("/")[0]))
    return good, bad


def read_split(split, fields=("image", "label", "sample_id", "relpath")):
    """Every row of a split as a list of namedtuples, read by Petastorm's own make_reader, decoding the images
    with the codecs of the Unischema the job stored: the datasets stay Petastorm datasets that plain Petastorm can
    read."""
    return petastorm_rows(split.url, fields, columnar=False)


def test_every_image_arrives_once_with_its_label_and_shape(image_dataset, sample_images):
    good, bad = source_files(sample_images)
    info = load_dataset_info(str(image_dataset))
    classes = sorted(set(good.values()))
    assert info.manifest.class_to_index == {name: i for i, name in enumerate(classes)}
    seen = {}
    for name in SPLITS:
        for row in read_split(info.splits[name]):
            assert row.relpath not in seen, f"{row.relpath} read twice"
            seen[row.relpath] = name
            assert classes[row.label] == good[row.relpath]
            assert row.image.shape == (16, 16, 3) and row.image.dtype == np.uint8
    assert set(seen) == set(good)
    counts = {name: sum(1 for s in seen.values() if s == name) for name in SPLITS}
    assert counts == {name: info.manifest.splits[name].rows for name in SPLITS}


def test_counts_add_up_and_rejects_are_kept_with_reasons(image_dataset, sample_images):
    good, bad = source_files(sample_images)
    contents = manifest.read(to_url(str(image_dataset)))
    assert contents.records_read == len(good) + len(bad)
    assert contents.rejected == len(bad)
    assert sum(s.rows for s in contents.splits.values()) == len(good)
    rejected = pq.read_table(image_dataset / "rejected").to_pylist()
    assert sorted(r["relpath"] for r in rejected) == sorted(bad)
    assert all(r["reason"] for r in rejected)
    reasons = " | ".join(r["reason"] for r in rejected)
    for expected in ("missing label", "not a readable image", "corrupt or truncated", "absurd dimensions", "empty file"):
        assert expected in reasons


def test_splits_are_written_in_row_groups_for_the_expected_ranks(image_dataset):
    info = load_dataset_info(str(image_dataset))
    for split in info.splits.values():
        assert len(split.row_group_sizes) == min(3, split.rows)
        assert max(split.row_group_sizes) - min(split.row_group_sizes) <= 1


def run_job(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("flag, value, expected", [
    ("--channels", "2", "--channels"),
    ("--image-size", "0", "--image-size"),
    ("--image-size", "big", "--image-size"),
    ("--codec", "gif", "--codec"),
])
def test_bad_flags_are_named(tmp_path, capsys, flag, value, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(["--input", str(tmp_path), "--output", str(tmp_path / "o"), flag, value])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


def test_bad_config_and_paths_are_named(tmp_path, capsys):
    code, err = run_job(["--input", str(tmp_path), "--output", str(tmp_path / "o"),
                         "--set", "preprocess_images.colour=red"], capsys)
    assert code == 2 and "preprocess_images.colour" in err
    code, err = run_job(["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and "--input" in err and "missing" in err
    code, err = run_job(["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--train-fraction", "0.95"], capsys)
    assert code == 2 and "preprocess_images.splits" in err


def images(spark, src: Path, ds: Path, *, allow_removals: bool = False, **flags) -> dict:
    config = load_section("preprocess_images", PreprocessImagesConfig, flags={"image_size": 8, "ranks": 1, **flags})
    return preprocess_images(spark, input_url=to_url(str(src)), output_url=to_url(str(ds)), config=config,
                             allow_removals=allow_removals)


def test_removed_input_files_are_refused_before_any_work_unless_allowed_and_an_emptied_input_always(
        spark, tmp_path, capsys):
    src, ds = tmp_path / "in", tmp_path / "ds"
    generate_images(src, per_class=3, seed=4, classes=SHAPE_CLASSES[:5])
    first = images(spark, src, ds)
    dataset = to_url(str(ds))
    lost = SHAPE_CLASSES[0]
    gone = sorted(f"{lost}/{p.name}" for p in (src / lost).iterdir())
    shutil.rmtree(src / lost)  # 3 of 15 files: under max_removed_fraction, but a whole class
    with pytest.raises(RemovalsError) as refused:
        images(spark, src, ds)
    assert (f"--input {to_url(str(src))}: since snapshot {first['snapshot']}, 3 of the 15 input files are gone "
            f"(20.0%): {', '.join(gone)}; classes" in str(refused.value))
    assert str(refused.value).endswith(f"; classes that lost all their files: {lost}; nothing was committed (an "
                                       "unmounted volume, a moved folder?): if they were removed on purpose, rerun "
                                       "with --allow-removals")
    assert layout.snapshot_ids(dataset) == ([first["snapshot"]], [])  # no staging folder: nothing was decoded

    for name in SHAPE_CLASSES[1:5]:  # 2 more files of each other class: 11 of 15
        for path in sorted((src / name).iterdir())[:2]:
            path.unlink()
    code = run_main(lambda: images(spark, src, ds))  # as the command ends
    err = capsys.readouterr().err
    assert code == EXIT_REMOVALS == 6
    assert "11 of the 15 input files are gone (73.3%, more than max_removed_fraction 50.0%)" in err

    second = images(spark, src, ds, allow_removals=True)
    assert (second["rows_written"], second["processed"]) == (4, (0, 0))
    assert manifest.read(second["output"]).snapshot.inputs.removed == 11

    for name in SHAPE_CLASSES[1:5]:  # an emptied input (an unmounted volume): refused whatever the flags
        shutil.rmtree(src / name)
    for flags in ({"allow_removals": True}, {"mode": "overwrite"}):
        with pytest.raises(RemovalsError, match=f"lists no files, where snapshot {second['snapshot']} holds rows "
                                                "of 4 input files"):
            images(spark, src, ds, **flags)
    assert layout.snapshot_ids(dataset) == ([first["snapshot"], second["snapshot"]], [])


def test_an_empty_input_and_a_single_class_are_not_committed(spark, tmp_path):
    src, ds = tmp_path / "in", tmp_path / "ds"
    (src / "cat").mkdir(parents=True)
    with pytest.raises(RemovalsError, match=f"--input {to_url(str(src))} lists no files: nothing to commit"):
        images(spark, src, ds)
    for i in range(3):
        Image.new("RGB", (12, 12), (80 * i, 10, 10)).save(src / "cat" / f"{i}.png")
    with pytest.raises(RemovalsError, match="every row is of one class, cat: snapshot .* was not committed .*set the "
                                            "config key allow_single_class: true"):
        images(spark, src, ds)
    assert layout.snapshot_ids(to_url(str(ds)))[0] == []
    assert images(spark, src, ds, allow_single_class=True)["rows_written"] == 3


def make_unseen_folder(root: Path) -> int:
    """Grayscale and colour, PNG and JPEG, odd sizes, three classes the generator never makes."""
    rng = np.random.default_rng(11)
    n = 0
    for label, (name, level) in enumerate([("dark", 30), ("mid", 128), ("light", 225)]):
        (root / name).mkdir(parents=True)
        for i in range(10):
            h, w = int(rng.integers(9, 70)), int(rng.integers(9, 70))
            pixels = np.clip(rng.normal(level, 10, (h, w)), 0, 255).astype(np.uint8)
            img = Image.fromarray(pixels, "L") if i % 2 else Image.fromarray(np.stack([pixels] * 3, -1), "RGB")
            img.save(root / name / f"{i}.{'png' if i % 3 else 'jpg'}")
            n += 1
    return n


@pytest.mark.slow
def test_spark_submit_and_train_on_an_unseen_folder(tmp_path):
    images, dataset, model = tmp_path / "imgs", tmp_path / "ds", tmp_path / "model"
    n = make_unseen_folder(images)
    env = subprocess_env()
    done = subprocess.run([tool("spark-submit"), "--master", "local[2]", str(REPO / "jobs" / "preprocess_images.py"),
                           "--input", str(images), "--output", str(dataset), "--channels", "1", "--image-size", "20",
                           "--ranks", "2", "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{n} files read = {n} rows written + 0 rejected" in done.stdout
    meta = json.loads((current_snapshot(dataset) / "metadata.json").read_text())
    assert meta["classes"] == ["dark", "light", "mid"] and meta["image"]["shape"] == [20, 20]
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "train.py"), "--data", str(dataset), "--output",
                           str(model), "--epochs", "2", "--batch-size", "4", "--no-progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["test_rows"] == meta["splits"]["test"]["rows"]
    assert set(metrics["per_class_accuracy"]) == {"dark", "light", "mid"}


@pytest.mark.slow
def test_any_file_name_is_read_or_rejected_under_no_locale_at_all(tmp_path):
    """Under cron or `env -i` the JVM names files in ASCII: Spark's listing skipped café/é.png without a word, a
    colon failed the whole job, a link loop multiplied the rows. The job lists and reads its input in Python: every
    name is read, or rejected with its reason, and counted. Only a path beyond ASCII on the command line, which
    spark-submit's ASCII JVM passes on as "donn??es", is refused (exit 2, saying what to set)."""
    images = tmp_path / "imgs"
    for folder, name in (("café", "é.png"), ("café", "naïve.png"), ("plain", "a.png"),
                         ("plain", "shot 2024-01-01T10:00:00.png")):
        (images / folder).mkdir(parents=True, exist_ok=True)
        level = 40 + 30 * len(list(images.rglob("*.png")))  # four pictures, not copies of one
        Image.new("L", (12, 12), level).save(images / folder / name)
    os.symlink("..", images / "plain" / "loop")
    with open(os.fsencode(images / "plain") + b"/caf\xe9.png", "wb") as f:
        f.write((images / "plain" / "a.png").read_bytes())
    env = {"PATH": subprocess_env()["PATH"], **{k: os.environ[k] for k in ("JAVA_HOME", "HOME") if k in os.environ}}
    job = [tool("spark-submit"), "--master", "local[1]", str(REPO / "jobs" / "preprocess_images.py"), "--input",
           str(images), "--image-size", "8", "--quiet", "--set", "preprocess_images.max_reject_fraction=1"]
    done = subprocess.run([*job, "--output", str(tmp_path / "ds")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "6 files read = 4 rows written + 2 rejected" in done.stdout
    meta = json.loads((current_snapshot(tmp_path / "ds") / "metadata.json").read_text())
    assert meta["classes"] == ["café", "plain"]
    assert meta["rejected_by_reason"] == {"file name is not valid UTF-8": 1, "symbolic link": 1}
    done = subprocess.run([*job, "--output", str(tmp_path / "données")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["ds", "imgs"]
    said = done.stdout + done.stderr  # spark-submit passes the driver's stderr on as its stdout
    assert "--output file://" in said and "LC_ALL=C.UTF-8 spark-submit" in said


@pytest.mark.slow
def test_a_missing_s3a_connector_is_named(tmp_path):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "preprocess_images.py"), "--input",
                           str(tmp_path / "imgs"), "--output", "s3a://bucket/ds", "--master", "local[1]"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "--output s3a://bucket/ds: Spark has no s3a:// file system" in done.stderr and "hadoop-aws" in done.stderr
