"""Reading records as both sequence jobs do (``storage.read_records``): sources, CSV headers, Parquet fields."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import storage


def test_relative_to_accepts_every_spelling_of_a_file_url():
    relative = storage.relative_to("file:///data/texts/")
    assert relative("file:/data/texts/a.jsonl") == "a.jsonl"
    assert relative("file:///data/texts/sub/b.csv") == "sub/b.csv"
    assert relative("file:/elsewhere/c.jsonl") == "file:/elsewhere/c.jsonl"  # outside the root: the URL itself
    assert storage.relative_to("s3a://bucket/in")("s3a://bucket/in/x.parquet") == "x.parquet"


def test_spark_encoded_urls_are_decoded_once_and_glob_characters_escaped_for_readers():
    from core.paths import from_encoded_url

    assert from_encoded_url("file:///d/big%20cat/a%20b%20é.png") == "file:/d/big cat/a b é.png"
    assert from_encoded_url("file:/d/%C3%BC%231/a+b%2541.png") == "file:/d/ü#1/a+b%41.png"  # '+' is no space
    assert storage.spark_paths("file:/d/ü [1]/{a}*?.png") == "file:/d/ü \\[1\\]/\\{a\\}\\*\\?.png"
    assert storage.spark_paths(["s3a://b/x y#%.png"]) == ["s3a://b/x y#%.png"]


def test_input_root_is_the_folder_or_the_files_folder(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    assert storage.input_root(f"file://{tmp_path}") == f"file://{tmp_path}"
    assert storage.input_root(f"file://{tmp_path}/a.jsonl") == f"file://{tmp_path}"


def _read(spark, url, fmt, fields=(), paths=None):
    records, headers = storage.read_records(spark, url, fmt=fmt, fields=list(fields), paths=paths)
    return {r["source"]: bytes(r["raw"]) for r in records.select("source", "raw").collect()}, headers


@pytest.mark.spark
def test_lines_keep_their_file_and_line_and_csv_headers_are_not_records(spark, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "one"}\n\n{"text": "caf\xe9"}\n')
    (tmp_path / "sub" / "b.jsonl").write_bytes(b'{"text": "two"}\n')
    root = f"file://{tmp_path}"
    got, headers = _read(spark, root, "jsonl")
    assert got == {"a.jsonl:1": b'{"text": "one"}', "a.jsonl:2": b"", "a.jsonl:3": b'{"text": "caf\xe9"}',
                   "sub/b.jsonl:1": b'{"text": "two"}'} and headers == {}
    only_b, _ = _read(spark, root, "jsonl", paths=[f"{root}/sub/b.jsonl"])
    assert only_b == {"sub/b.jsonl:1": b'{"text": "two"}'}  # sources stay relative to the input root
    one_file, _ = _read(spark, f"{root}/a.jsonl", "jsonl")
    assert sorted(one_file) == ["a.jsonl:1", "a.jsonl:2", "a.jsonl:3"]

    csv_root = tmp_path / "csv"
    csv_root.mkdir()
    (csv_root / "r.csv").write_text('review,stars\n"Good, really",5\nbad,1\n')
    got, headers = _read(spark, f"file://{csv_root}", "csv")
    assert got == {"r.csv:2": b'"Good, really",5', "r.csv:3": b"bad,1"}
    assert list(headers.values()) == [["review", "stars"]] and next(iter(headers)).endswith("/csv/r.csv")


@pytest.mark.spark
def test_parquet_rows_become_json_objects_of_the_fields_read(spark, tmp_path):
    pq.write_table(pa.table({"text": ["fine", None], "stars": [5, 1], "other": ["x", "y"]}), tmp_path / "p.parquet")
    url = f"file://{tmp_path}"
    got, headers = _read(spark, url, "parquet", fields=["text", "stars"])
    assert {k: json.loads(v) for k, v in got.items()} == {"p.parquet:1": {"text": "fine", "stars": 5},
                                                          "p.parquet:2": {"text": None, "stars": 1}}
    got, _ = _read(spark, url, "parquet", fields=["text"])  # predict reads no label column
    assert {k: json.loads(v) for k, v in got.items()} == {"p.parquet:1": {"text": "fine"},
                                                          "p.parquet:2": {"text": None}} and headers == {}
    with pytest.raises(storage.MissingColumnError) as exc:
        _read(spark, url, "parquet", fields=["review"])
    assert str(exc.value) == f"{url}: no column 'review' (columns: text, stars, other)"


@pytest.mark.parametrize("given", ["auto", "jsonl"])
def test_a_folder_of_two_formats_is_refused_naming_which_files_are_which(tmp_path, given):
    from pipelines.storage import detect_format

    (tmp_path / "a.jsonl").write_text('{"text": "x", "label": 1}\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.csv").write_text("text,label\nx,1\n")
    with pytest.raises(ValueError, match=r"holds files of 2 formats \(csv: 1 \(sub/b\.csv\); jsonl: 1 \(a\.jsonl\)\); "
                                         r"a folder holds one format"):
        detect_format(f"file://{tmp_path}", given)


def test_a_given_format_is_taken_for_files_without_a_known_extension(tmp_path):
    from pipelines.storage import detect_format

    (tmp_path / "part-0").write_text('{"text": "x", "label": 1}\n')
    assert detect_format(f"file://{tmp_path}", "jsonl") == "jsonl"
    with pytest.raises(ValueError, match="pass --format jsonl"):
        detect_format(f"file://{tmp_path}")
    (tmp_path / "a.csv").write_text("text,label\nx,1\n")
    assert detect_format(f"file://{tmp_path}") == "csv" and detect_format(f"file://{tmp_path / 'a.csv'}") == "csv"
