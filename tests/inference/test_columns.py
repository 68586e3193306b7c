"""The columns a prediction keeps and how it types its classes (plain pandas, no Spark): kept input columns as
strings, null where a record lacks one; names that would collide refused; labels and predictions integers when
every class of the checkpoint is one; the class of each probability in the output, not only in a side file."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch
from pyspark.sql import types as T

from core.config import load_section
from core.errors import UsageError
from inference import batch, columns, predict
from pipelines import text

VOCABULARY = ["<pad>", "<unk>", "the", "plot", "was", "good"]


def _config(**changes):
    return load_section("predict", batch.PredictConfig, flags=changes)


def test_kept_values_are_strings_as_read_json_text_for_other_values_and_null_where_absent():
    raw = (b'{"ticket_id": 12345, "customer": "Zo\xc3\xab", "vip": true, "score": 1.5, "tags": ["a", 2], '
           b'"note": null}')
    names = ("ticket_id", "customer", "vip", "score", "tags", "note", "absent")
    assert columns.kept_values(raw, fmt="jsonl", header=None, names=names) == [
        "12345", "Zoë", "true", "1.5", '["a",2]', None, None]
    assert columns.kept_values(b'{"ticket_id": "T-7"}', fmt="parquet", header=None, names=("ticket_id",)) == ["T-7"]
    for broken in (b'{"ticket_id": 1', b'[1, 2]', b'{"ticket_id": "\xff"}', b""):
        assert columns.kept_values(broken, fmt="jsonl", header=None, names=("ticket_id",)) == [None]
    header = ["body", "ticket_id"]
    assert columns.kept_values(b'"the plot",0042', fmt="csv", header=header, names=("ticket_id", "x")) == [
        "0042", None]  # a CSV cell is text: as read, leading zeros and all
    assert columns.kept_values(b"one cell", fmt="csv", header=header, names=("ticket_id",)) == [None]


def test_raw_lines_keep_the_named_columns_and_read_the_fields_given():
    params = text.ParseParams(fmt="jsonl", text_field="body", label_field="category", tokens_field=None,
                              tokenizer="word", lowercase=True)
    lines = [b'{"body": "The plot", "category": 2, "ticket_id": 7}', b'{"body": "good", "customer": "ann"}',
             b'{"text": "the plot", "ticket_id": 9}']
    batch_ = [text.RawRecord(f"t.jsonl:{i + 1}", "t.jsonl", line, None) for i, line in enumerate(lines)]
    rows = predict.prepare_text_batch(batch_, params=params, vocabulary=VOCABULARY, max_length=8, dtype="<u2",
                                      keep=("ticket_id", "customer")).to_pydict()
    assert list(rows)[-2:] == ["ticket_id", "customer"]
    assert rows["ticket_id"] == ["7", None, "9"] and rows["customer"] == [None, "ann", None]
    assert rows["label"] == ["2", None, None]
    assert rows["reason"] == [None, None, "missing field: text field 'body' is absent"]
    assert np.frombuffer(rows["features"][0], "<u2").tolist() == [2, 3]


@pytest.mark.parametrize("names, message", [
    (["ticket_id", "id"], "--keep-columns: 'id' is the output's own column 'id'"),
    (["Predicted_Class"], "--keep-columns: 'Predicted_Class' is the output's own column 'predicted_class'"),
    (["probability_by_class"], "'probability_by_class' is the output's own column"),
    (["ticket_id", "Ticket_ID"], "--keep-columns: 'Ticket_ID' is named twice"),
    (["ticket_id", " "], "--keep-columns: an empty column name"),
])
def test_kept_columns_that_collide_with_the_output_or_each_other_are_refused_by_name(names, message):
    with pytest.raises(UsageError, match=message):
        columns.check_text_options(_config(keep_columns=names), kind="sequence", dataset=False)
    assert columns.check_text_options(_config(keep_columns=["meta.id", "customer"]), kind="sequence",
                                      dataset=False) == ("meta.id", "customer")


@pytest.mark.parametrize("key, flag", [("keep_columns", "--keep-columns"), ("text_field", "--text-field"),
                                       ("label_field", "--label-field")])
def test_text_options_for_a_dataset_or_images_are_refused_naming_the_flag(key, flag):
    config = _config(**{key: ["ticket_id"] if key == "keep_columns" else "body"})
    with pytest.raises(UsageError, match=rf"^{flag} \(config predict.{key}\) applies to raw text inputs only.*"
                                         r"a dataset keeps no column of its inputs"):
        columns.check_text_options(config, kind="sequence", dataset=True)
    with pytest.raises(UsageError, match=rf"^{flag} .*not to image inputs"):
        columns.check_text_options(config, kind="image", dataset=False)
    assert columns.check_text_options(_config(), kind="image", dataset=True) == ()


def test_split_names_of_the_flag():
    assert columns.split_names("ticket_id, customer") == ["ticket_id", "customer"]
    assert columns.split_names(None) is None


def test_classes_are_integers_only_when_every_class_is_one_in_its_own_digits():
    assert columns.integer_classes(["0", "1", "2"]) and columns.integer_classes(["-1", "10"])
    for names in (["0", "pos"], ["007", "1"], ["1", str(2 ** 63)], [], ["1.0"]):
        assert not columns.integer_classes(names), names
    assert columns.class_type(["0", "1"]) == T.LongType() and columns.class_type(["a"]) == T.StringType()
    assert [columns.as_class(v, True) for v in ("2", "pos", "02", None, float("nan"))] == [2, None, None, None, None]
    assert columns.as_class("pos", False) == "pos"


def test_the_output_schema_keeps_its_columns_and_types_the_classes():
    assert tuple(predict.PREDICTION_SCHEMA.names) == columns.OUTPUT_COLUMNS
    schema = predict.prediction_schema(("0", "1"), keep=("ticket_id",))
    assert schema.names == [*columns.OUTPUT_COLUMNS, "ticket_id"]
    assert schema["label"].dataType == schema["predicted_class"].dataType == T.LongType()
    assert schema["probability_by_class"].dataType == T.MapType(T.LongType(), T.FloatType())
    assert schema["ticket_id"].dataType == T.StringType()
    assert predict.prediction_schema(("neg", "pos"))["predicted_class"].dataType == T.StringType()


class _Fixed(torch.nn.Module):
    """A model whose logits favour the class of each row's first token id minus 2."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.n = n_classes

    def forward(self, tokens, lengths):
        return torch.nn.functional.one_hot(tokens[:, 0] - 2, self.n).float() * 5


def _scoring_rows(labels):
    n = len(labels)
    features = [np.asarray([2 + i % 2], "<u2").tobytes() for i in range(n - 1)] + [None]
    return pd.DataFrame({"id": range(n), "source": [f"t.jsonl:{i + 1}" for i in range(n)], "split": [None] * n,
                         "label": labels, "features": features, "length": [1] * (n - 1) + [None],
                         "reason": [None] * (n - 1) + ["missing field: text field 'body' is absent"],
                         "ticket_id": [f"T{i}" for i in range(n)]})


@pytest.mark.parametrize("classes, labels, expected_labels, predicted", [
    (("0", "1"), ["1", "pos", None], [1, None, None], [0, 1, None]),
    (("neg", "pos"), ["pos", "1", None], ["pos", "1", None], ["neg", "pos", None]),
])
def test_scores_name_their_classes_typed_as_the_training_labels(classes, labels, expected_labels, predicted):
    source = predict.ModelSource(checkpoint=(b"", b""), sha256="x", kind="sequence", classes=classes,
                                 token_dtype="<u2")
    out = predict.score_batch(_scoring_rows(labels), model=_Fixed(2), source=source, batch_size=2,
                              keep=("ticket_id",))
    assert list(out.columns) == predict.prediction_schema(classes, keep=("ticket_id",)).names
    assert [None if pd.isna(v) else v for v in out["label"]] == expected_labels
    assert [None if pd.isna(v) else v for v in out["predicted_class"]] == predicted
    integer = classes[0] == "0"
    assert str(out["predicted_class"].dtype) == str(out["label"].dtype) == ("Int64" if integer else "object")
    first = out["probability_by_class"][0]
    assert list(first) == [columns.as_class(c, integer) for c in classes]
    assert first[predicted[0]] == pytest.approx(out["top_probability"][0])
    assert out["probability_by_class"][2] is None and out["ticket_id"].tolist() == ["T0", "T1", "T2"]
