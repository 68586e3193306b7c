"""Batch inference: rows in = rows out, predictions equal the model applied in-process, raw inputs equal their
preprocessed rows, and a tampered or foreign checkpoint is refused (exit 2, naming the file)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from core.config import load_section
from core.paths import to_url
from dataset.info import load_dataset_info
from inference import batch
from tests.conftest import REPO, subprocess_env
from training import checkpoint
from training.collation import ImageDecoder, image_collate, sequence_collate

pytestmark = pytest.mark.spark


def _config(**changes):
    return load_section("predict", batch.PredictConfig, flags={"batch_size": 16, **changes})


def _run(spark, ckpt, out, **where):
    summary = batch.predict(spark, model=batch.load_checkpoint(str(ckpt)), output_url=to_url(str(out)),
                          config=_config(split=where.pop("split", "test")), **where)
    return summary, pd.read_parquet(out)


def _in_process(ckpt, split_url, kind, ids):
    """The model applied here, to the stored rows with these ids, through the training loader's collate."""
    model, payload = checkpoint.load_model(ckpt)
    table = pd.read_parquet(split_url.removeprefix("file://"))
    table = table[table["sample_id"].isin(ids)].reset_index(drop=True)
    rows = list(table.itertuples(index=False))
    if kind == "image":
        inputs = image_collate(rows, decoder=ImageDecoder(payload["dataset"]["image"]["codec"]))[0]
    else:
        inputs = sequence_collate(rows, dtype=payload["dataset"]["sequence"]["token_dtype"])[0]
    with torch.no_grad():
        probs = torch.softmax(model(*inputs), dim=1).numpy()
    return dict(zip(table["sample_id"], probs))


@pytest.mark.parametrize("kind", ["image", "sequence"])
def test_dataset_split_predictions_equal_the_model_in_process(spark, image_dataset, text_dataset, image_checkpoint,
                                                             text_checkpoint, tmp_path, kind):
    dataset, ckpt = (image_dataset, image_checkpoint) if kind == "image" else (text_dataset, text_checkpoint)
    info = load_dataset_info(str(dataset))
    summary, out = _run(spark, ckpt, tmp_path / "out", data=info, split="all")
    total = sum(s.rows for s in info.splits.values())
    assert (summary["inputs_read"], summary["scored"], summary["unusable"]) == (total, total, 0)
    assert len(out) == total and out["id"].is_unique and out["reason"].isna().all()
    assert out.groupby("split").size().to_dict() == {n: s.rows for n, s in info.splits.items() if s.rows}
    assert set(out["label"]) <= set(info.classes) and out["label"].notna().all()
    sample = out[out["split"] == "test"].head(5)
    expected = _in_process(ckpt, info.splits["test"].url, kind, set(sample["id"]))
    for row in sample.itertuples():
        np.testing.assert_allclose(row.probabilities, expected[row.id], rtol=1e-5, atol=1e-6)
        assert row.predicted_index == int(np.argmax(expected[row.id]))
        assert row.predicted_class == info.classes[row.predicted_index]
        assert row.top_probability == pytest.approx(float(np.max(expected[row.id])), abs=1e-6)
    assert summary["classes"] == info.classes
    assert (tmp_path / "out" / batch.SUMMARY_FILE).is_file()


def test_raw_images_rows_in_equal_rows_out_and_match_their_dataset_rows(spark, sample_images, image_dataset,
                                                                          image_checkpoint, tmp_path):
    (sample_images_copy := tmp_path / "raw").mkdir()
    shutil.copytree(sample_images, sample_images_copy, dirs_exist_ok=True)
    summary, out = _run(spark, image_checkpoint, tmp_path / "out", input_url=to_url(str(sample_images_copy)))
    files = [p for p in sample_images_copy.rglob("*") if p.is_file()]
    assert (summary["inputs_read"], summary["scored"], summary["unusable"]) == (len(files), len(files) - 6, 6)
    assert len(out) == len(files) and set(out["source"]) == {p.relative_to(sample_images_copy).as_posix()
                                                            for p in files}
    bad = out[out["reason"].notna()]
    assert bad["predicted_class"].isna().all() and bad["probabilities"].isna().all()
    assert sorted(summary["unusable_by_reason"]) == ["absurd dimensions", "corrupt or truncated image",
                                                     "empty file", "not a readable image"]
    assert bad.set_index("source").loc["bad_005_truncated.jpg", "reason"].startswith("corrupt or truncated")
    # A raw file scores exactly as its preprocessed row: same id (hash of the path), same probabilities.
    _, dataset = _run(spark, image_checkpoint, tmp_path / "ds", data=load_dataset_info(str(image_dataset)), split="all")
    joined = out.dropna(subset=["predicted_index"]).merge(dataset, on="id", suffixes=("", "_ds"))
    assert len(joined) == summary["scored"] and (joined["source"] == joined["source_ds"]).all()
    np.testing.assert_allclose(np.stack(joined["probabilities"]), np.stack(joined["probabilities_ds"]), atol=1e-6)


def test_raw_texts_rows_in_equal_rows_out_and_match_their_dataset_rows(spark, sample_texts, text_dataset,
                                                                         text_checkpoint, tmp_path):
    summary, out = _run(spark, text_checkpoint, tmp_path / "out", input_url=to_url(str(sample_texts)))
    lines = sum(len(p.read_bytes().split(b"\n")) - 1 for p in sample_texts.glob("*.jsonl"))
    # 9 unusable lines for training; two of them (no label, a null label) are fine to score
    assert (summary["inputs_read"], summary["scored"], summary["unusable"]) == (lines, lines - 7, 7)
    assert len(out) == lines and out["id"].is_unique
    assert set(summary["unusable_by_reason"]) == {"broken JSON", "invalid UTF-8", "missing field", "empty text",
                                                  "wrong type", "empty line"}
    assert out["label"].isna().sum() == 2 + 7
    _, dataset = _run(spark, text_checkpoint, tmp_path / "ds", data=load_dataset_info(str(text_dataset)), split="all")
    joined = out.merge(dataset, on="id", suffixes=("", "_ds"))
    assert len(joined) == len(dataset) and (joined["source"] == joined["source_ds"]).all()
    assert (joined["label"] == joined["label_ds"]).all()
    np.testing.assert_allclose(np.stack(joined["probabilities"]), np.stack(joined["probabilities_ds"]), atol=1e-5)


def test_a_dataset_the_model_was_not_trained_for_is_refused(image_checkpoint, text_dataset):
    model = batch.load_checkpoint(str(image_checkpoint))
    with pytest.raises(batch.UsageError, match=rf"--data .*does not match checkpoint {model.path}.*sequence dataset"):
        batch.check_dataset(model.checkpoint, load_dataset_info(str(text_dataset)), model.path)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "jobs.cli", "predict", *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


def test_tampered_and_foreign_checkpoints_exit_2_naming_the_file(predict_cli, image_checkpoint, image_dataset, tmp_path):
    tampered = tmp_path / "tampered" / "checkpoint.pt"
    tampered.parent.mkdir()
    shutil.copy(checkpoint.sidecar_of(image_checkpoint), checkpoint.sidecar_of(tampered))
    data = bytearray(image_checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    for bad, message in ((tampered, "does not match the SHA-256"), (foreign, "has no foreign.json beside it")):
        result = predict_cli("--checkpoint", str(bad), "--data", str(image_dataset), "--output", str(tmp_path / "out"))
        assert result.returncode == 2, result.stderr
        assert f"error: --checkpoint: checkpoint {bad} {message}" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_scores_raw_texts_end_to_end(predict_cli, text_checkpoint, sample_texts, tmp_path):
    out = tmp_path / "scored"
    result = predict_cli("--checkpoint", str(text_checkpoint.parent), "--input", str(sample_texts), "--output", str(out),
                  "--master", "local[1]", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sum(len(p.read_bytes().split(b"\n")) - 1 for p in sample_texts.glob("*.jsonl"))
    assert f"predict: read {lines} = scored {lines - 7} + unusable 7" in result.stdout
    assert len(pd.read_parquet(out)) == lines


def test_an_output_inside_the_dataset_is_refused(predict_cli, image_checkpoint, image_dataset):
    result = predict_cli("--checkpoint", str(image_checkpoint), "--data", str(image_dataset),
                  "--output", str(image_dataset / "predictions"))
    assert result.returncode == 2
    root = image_dataset.parent.parent  # the fixture is a snapshot folder: <dataset>/snapshots/<id>
    assert (f"--output {to_url(str(image_dataset / 'predictions'))} is inside --data {to_url(str(root))}/: "
            "keep the predictions and the inputs apart") in result.stderr


def test_an_output_that_is_not_an_earlier_prediction_is_never_replaced(predict_cli, image_checkpoint, image_dataset, tmp_path):
    model = image_checkpoint.parent
    before = sorted(p.name for p in model.iterdir())
    result = predict_cli("--checkpoint", str(image_checkpoint), "--data", str(image_dataset), "--output", str(model))
    assert result.returncode == 2 and "holds files that are not an earlier prediction output" in result.stderr
    assert sorted(p.name for p in model.iterdir()) == before
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    result = predict_cli("--checkpoint", str(image_checkpoint), "--data", str(image_dataset), "--output", str(notes))
    assert result.returncode == 2 and f"--output {notes} is a file" in result.stderr
    assert notes.read_text() == "mine"
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / batch.SUMMARY_FILE).write_text("{}")
    batch.check_output(to_url(str(earlier)), str(earlier))  # an earlier prediction output may be replaced
    batch.check_output(to_url(str(tmp_path / "new")), "new")


def test_a_second_prediction_into_one_output_exits_75_and_leftovers_of_dead_runs_go(image_checkpoint, image_dataset,
                                                                                     tmp_path):
    from core.locking import hold

    out = tmp_path / "preds"
    with hold(str(tmp_path / ".preds.predict.lock"), what="a prediction into --output preds"):  # another run
        result = _cli("--checkpoint", str(image_checkpoint), "--data", str(image_dataset), "--output", str(out))
    assert result.returncode == 75 and "a prediction into --output" in result.stderr
    assert "is already running" in result.stderr and not out.exists()
    leftover = tmp_path / f".preds.{batch.STAGING}-4242-deadbeef"
    leftover.mkdir()
    (leftover / "part-0.parquet").write_bytes(b"half")
    with batch.output_lock(to_url(str(out)), str(out)):
        assert not leftover.exists() and (tmp_path / ".preds.predict.lock").exists()
    assert not (tmp_path / ".preds.predict.lock").exists()  # nothing of the lock is left beside the output


def test_inputs_of_which_none_can_be_scored_fail_with_exit_3(cli, image_checkpoint, sample_texts, tmp_path):
    code, _, err = cli("predict", "--checkpoint", str(image_checkpoint), "--input", str(sample_texts), "--output",
                       str(tmp_path / "out"), "--quiet")
    assert code == 3, err[-3000:]
    assert "none of the" in err and "inputs could be scored" in err


def test_raw_csv_lines_are_prepared_like_preprocessing_with_the_label_optional():
    from inference import predict
    from pipelines import text

    params = text.ParseParams(fmt="csv", text_field="review", label_field="stars", tokens_field=None,
                              tokenizer="word", lowercase=True)
    vocabulary = ["<pad>", "<unk>", "the", "plot", "was", "good"]
    batch = [text.RawRecord(source, source.split(":")[0], raw, None, header) for source, raw, header in zip(
        ["a.csv:2", "a.csv:3", "a.csv:4", "b.csv:1"],
        [b"The  PLOT was good!,5", b'"the plot",', b"only one cell", b"x,y"], [b"review,stars"] * 3 + [None])]
    rows = predict.prepare_text_batch(batch, params=params, vocabulary=vocabulary, max_length=3,
                                      dtype="<u2").to_pydict()
    assert rows["reason"][:3] == [None, None, "broken CSV: 1 cells, the header has 2"]
    assert rows["reason"][3] == "broken CSV: the file has no header line"
    assert np.frombuffer(rows["features"][0], "<u2").tolist() == [2, 3, 4] and rows["length"][0] == 3  # truncated
    assert rows["label"][:2] == ["5", None]  # an empty label cell is no label, not a rejection
    assert np.frombuffer(rows["features"][1], "<u2").tolist() == [2, 3]
