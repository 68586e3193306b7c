"""The sequence transforms: tokeniser, parsing and rejection reasons (plain Python), and on small DataFrames
built here: vocabulary, ids and truncation, labels, split stability."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.labels import assign_labels, class_map
from pipelines.text import (
    RESERVED,
    ParseParams,
    RawRecord,
    RejectedRecord,
    label_name,
    make_vocabulary,
    map_to_ids,
    normalise,
    parse_batch,
    parse_or_reason,
    parse_record,
    token_counts,
    token_dtype,
    tokenise,
    top_tokens,
)

JSONL = ParseParams(fmt="jsonl", text_field="text", label_field="label", tokens_field=None, tokenizer="word",
                    lowercase=True)


def test_normalise_and_tokenise():
    assert normalise("  The  CAFÉ\u00a0was\tﬁne  ", lowercase=True) == "the café was fine"  # NFKC folds the ligature
    assert tokenise("don't stop, it's good!", "word") == ["don't", "stop", ",", "it's", "good", "!"]
    assert tokenise("naïve 🙂 ok", "word") == ["naïve", "🙂", "ok"]
    assert tokenise("ab c", "char") == ["a", "b", " ", "c"]


def test_parse_record_returns_tokens_label_and_split_key():
    tokens, label, key, is_number = parse_record(b'{"text": "Not GOOD at all", "label": "neg", "extra": 1}', JSONL)
    assert (tokens, label, key, is_number) == (["not", "good", "at", "all"], "neg", "not good at all", False)
    assert parse_record(b'{"text": "x", "label": 3}', JSONL)[1::2] == ("3", True)  # a number: kinds must not mix
    assert parse_record(b'{"text": "x", "label": 3.0}', JSONL)[1::2] == ("3", True)
    assert parse_record(b'{"text": "x", "label": "3"}', JSONL)[1::2] == ("3", True)  # an integer in any format
    assert parse_record(b'{"text": "x", "label": true}', JSONL, require_label=False).label_is_number is False


@pytest.mark.parametrize("raw, reason", [
    (b'{"text": "a", "label": "p"', "broken JSON"),
    (b'[1, 2]', "broken JSON: a line must hold an object"),
    (b'{"text": "caf\xe9", "label": "p"}', "invalid UTF-8"),
    (b'{"label": "p"}', "missing field: text field 'text'"),
    (b'{"text": "a"}', "missing field: label field 'label'"),
    (b'{"text": "a", "label": null}', "missing label"),
    (b'{"text": "a", "label": "  "}', "missing label"),
    (b'{"text": "a", "label": [1]}', "unmappable label"),
    (b'{"text": "a", "label": 0.5}', "unmappable label"),
    (b'{"text": "a", "label": true}', "unmappable label: 'label' is true, a JSON boolean"),
    (b'{"text": "a", "label": "p\\nq"}', r"label has a control character: \\n in 'label'"),
    (b'{"text": 7, "label": "p"}', "wrong type"),
    (b'{"text": " \\t ", "label": "p"}', "empty text"),
    (b'   ', "empty line"),
])
def test_every_bad_record_kind_has_a_reason(raw, reason):
    with pytest.raises(RejectedRecord, match=reason):
        parse_record(raw, JSONL)


def test_csv_records_and_given_token_ids():
    csv_params = ParseParams(fmt="csv", text_field="text", label_field="label", tokens_field=None, tokenizer="word",
                             lowercase=False)
    assert parse_record(b'"Hello, world",pos', csv_params, ["text", "label"])[:2] == (["Hello", ",", "world"], "pos")
    with pytest.raises(RejectedRecord, match="3 cells, the header has 2"):
        parse_record(b"a,b,c", csv_params, ["text", "label"])
    ids = ParseParams(fmt="jsonl", text_field="", label_field="y", tokens_field="ids", tokenizer="word", lowercase=True)
    assert parse_record(b'{"ids": [5, 0, 17], "y": 1}', ids)[:2] == (["5", "0", "17"], "1")
    for bad in (b'{"ids": [1, -2], "y": 1}', b'{"ids": "x", "y": 1}', b'{"ids": [], "y": 1}', b'{"ids": [true], "y": 1}'):
        with pytest.raises(RejectedRecord):
            parse_record(bad, ids)


def test_with_the_label_optional_a_record_parses_the_same_with_or_without_a_label():
    labelled = parse_record(b'{"text": "Not GOOD at all", "label": "neg"}', JSONL, require_label=False)
    assert labelled == (["not", "good", "at", "all"], "neg", "not good at all", False)
    assert labelled.tokens == parse_record(b'{"text": "Not GOOD at all", "label": "neg"}', JSONL).tokens
    assert parse_record(b'{"text": "Not GOOD at all"}', JSONL, require_label=False) == (
        ["not", "good", "at", "all"], None, "not good at all", False)
    csv_params = ParseParams(fmt="csv", text_field="review", label_field="stars", tokens_field=None,
                             tokenizer="word", lowercase=False)
    header = ["review", "stars"]
    assert parse_record(b'"Fine, really",4', csv_params, header, require_label=False) == (
        ["Fine", ",", "really"], "4", "Fine, really", True)
    assert parse_record(b'"Fine, really",', csv_params, header, require_label=False).label is None
    with pytest.raises(RejectedRecord, match="missing label: 'stars' is empty"):
        parse_record(b'"Fine, really",', csv_params, header)
    # Parquet rows arrive as JSON objects of the columns read; predict reads no label column, a null label is none
    parquet = ParseParams(fmt="parquet", text_field="", label_field="churn", tokens_field="ids", tokenizer="word",
                          lowercase=True)
    assert parse_record(b'{"ids": [4, 0, 9]}', parquet, require_label=False) == (["4", "0", "9"], None, "4 0 9", False)
    assert parse_record(b'{"ids": [4], "churn": 1.0}', parquet, require_label=False).label == "1"
    assert parse_record(b'{"ids": [4], "churn": null}', parquet, require_label=False).label is None


@pytest.mark.parametrize("raw, reason", [
    (b'{"label": "p"}', "missing field: text field 'text' is absent"),
    (b'{"text": "caf\xe9", "label": "p"}', "invalid UTF-8: byte 13: invalid continuation byte"),
    (b'{"text": "caf\xe9"}', "invalid UTF-8: byte 13: invalid continuation byte"),
    (b'{"text": "a", "label": "p"', "broken JSON: Expecting ',' delimiter at column 27"),
    (b'[1, 2]', "broken JSON: a line must hold an object, found list"),
    (b'{"text": 7}', "wrong type: text field 'text' is int, not a string"),
    (b'{"text": " \\t "}', "empty text: no tokens after normalisation"),
    (b'  ', "empty line"),
])
def test_with_the_label_optional_every_other_rejection_keeps_its_reason(raw, reason):
    with pytest.raises(RejectedRecord) as optional:
        parse_record(raw, JSONL, require_label=False)
    assert str(optional.value) == reason
    if b'"label"' in raw:  # the same reason as preprocessing gives the line
        with pytest.raises(RejectedRecord) as required:
            parse_record(raw, JSONL)
        assert str(required.value) == reason


@pytest.mark.parametrize("record, required, optional", [
    ({"label": " pos "}, "pos", "pos"),
    ({"label": 3}, "3", "3"),
    ({"label": 3.0}, "3", "3"),
    ({"label": "Cafe\u0301"}, "Caf\u00e9", "Caf\u00e9"),  # NFD and NFC spellings are one class
    ({"label": True}, RejectedRecord("unmappable label: 'label' is true, a JSON boolean; a label is a string or "
                                     "an integer"), "True"),
    ({"label": 0.5}, RejectedRecord("unmappable label: 'label' is 0.5, a JSON number that is not an integer; a "
                                    "label is a string or an integer"), "0.5"),
    ({"label": [1]}, RejectedRecord("unmappable label: 'label' is [1], a JSON array; a label is a string or an "
                                    "integer"), None),
    ({"label": {"a": 1}}, RejectedRecord("""unmappable label: 'label' is {"a": 1}, a JSON object; a label is a """
                                         "string or an integer"), None),
    ({"label": "a\nb"}, RejectedRecord("label has a control character: \\n in 'label'"), "a\nb"),
    ({"label": None}, RejectedRecord("missing label: 'label' is empty"), None),
    ({"label": "  "}, RejectedRecord("missing label: 'label' is empty"), None),
    ({"text": "x"}, RejectedRecord("missing field: label field 'label' is absent"), None),
])
def test_label_name_required_rejects_what_optional_reads_as_no_label(record, required, optional):
    assert label_name(record, "label", required=False) == optional
    if isinstance(required, RejectedRecord):
        with pytest.raises(RejectedRecord) as exc:
            label_name(record, "label")
        assert str(exc.value) == str(required)
    else:
        assert label_name(record, "label") == required


def test_parse_or_reason_never_raises_and_parse_batch_keeps_the_rejected_line():
    assert parse_or_reason(b'{"text": "Two words"}', JSONL, require_label=False) == ((["two", "words"], None,
                                                                                     "two words", False), None)
    assert parse_or_reason(b'{"text": "Two words"}', JSONL) == (None, "missing field: label field 'label' is absent")
    xml = ParseParams(fmt="xml", text_field="text", label_field="label", tokens_field=None, tokenizer="word",
                      lowercase=True)
    assert parse_or_reason(b"<r/>", xml) == (None, "parse failed: ValueError: format 'xml' is not jsonl, csv or parquet")
    batch = [RawRecord("a.jsonl:1", "a.jsonl", b'{"text": "Fine", "label": "p"}', None),
             RawRecord("a.jsonl:2", "a.jsonl", b'{"text": "caf\xe9", "label": "p"}', None),
             RawRecord("a.jsonl:3", "a.jsonl", b"x" * 20, "record too long: 20 bytes")]
    rows = parse_batch(batch, params=JSONL).to_pydict()
    assert rows["source"] == ["a.jsonl:1", "a.jsonl:2", "a.jsonl:3"]
    assert rows["tokens"][0] == ["fine"] and rows["label_name"][0] == "p" and rows["n_tokens"][0] == 1
    assert rows["reason"] == [None, "invalid UTF-8: byte 13: invalid continuation byte", "record too long: 20 bytes"]
    assert rows["raw_text"] == [None, '{"text": "caf\ufffd", "label": "p"}', "x" * 20]
    assert rows["tokens"][1:] == [None, None] and rows["split_key"] == ["fine", None, None]
    assert parse_batch([], params=JSONL).num_rows == 0


def test_parse_batch_keeps_max_length_tokens_and_counts_them_all():
    """A 16 MiB record holds millions of tokens: only the first max_length are kept (all a model is trained on),
    so a record's tokens never fill an executor's memory; the count before the cut feeds the length statistics."""
    import dataclasses

    batch = [RawRecord("a.jsonl:1", "a.jsonl", b'{"text": "one two three four five", "label": "p"}', None)]
    rows = parse_batch(batch, params=dataclasses.replace(JSONL, max_length=3)).to_pydict()
    assert rows["tokens"] == [["one", "two", "three"]] and rows["n_tokens"] == [5]
    assert rows["split_key"] == ["one two three four five"]  # the split still sees the whole text


def test_parse_batch_labels_each_record_as_parse_record_does_whatever_came_before():
    """A batch remembers the labels it has cleaned: 1, 1.0 and "1" are one class, true and 1.5 stay rejected
    after them, and a reason is the record's own."""
    labels = ['1', '1.0', '"1"', 'true', '1.5', '" pos "', '"pos"', '""', '1', 'true', '"a\\nb"']
    raws = [f'{{"text": "t {i}", "label": {label}}}'.encode() for i, label in enumerate(labels)]
    rows = parse_batch([RawRecord(f"a.jsonl:{i}", "a.jsonl", raw, None) for i, raw in enumerate(raws)],
                       params=JSONL).to_pydict()
    expected = [parse_or_reason(raw, JSONL) for raw in raws]
    assert rows["label_name"] == [p.label if p else None for p, _ in expected]
    assert rows["label_is_number"] == [p.label_is_number if p else None for p, _ in expected]
    assert rows["reason"] == [reason for _, reason in expected]
    assert rows["label_name"][:3] == ["1", "1", "1"] and rows["label_name"][5:7] == ["pos", "pos"]
    assert [r.split(":")[0] if r else None for r in rows["reason"]] == [
        None, None, None, "unmappable label", "unmappable label", None, None, "missing label", None,
        "unmappable label", "label has a control character"]


def test_vocabulary_keeps_reserved_ids_first():
    vocab = make_vocabulary(["the", "<unk>", "a"])
    assert vocab[:2] == list(RESERVED) == ["<pad>", "<unk>"] and vocab[2:] == ["the", "a"]
    assert token_dtype(65536) == "<u2" and token_dtype(65537) == "<i4"


@pytest.mark.spark
def test_top_tokens_break_ties_by_token_and_respect_min_count(spark):
    parsed = spark.createDataFrame(
        [(["b", "a", "c", "c"], None), (["d", "a", "b"], None), (["zzz"] * 9, "broken JSON: x")],
        "tokens array<string>, reason string")
    counts = token_counts(parsed)  # rejected records do not count
    assert [r["token"] for r in top_tokens(counts, vocab_size=10, min_count=1).collect()] == ["a", "b", "c", "d"]
    assert [r["token"] for r in top_tokens(counts, vocab_size=4, min_count=1).collect()] == ["a", "b"]
    assert [r["token"] for r in top_tokens(counts, vocab_size=10, min_count=2).collect()] == ["a", "b", "c"]


def test_ids_of_a_whole_arrow_batch_are_encode_ids_of_each_row():
    """The array version against the per-row one: unknown tokens, empty and null rows, rows longer than the cut,
    a sliced batch (its offsets do not start at 0), both dtypes."""
    import pyarrow as pa

    from pipelines.text import encode_ids, ids_of

    rng = np.random.default_rng(2)
    words = make_vocabulary([f"w{i}" for i in range(40)])
    index = {t: i for i, t in enumerate(words)}
    rows = [None if rng.random() < 0.1 else [f"w{j}" for j in rng.integers(0, 60, rng.integers(0, 9))]
            for _ in range(300)]
    array = pa.array(rows, pa.list_(pa.string())).slice(7, 250)
    for dtype, cut in (("<u2", 5), ("<i4", 64)):
        ids, lengths = ids_of(array, pa.array(words), max_length=cut, dtype=dtype)
        expected = [encode_ids(t, index, cut, dtype) if t is not None else (None, None) for t in rows[7:257]]
        assert ids.to_pylist() == [e[0] for e in expected]
        assert lengths.to_pylist() == [e[1] for e in expected]


@pytest.mark.spark
def test_ids_truncation_and_true_length(spark):
    vocab = make_vocabulary(["the", "good"])
    parsed = spark.createDataFrame([(["the", "good", "movie", "the"], None), (["good"], None), (None, "empty line")],
                                   "tokens array<string>, reason string")
    rows = map_to_ids(parsed, vocabulary=vocab, max_length=3, dtype="<u2").collect()
    assert [list(np.frombuffer(r["tokens"], "<u2")) for r in rows[:2]] == [[2, 3, 1], [3]]  # movie -> unknown (1)
    assert [r["length"] for r in rows] == [3, 1, None] and rows[2]["tokens"] is None


@pytest.mark.spark
def test_fixed_label_list_rejects_labels_it_cannot_map(spark):
    mapping = class_map(["pos", "neg"])
    df = spark.createDataFrame([("pos", None), ("meh", None), ("neg", None)], "label_name string, reason string")
    out = assign_labels(df, class_to_index=mapping, name_col="label_name").collect()
    assert [r["label"] for r in out] == [1, None, 0]
    assert "label_name meh is not in the label map" in out[1]["reason"]


def test_csv_quote_state_follows_quoting_rules():
    from pipelines.text import csv_quote_state

    assert csv_quote_state(b'plain,5', False) is False
    assert csv_quote_state(b'"opens,5', False) is True
    assert csv_quote_state(b'a "quoted" word,1', False) is False       # not at a field's start: a plain character
    assert csv_quote_state(b'"x ""y"" z",1', False) is False           # "" inside a quoted field is a quote
    assert csv_quote_state(b'x, "y""', False) is False                 # a space before the quote: unquoted field
    assert csv_quote_state(b'still inside ""', True) is True
    assert csv_quote_state(b'closes",1', True) is False
    assert csv_quote_state(b'a,"b', True) is False                     # inside: the quote closes, then plain text
