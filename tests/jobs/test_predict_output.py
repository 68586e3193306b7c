"""jobs/predict never destroys good output: the new predictions are checked beside --output before they replace an
earlier output, an output inside the input (or the input inside it) is refused, and the checkpoint is read once."""
from __future__ import annotations

import hashlib
import json
import shutil

import pandas as pd
import pytest

from core.paths import to_url
from inference import batch
from jobs import predict as job
from tests.jobs.test_predict import _config

pytestmark = pytest.mark.spark


def _predict(spark, ckpt, data, out, split):
    from dataset.info import load_dataset_info

    return batch.predict(spark, model=batch.load_checkpoint(str(ckpt)), output_url=to_url(str(out)),
                       data=load_dataset_info(str(data)), config=_config(split=split))


def _rows_lost(stats, *, inputs_read, output_url):
    """A check after scoring that fails, as when rows were lost between scoring and writing."""
    raise batch.PredictionCountError(f"{output_url}: {inputs_read} inputs read but 0 predictions written")


def test_a_run_that_fails_after_scoring_leaves_the_earlier_output_intact(spark, image_checkpoint, image_dataset,
                                                                          tmp_path, monkeypatch):
    out = tmp_path / "scored"
    _predict(spark, image_checkpoint, image_dataset, out, "test")
    before, summary = pd.read_parquet(out), (out / batch.SUMMARY_FILE).read_text()

    monkeypatch.setattr(batch, "summarise", _rows_lost)
    with pytest.raises(batch.PredictionCountError, match="predictions written"):
        _predict(spark, image_checkpoint, image_dataset, out, "validation")
    pd.testing.assert_frame_equal(pd.read_parquet(out), before)
    assert (out / batch.SUMMARY_FILE).read_text() == summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scored"]  # no staging copy left behind
    monkeypatch.undo()
    _predict(spark, image_checkpoint, image_dataset, out, "validation")  # a run that passes its checks replaces it
    assert set(pd.read_parquet(out)["split"]) == {"validation"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scored"]


def test_an_output_left_aside_by_a_run_killed_while_swapping_is_put_back(spark, image_checkpoint, image_dataset,
                                                                         tmp_path, monkeypatch):
    out = tmp_path / "scored"
    _predict(spark, image_checkpoint, image_dataset, out, "test")
    out.rename(tmp_path / f".scored.{batch.ASIDE}")  # killed between moving the old output aside and the new one in
    monkeypatch.setattr(batch, "summarise", _rows_lost)
    with pytest.raises(batch.PredictionCountError):
        _predict(spark, image_checkpoint, image_dataset, out, "validation")
    assert set(pd.read_parquet(out)["split"]) == {"test"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scored"]


def test_the_checkpoint_is_read_once_and_the_verified_bytes_are_the_ones_scored_with(spark, image_checkpoint,
                                                                                     sample_images, tmp_path,
                                                                                     monkeypatch):
    """The file is replaced after it was verified (and before scoring): the executors still get the bytes checked."""
    monkeypatch.setattr(spark, "stop", lambda: None)  # job.run stops its session: here the test session's own
    ckpt = tmp_path / "model" / "checkpoint.pt"
    ckpt.parent.mkdir()
    shutil.copy(image_checkpoint, ckpt)
    shutil.copy(image_checkpoint.with_suffix(".json"), ckpt.with_suffix(".json"))
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    check_output = batch.check_output

    def swapped_after_the_check(output_url, flag_value):
        check_output(output_url, flag_value)
        ckpt.write_bytes(b"not the checkpoint that was verified")

    monkeypatch.setattr(job, "check_output", swapped_after_the_check)
    out = tmp_path / "scored"
    args = job.build_parser().parse_args(["--checkpoint", str(ckpt), "--input", str(sample_images), "--output",
                                          str(out), "--master", "local[1]", "--quiet"])
    assert job.run(args) == 0
    assert json.loads((out / batch.SUMMARY_FILE).read_text())["checkpoint_sha256"] == digest
    assert pd.read_parquet(out)["top_probability"].notna().any()


def test_an_output_inside_the_input_or_around_it_is_refused_with_exit_2_naming_both(predict_cli, image_checkpoint,
                                                                                    sample_images, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(sample_images, images)
    listing = sorted(p.relative_to(images) for p in images.rglob("*"))
    for inputs, output, relation in ((images, images / "scored", "is inside"), (images / "circle", images, "contains")):
        result = predict_cli("--checkpoint", str(image_checkpoint), "--input", str(inputs), "--output", str(output))
        assert result.returncode == 2, result.stderr[-2000:]
        assert f"error: --output {to_url(str(output))} {relation} --input {to_url(str(inputs))}" in result.stderr
    assert sorted(p.relative_to(images) for p in images.rglob("*")) == listing


def test_a_raw_input_over_the_checkpoints_size_limit_is_unusable_not_read(spark, image_checkpoint, sample_images,
                                                                          tmp_path):
    images = tmp_path / "images"
    shutil.copytree(sample_images, images)
    with (images / "circle" / "huge.png").open("wb") as fh:  # sparse: 3 GB on no disk; Spark cannot read it whole
        fh.truncate(3 * 2**30)
    out = tmp_path / "scored"
    summary = batch.predict(spark, model=batch.load_checkpoint(str(image_checkpoint)), output_url=to_url(str(out)),
                          input_url=to_url(str(images)), config=_config())
    rows = pd.read_parquet(out)
    huge = rows[rows["source"] == "circle/huge.png"]
    assert len(huge) == 1 and huge["predicted_class"].isna().all()
    assert "max_file_bytes" in huge["reason"].iloc[0]
    assert summary["inputs_read"] == len(rows) == summary["scored"] + summary["unusable"]
