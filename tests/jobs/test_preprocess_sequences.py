"""The sequence job end to end: lines -> Spark -> Petastorm -> the loader; CSV, Parquet and token-id inputs; flags."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.config import load_section
from core.paths import to_url
from dataset.info import load_dataset_info
from dataset.layout import SPLITS, read_vocabulary
from jobs.preprocess_sequences import main
from pipelines.sequence_dataset import PreprocessSequencesConfig, preprocess_sequences
from pipelines.samples import BAD_LINES
from pipelines.text import normalise, tokenise
from tests.conftest import snapshot_path
from tests.petastorm_rows import petastorm_rows
from training.collation import task_for

pytestmark = pytest.mark.spark


def good_lines(root):
    """(file:line) -> (text, label) of every usable line, read back independently of the job."""
    out = {}
    for path in sorted(root.glob("*.jsonl")):
        for number, raw in enumerate(path.read_bytes().split(b"\n")[:-1], start=1):
            if raw not in BAD_LINES:
                record = json.loads(raw)
                out[f"{path.name}:{number}"] = (record["text"], record["label"])
    return out


def read_all(dataset):
    info = load_dataset_info(str(dataset))
    task = task_for(info.spec)
    rows = {}
    for name in SPLITS:
        for row in petastorm_rows(info.splits[name].url, task.fields + ("source",), columnar=True):
            assert row.source not in rows, f"{row.source} read twice"
            rows[row.source] = (name, row)
    return info, rows


def test_every_line_arrives_once_with_its_tokens_label_and_length(text_dataset, sample_texts):
    expected = good_lines(sample_texts)
    info, rows = read_all(text_dataset)
    vocab = read_vocabulary(to_url(str(text_dataset)))
    dtype = info.manifest.sequence.token_dtype
    assert set(rows) == set(expected)
    for source, (split, row) in rows.items():
        text, label = expected[source]
        tokens = tokenise(normalise(text, lowercase=True), "word")
        assert info.classes[row.label] == label
        assert row.length == min(len(tokens), 24)
        assert [vocab[i] for i in np.frombuffer(row.tokens, dtype)] == tokens[:24]  # no padding stored
    assert vocab[:2] == ["<pad>", "<unk>"]
    assert info.manifest.sequence.truncated == sum(
        len(tokenise(normalise(t, lowercase=True), "word")) > 24 for t, _ in expected.values())


def test_counts_add_up_and_every_bad_line_is_kept_with_its_source(text_dataset, sample_texts):
    meta = json.loads((text_dataset / "metadata.json").read_text())
    total_lines = sum(len(p.read_bytes().split(b"\n")) - 1 for p in sample_texts.glob("*.jsonl"))
    assert meta["records_read"] == total_lines == 800 + len(BAD_LINES)
    assert meta["rejected"] == len(BAD_LINES)
    assert sum(s["rows"] for s in meta["splits"].values()) == 800
    rejected = pq.read_table(text_dataset / "rejected").to_pylist()
    for row in rejected:
        file, line = row["source"].rsplit(":", 1)
        raw = (sample_texts / file).read_bytes().split(b"\n")[int(line) - 1]
        assert raw in BAD_LINES, row
    reasons = " | ".join(r["reason"] for r in rejected)
    for kind in ("broken JSON", "invalid UTF-8", "missing field", "missing label", "empty text", "wrong type",
                 "empty line"):
        assert kind in reasons


def test_split_follows_content(text_dataset):
    _, rows = read_all(text_dataset)
    by_tokens = {}
    for split, row in rows.values():
        by_tokens.setdefault(bytes(row.tokens), set()).add(split)
    assert all(len(splits) == 1 for splits in by_tokens.values())  # duplicates never straddle splits


def run_job(spark, tmp_path, source, fmt, **flags):
    config = load_section("preprocess_sequences", PreprocessSequencesConfig,
                          flags={"ranks": 2, "max_reject_fraction": 1.0, **flags})
    summary = preprocess_sequences(spark, input_url=to_url(str(source)), output_url=to_url(str(tmp_path / "out")),
                                   fmt=fmt, config=config)
    out = snapshot_path(summary)
    return summary, json.loads((out / "metadata.json").read_text()), out


def test_an_unseen_csv_corpus_with_long_lines_non_ascii_and_broken_rows(spark, tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    rows = ['"Ein sehr gutes Buch, wirklich!",gut', '"短い",gut', f'"{"word " * 3000}",schlecht',
            '"Ça ne marche pas du tout 🙁",schlecht', 'only-one-cell', '"",gut', '"unterminated,gut']
    (src / "a.csv").write_text("review,stars\n" + "\n".join(rows) + "\n", encoding="utf-8")
    (src / "b.csv").write_bytes(b"review,stars\n\"bad \xc3\x28 bytes\",gut\n\"fine again\",gut\n")
    summary, meta, out = run_job(spark, tmp_path, src, "csv", text_field="review", label_field="stars",
                                 max_length=16)
    assert meta["csv_header_lines"] == 2
    assert summary["records_read"] == len(rows) + 2 == summary["rows_written"] + summary["rejected"]
    assert summary["rows_written"] == 5 and meta["classes"] == ["gut", "schlecht"]
    assert meta["sequence"]["longest"] == 3000 and meta["sequence"]["truncated"] == 1
    reasons = {r["source"]: r["reason"] for r in pq.read_table(out / "rejected").to_pylist()}
    assert set(reasons) == {"a.csv:6", "a.csv:7", "a.csv:8", "b.csv:2"}
    assert "invalid UTF-8" in reasons["b.csv:2"] and "empty text" in reasons["a.csv:7"]
    assert reasons["a.csv:8"].startswith("broken CSV")  # a quote left open: the rest of the file is one field


def test_parquet_input_with_integer_token_ids(spark, tmp_path):
    src = tmp_path / "events"
    src.mkdir()
    pq.write_table(pa.table({"ids": [[7, 7, 3], [900, 3], [], None, [5]], "churn": [1, 0, 1, 0, None]}),
                   src / "part-0.parquet")
    summary, meta, out = run_job(spark, tmp_path, src, "parquet", tokens_field="ids", label_field="churn",
                                 text_field="")
    assert summary["records_read"] == 5 and summary["rows_written"] == 2 and summary["rejected"] == 3
    vocab = read_vocabulary(to_url(str(out)))
    assert vocab == ["<pad>", "<unk>", "3", "7", "900"]  # original ids by frequency, ties by value as text
    reasons = sorted(r["reason"].split(":")[0] for r in pq.read_table(out / "rejected").to_pylist())
    assert reasons == ["empty text", "missing label", "wrong type"]  # [], null label, null ids


@pytest.mark.parametrize("args, expected", [
    (["--max-length", "0"], "--max-length"),
    (["--format", "xml"], "--format"),
    (["--tokenizer", "bpe"], "--tokenizer"),
])
def test_bad_flags_are_named(tmp_path, capsys, args, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(["--input", str(tmp_path), "--output", str(tmp_path / "o"), *args])
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err


def test_bad_inputs_and_config_are_named(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello\n")
    assert main(["--input", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o")]) == 2
    assert "--input" in capsys.readouterr().err
    assert main(["--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "pass --format" in capsys.readouterr().err
    assert main(["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--set",
                 "preprocess_sequences.vocab_size=2"]) == 2
    assert "preprocess_sequences.vocab_size" in capsys.readouterr().err


def test_a_number_label_among_text_labels_is_rejected_not_a_class_of_its_own(spark, tmp_path):
    src = tmp_path / "mixed"
    src.mkdir()
    lines = [json.dumps({"text": f"review number {i} was {'good' if i % 2 else 'bad'}",
                         "label": "pos" if i % 2 else "neg"}) for i in range(20)]
    lines.append(json.dumps({"text": "a review whose label is a number", "label": 1}))
    (src / "part.jsonl").write_text("\n".join(lines) + "\n")
    summary, meta, out = run_job(spark, tmp_path, src, "jsonl")
    assert meta["classes"] == ["neg", "pos"]
    assert summary["records_read"] == 21 == summary["rows_written"] + summary["rejected"] and summary["rejected"] == 1
    (rejected,) = pq.read_table(out / "rejected").to_pylist()
    assert rejected["source"] == "part.jsonl:21"
    assert rejected["reason"] == ("mixed label types: the label is a number, as in 1 record, where 20 records have "
                                  "text labels")
    # the vocabulary is of the accepted records: the rejected record's own words are not in it
    vocabulary = set(read_vocabulary(to_url(str(out))))
    assert {"review", "number", "good", "bad"} <= vocabulary and not {"whose", "label", "is", "a"} & vocabulary


def test_a_stray_text_label_in_a_csv_column_of_integers_is_rejected_and_integer_labels_can_be_fixed(spark, tmp_path):
    """CSV cells are text: a ``positive`` among 0, 1 and 2 became a fourth class with no training row. Integer labels
    are one kind in any format; ``labels: [0, 1, 2]`` is taken as given."""
    src = tmp_path / "tickets"
    src.mkdir()
    rows = [f'"ticket {i}, about {["billing", "login", "refunds"][i % 3]}",{i % 3}' for i in range(30)]
    (src / "t.csv").write_text("body,label\n" + "\n".join(rows + ['"ticket 30, odd one",positive']) + "\n")
    summary, meta, out = run_job(spark, tmp_path, src, "csv", text_field="body")
    assert meta["classes"] == ["0", "1", "2"] and summary["rejected"] == 1
    (rejected,) = pq.read_table(out / "rejected").to_pylist()
    assert (rejected["source"], rejected["reason"].split(":")[0]) == ("t.csv:32", "mixed label types")
    config = load_section("preprocess_sequences", PreprocessSequencesConfig,
                          overrides=["preprocess_sequences.labels=[0, 1, 2]"], flags={"ranks": 2, "text_field": "body",
                                                                                      "max_reject_fraction": 1.0})
    summary = preprocess_sequences(spark, input_url=to_url(str(src)), output_url=to_url(str(tmp_path / "fixed")),
                                   fmt="csv", config=config)
    assert json.loads((snapshot_path(summary) / "metadata.json").read_text())["classes"] == ["0", "1", "2"]
    assert summary["rejected"] == 1  # positive is not in the fixed list


def test_labels_that_are_all_numbers_are_classes(spark, tmp_path):
    src = tmp_path / "stars"
    src.mkdir()
    (src / "part.jsonl").write_text("".join(json.dumps({"text": f"text {i}", "label": i % 3}) + "\n" for i in range(12)))
    summary, meta, _ = run_job(spark, tmp_path, src, "jsonl")
    assert meta["classes"] == ["0", "1", "2"] and summary["rejected"] == 0
