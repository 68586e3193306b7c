"""Hostile inputs through the preprocessing jobs (issue 13, items 5 and 6): CSV records whose quoted field spans
lines are one record each (RFC 4180) and an unbalanced quote is rejected line by line, and records or files above
the configured limits are rejected with a reason instead of failing the job. (Names with spaces and other characters: tests/test_path_spellings.py.)"""
from __future__ import annotations

import io
import json
import os

import pyarrow.parquet as pq
import pytest
from PIL import Image

from core.config import load_section
from core.errors import ConfigError
from core.paths import to_url
from dataset import layout
from pipelines.image_dataset import PreprocessImagesConfig, preprocess_images
from pipelines.sequence_dataset import PreprocessSequencesConfig, preprocess_sequences
from tests.conftest import snapshot_path

SPANNING_CSV = (
    "review,stars\n"
    "good film,5\n"
    '"Great film\n'        # line 3: a quoted field opens ...
    "nice,4\n"             # line 4: ... read alone this would be a good row (text "nice", label 4)
    'really",5\n'          # line 5: ... and closes here
    'a "quoted" word,1\n'  # line 6: a quote inside an unquoted field is a plain character
    '"fine, ""really""",4\n'
    "dull,1\n")


def split_rows(snapshot, columns: list[str]) -> list[dict]:
    out = []
    for split in layout.SPLITS:
        if any((snapshot / split).glob("*.parquet")):
            out += pq.read_table(snapshot / split, columns=columns).to_pylist()
    return out


def sequences(spark, src, out, fmt: str, **flags) -> dict:
    config = load_section("preprocess_sequences", PreprocessSequencesConfig,
                          flags={"ranks": 1, "max_reject_fraction": 0.9, **flags})
    return preprocess_sequences(spark, input_url=to_url(str(src)), output_url=to_url(str(out)), fmt=fmt,
                                config=config)


@pytest.mark.spark
def test_a_csv_record_spanning_lines_is_one_record_and_an_unbalanced_quote_is_rejected(spark, tmp_path):
    src = tmp_path / "csv"
    src.mkdir()
    (src / "r.csv").write_text(SPANNING_CSV)
    (src / "u.csv").write_text('review,stars\nfine,5\n"never closed,1\nread alone this is fine,2\n')
    summary = sequences(spark, src, tmp_path / "ds", "csv", text_field="review", label_field="stars")
    assert (summary["records_read"], summary["rows_written"], summary["rejected"]) == (8, 6, 2)
    snapshot = snapshot_path(summary)
    assert sorted(r["source"] for r in split_rows(snapshot, ["source"])) == [
        "r.csv:2", "r.csv:3", "r.csv:6", "r.csv:7", "r.csv:8", "u.csv:2"]  # r.csv:3 holds lines 3 to 5
    rejected = {r["source"]: r["reason"] for r in pq.read_table(snapshot / "rejected").to_pylist()}
    assert sorted(rejected) == ["u.csv:3", "u.csv:4"]
    assert all(reason.startswith("broken CSV: unbalanced quote: the quoted field opened at line 3 is not closed")
               for reason in rejected.values())


@pytest.mark.spark
def test_a_csv_record_spanning_lines_in_a_big_file_is_one_record(spark, tmp_path):
    from pipelines import inputs, reading

    good = [f"row {i} {'x' * (i % 29)},{i % 2}" for i in range(600)]
    body = good[:300] + ['"opens here', "and, goes on", 'closes",1'] + good[300:]
    (tmp_path / "big.csv").write_text("text,label\n" + "\n".join(body) + "\n")
    records = reading.read_records(spark, inputs.list_files(f"file://{tmp_path}").entries, fmt="csv", fields=[])
    got = {r["source"]: (r["broken"], bytes(r["raw"])) for r in records.select("source", "broken", "raw").collect()}
    assert len(got) == 601 and not any(broken for broken, _ in got.values())
    assert got["big.csv:302"][1] == b'"opens here\nand, goes on\ncloses",1'  # lines 302 to 304, one record


@pytest.mark.spark
def test_a_record_or_a_text_file_over_its_limit_is_rejected_with_its_size(spark, tmp_path):
    src = tmp_path / "texts"
    src.mkdir()
    huge = json.dumps({"text": "word " * 2000, "label": "pos"})
    (src / "a.jsonl").write_text("\n".join([json.dumps({"text": "fine film", "label": "pos"}), huge,
                                            json.dumps({"text": "dull film", "label": "neg"})]) + "\n")
    big = "".join(json.dumps({"text": f"line {i}", "label": "neg"}) + "\n" for i in range(2000))  # ~64 KB
    (src / "b.jsonl").write_text(big)
    summary = sequences(spark, src, tmp_path / "ds", "jsonl", max_record_bytes=1024, max_file_bytes=32 * 1024)
    assert (summary["records_read"], summary["rows_written"], summary["rejected"]) == (4, 2, 2)
    row, unread = sorted(pq.read_table(snapshot_path(summary) / "rejected").to_pylist(), key=lambda r: r["source"])
    assert row["source"] == "a.jsonl:2"
    assert row["reason"] == f"record too long: {len(huge)} bytes, more than max_record_bytes 1024"
    assert row["raw_text"] == huge[:500]
    assert unread["source"] == "b.jsonl:1"  # the whole file, never read
    assert unread["reason"] == f"file too large: {len(big)} bytes, more than max_file_bytes 32768"


def png(colour) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(out, "PNG")
    return out.getvalue()


@pytest.mark.spark
def test_a_3_gb_file_is_rejected_as_too_large_without_being_read(spark, tmp_path):
    src = tmp_path / "images"
    for i in range(4):
        (src / "cat").mkdir(parents=True, exist_ok=True)
        (src / "cat" / f"{i}.png").write_bytes(png((60 * i, 0, 0)))
    huge = src / "cat" / "huge.png"
    with huge.open("wb") as fh:  # sparse: 3 GB that take no disk space; Spark fails on reading a file over 2 GB
        fh.truncate(3 * 2**30)
    config = load_section("preprocess_images", PreprocessImagesConfig,
                          flags={"image_size": 8, "ranks": 1, "max_reject_fraction": 0.5, "allow_single_class": True})
    summary = preprocess_images(spark, input_url=to_url(str(src)), output_url=to_url(str(tmp_path / "ds")),
                                config=config)
    assert (summary["records_read"], summary["rows_written"], summary["rejected"]) == (5, 4, 1)
    [row] = pq.read_table(snapshot_path(summary) / "rejected").to_pylist()
    assert (row["relpath"], row["class_name"]) == ("cat/huge.png", "cat")
    assert row["reason"] == f"file too large: {3 * 2**30} bytes, more than max_file_bytes {config.max_file_bytes}"
    os.remove(huge)


@pytest.mark.parametrize("section, cls, key", [
    ("preprocess_images", PreprocessImagesConfig, "max_file_bytes"),
    ("preprocess_sequences", PreprocessSequencesConfig, "max_record_bytes"),
])
@pytest.mark.parametrize("value", ["0", str(2**31)])
def test_size_limits_out_of_range_are_named(section, cls, key, value):
    with pytest.raises(ConfigError) as exc:
        load_section(section, cls, overrides=[f"{section}.{key}={value}"])
    assert f"config key {section}.{key}: must be in [1, {2**31 - 1}]" in str(exc.value) and value in str(exc.value)


@pytest.mark.spark
def test_parsed_records_are_kept_with_their_split_and_without_a_second_copy_of_the_text(spark, tmp_path):
    from pyspark.sql import functions as F

    from pipelines.sequence_dataset import parse_inputs
    from pipelines import inputs, splits

    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"Review  {i} Fine", "label": "pos"}) + "\n"
                                              for i in range(20)))
    config = load_section("preprocess_sequences", PreprocessSequencesConfig)
    parsed = parse_inputs(spark, inputs.list_files(to_url(str(tmp_path))).entries, fmt="jsonl", config=config)
    try:
        assert "split_key" not in parsed.columns and "raw" not in parsed.columns
        number = F.regexp_extract("source", r":(\d+)$", 1).cast("int") - 1  # line i + 1 holds review i
        normalised = F.concat(F.lit("review "), number.cast("string"), F.lit(" fine"))  # NFKC, lower, one space
        expected = splits.split_column(normalised, config.splits)
        got = parsed.select("split", expected.alias("expected"), "raw_text").collect()
        assert len(got) == 20 and all(r["split"] == r["expected"] and r["raw_text"] is None for r in got)
    finally:
        parsed.unpersist()
