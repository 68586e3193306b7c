"""Predictions join back to their inputs: raw texts keep the input columns named (--keep-columns), are read with the
fields named (--text-field, --label-field), a missing field is named, and the classes are in the output, typed as
the training labels were (integers for a model of integer classes)."""
from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.config import load_section
from core.errors import RejectBudgetError, UsageError
from core.paths import to_url
from inference import batch
from jobs import predict as job
from tests.conftest import save_untrained_checkpoint
from tests.jobs.test_predict import _config
from training import checkpoint

pytestmark = pytest.mark.spark

TICKETS = [
    {"ticket_id": 101, "body": "the plot was good", "category": "positive", "customer": "ann"},
    {"ticket_id": 102, "body": "the film was bad", "category": "negative"},
    {"ticket_id": "T-103", "body": "the cast"},  # no label: still scored
    {"body": "great story", "customer": "bo"},   # no ticket_id: null in its row
    {"ticket_id": 105, "text": "the plot"},      # no body: unusable, and the reason names the field
]


@pytest.fixture(scope="module")
def integer_checkpoint(text_dataset, tmp_path_factory):
    """The text model's checkpoint with its classes named 0 and 1, as ``labels: [0, 1]`` names them."""
    ckpt = save_untrained_checkpoint(text_dataset, tmp_path_factory.mktemp("lstm-int"), seed=2)
    payload = checkpoint.load(ckpt)
    names = [str(i) for i in range(len(payload["classes"]))]
    payload.update(classes=names, class_to_index={name: i for i, name in enumerate(names)})
    return checkpoint.save(ckpt.parent / "int" / checkpoint.FINAL_FILE, payload)


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _values(column) -> list:
    """A column's values, null as None (pandas 3 reads a null string as NaN)."""
    return [None if not isinstance(v, (list, tuple, dict)) and pd.isna(v) else v for v in column]


def _predict(spark, ckpt, inputs, out, **config):
    summary = batch.predict(spark, model=batch.load_checkpoint(str(ckpt)), output_url=to_url(str(out)),
                            input_url=to_url(str(inputs)), config=_config(**config))
    return summary, pd.read_parquet(out).sort_values("source", ignore_index=True)


def test_kept_columns_and_named_fields_join_the_predictions_back(spark, text_checkpoint, tmp_path, monkeypatch,
                                                                 capsys):
    tickets = _write_jsonl(tmp_path / "tickets.jsonl", TICKETS)
    monkeypatch.setattr(spark, "stop", lambda: None)  # job.run stops its session: here the test session's own
    out = tmp_path / "scored"
    args = job.build_parser().parse_args([
        "--checkpoint", str(text_checkpoint), "--input", str(tickets), "--output", str(out), "--text-field", "body",
        "--label-field", "category", "--keep-columns", "ticket_id, customer", "--quiet"])
    assert job.run(args) == 0
    assert "predict: read 5 = scored 4 + unusable 1" in capsys.readouterr().out
    rows = pd.read_parquet(out).sort_values("source", ignore_index=True)
    assert list(rows.columns[-2:]) == ["ticket_id", "customer"]
    assert pq.read_schema(next(out.glob("*.parquet"))).field("ticket_id").type == pa.string()
    assert _values(rows["ticket_id"]) == ["101", "102", "T-103", None, "105"]  # a JSON number as its JSON text
    assert _values(rows["customer"]) == ["ann", None, None, "bo", None]
    assert _values(rows["label"]) == ["positive", "negative", None, None, None]
    assert _values(rows["reason"])[:4] == [None] * 4
    assert rows["reason"][4] == "missing field: text field 'body' is absent"
    assert rows["predicted_class"][:4].notna().all() and pd.isna(rows["predicted_class"][4])
    inputs = pd.DataFrame([{"ticket_id": str(t["ticket_id"]), "category": t.get("category")} for t in TICKETS
                           if "ticket_id" in t])
    joined = rows.merge(inputs, on="ticket_id", validate="one_to_one")  # the input's own key joins them back
    assert len(joined) == 4 and _values(joined["category"]) == _values(joined["label"])
    summary = json.loads((out / batch.SUMMARY_FILE).read_text())
    assert summary["keep_columns"] == ["ticket_id", "customer"] and summary["class_type"] == "string"


def test_the_classes_are_in_the_output_beside_their_probabilities(spark, text_checkpoint, tmp_path):
    lines = _write_jsonl(tmp_path / "t.jsonl", [{"text": t["body"]} for t in TICKETS[:3]])
    summary, rows = _predict(spark, text_checkpoint, lines, tmp_path / "out")
    classes = summary["classes"]
    for row in rows.itertuples():
        by_class = dict(row.probability_by_class)
        assert list(by_class) == classes
        assert [by_class[c] for c in classes] == pytest.approx(list(row.probabilities))
        assert by_class[row.predicted_class] == pytest.approx(row.top_probability)


def test_parquet_files_without_the_label_or_a_kept_column_are_still_scored(spark, text_checkpoint, tmp_path):
    inputs = tmp_path / "parquet"
    inputs.mkdir()
    pq.write_table(pa.table({"body": ["the plot was good", "the film was bad"], "category": ["positive", None],
                             "ticket_id": pa.array([7, 8], pa.int64())}), inputs / "a.parquet")
    pq.write_table(pa.table({"body": ["the cast", "great story"]}), inputs / "b.parquet")
    summary, rows = _predict(spark, text_checkpoint, inputs, tmp_path / "out", text_field="body",
                             label_field="category", keep_columns=["ticket_id"])
    assert (summary["inputs_read"], summary["scored"], summary["unusable"]) == (4, 4, 0)
    assert rows["source"].tolist() == ["a.parquet:1", "a.parquet:2", "b.parquet:1", "b.parquet:2"]
    assert _values(rows["ticket_id"]) == ["7", "8", None, None]
    assert _values(rows["label"]) == ["positive", None, None, None]


def test_a_model_of_integer_classes_writes_integer_labels_and_predictions(spark, integer_checkpoint, tmp_path):
    lines = _write_jsonl(tmp_path / "t.jsonl", [{"text": "the plot was good", "label": 1}, {"text": "bad", "label": 0},
                                                {"text": "the cast", "label": "pos"}, {"text": "the film"},
                                                {"label": 1}])
    summary, rows = _predict(spark, integer_checkpoint, lines, tmp_path / "out")
    schema = pq.read_schema(next((tmp_path / "out").glob("*.parquet")))
    assert schema.field("label").type == schema.field("predicted_class").type == pa.int64()
    assert schema.field("probability_by_class").type == pa.map_(pa.int64(), pa.float32())
    assert _values(rows["label"])[:2] == [1, 0] and rows["label"][2:].isna().all()  # "pos" is no class of 0 and 1
    assert set(rows["predicted_class"][:4]) <= {0, 1} and pd.isna(rows["predicted_class"][4])
    assert [k for k, _ in rows["probability_by_class"][0]] == [0, 1]
    assert summary["class_type"] == "integer" and summary["classes"] == ["0", "1"]
    assert sum(summary["predicted"].values()) == 4


def test_a_text_field_the_inputs_lack_is_named_when_nothing_can_be_scored(spark, text_checkpoint, tmp_path):
    tickets = _write_jsonl(tmp_path / "t.jsonl", TICKETS[:2])
    with pytest.raises(RejectBudgetError, match=r"none of the 2 inputs could be scored \(missing field \(2, e\.g\. "
                                                r"\"missing field: text field 'text' is absent\"\)\).*--text-field"):
        _predict(spark, text_checkpoint, tickets, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--keep-columns", "ticket_id"], r"--keep-columns \(config predict.keep_columns\) applies to raw text inputs "
                                      r"only .*a dataset keeps no column of its inputs"),
    (["--text-field", "body"], r"--text-field \(config predict.text_field\) applies to raw text inputs only"),
])
def test_text_options_with_a_dataset_are_refused_naming_the_flag(text_checkpoint, text_dataset, tmp_path, flags,
                                                                  message):
    args = job.build_parser().parse_args(["--checkpoint", str(text_checkpoint), "--data", str(text_dataset),
                                          "--output", str(tmp_path / "out"), *flags])
    with pytest.raises(UsageError, match=message):
        job.run(args)  # refused before Spark starts


def test_kept_columns_named_as_an_output_column_or_for_images_are_refused(text_checkpoint, image_checkpoint,
                                                                          sample_images, tmp_path):
    tickets = _write_jsonl(tmp_path / "t.jsonl", TICKETS)
    args = job.build_parser().parse_args(["--checkpoint", str(text_checkpoint), "--input", str(tickets),
                                          "--output", str(tmp_path / "out"), "--keep-columns", "ticket_id,Label"])
    with pytest.raises(UsageError, match="--keep-columns: 'Label' is the output's own column 'label'"):
        job.run(args)
    args = job.build_parser().parse_args(["--checkpoint", str(image_checkpoint), "--input", str(sample_images),
                                          "--output", str(tmp_path / "out"), "--label-field", "kind"])
    with pytest.raises(UsageError, match="--label-field .* not to image inputs: images have no fields"):
        job.run(args)
    assert load_section("predict", batch.PredictConfig).keep_columns == []  # the committed default
