"""Reading records as both sequence jobs do (``reading.read_records``): sources, CSV headers, Parquet fields."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import inputs, reading, writing


def _read(spark, url, fmt, fields=()):
    records = reading.read_records(spark, inputs.list_files(url).entries, fmt=fmt, fields=list(fields))
    rows = records.select("source", "raw", "header").collect()
    return ({r["source"]: bytes(r["raw"]) for r in rows},
            {bytes(r["header"]) for r in rows if r["header"] is not None})


@pytest.mark.spark
def test_lines_keep_their_file_and_line_and_csv_headers_are_not_records(spark, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "one"}\n\n{"text": "caf\xe9"}\n')
    (tmp_path / "sub" / "b.jsonl").write_bytes(b'{"text": "two"}\n')
    root = f"file://{tmp_path}"
    got, headers = _read(spark, root, "jsonl")
    assert got == {"a.jsonl:1": b'{"text": "one"}', "a.jsonl:2": b"", "a.jsonl:3": b'{"text": "caf\xe9"}',
                   "sub/b.jsonl:1": b'{"text": "two"}'} and headers == set()
    one_file, _ = _read(spark, f"{root}/a.jsonl", "jsonl")
    assert sorted(one_file) == ["a.jsonl:1", "a.jsonl:2", "a.jsonl:3"]  # relative to the file's folder

    csv_root = tmp_path / "csv"
    csv_root.mkdir()
    (csv_root / "r.csv").write_text('review,stars\n"Good, really",5\r\nbad,1\n')
    got, headers = _read(spark, f"file://{csv_root}", "csv")
    assert got == {"r.csv:2": b'"Good, really",5', "r.csv:3": b"bad,1"} and headers == {b"review,stars"}


@pytest.mark.spark
def test_parquet_rows_become_json_objects_of_the_fields_read(spark, tmp_path):
    pq.write_table(pa.table({"text": ["fine", None], "stars": [5, 1], "other": ["x", "y"]}), tmp_path / "p.parquet")
    url = f"file://{tmp_path}"
    got, headers = _read(spark, url, "parquet", fields=["text", "stars"])
    assert {k: json.loads(v) for k, v in got.items()} == {"p.parquet:1": {"text": "fine", "stars": 5},
                                                          "p.parquet:2": {"text": None, "stars": 1}}
    got, _ = _read(spark, url, "parquet", fields=["text"])  # predict reads no label column
    assert {k: json.loads(v) for k, v in got.items()} == {"p.parquet:1": {"text": "fine"},
                                                          "p.parquet:2": {"text": None}} and headers == set()
    with pytest.raises(reading.MissingColumnError) as exc:
        _read(spark, url, "parquet", fields=["review"])
    assert str(exc.value) == f"file:{tmp_path}/p.parquet: no column 'review' (columns: text, stars, other)"


@pytest.mark.parametrize("given", ["auto", "jsonl"])
def test_a_folder_of_two_formats_is_refused_naming_which_files_are_which(tmp_path, given):
    from pipelines.reading import detect_format

    (tmp_path / "a.jsonl").write_text('{"text": "x", "label": 1}\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.csv").write_text("text,label\nx,1\n")
    with pytest.raises(ValueError, match=r"holds files of 2 formats \(csv: 1 \(sub/b\.csv\); jsonl: 1 \(a\.jsonl\)\); "
                                         r"a folder holds one format"):
        detect_format(f"file://{tmp_path}", given)


def test_a_given_format_is_taken_for_files_without_a_known_extension(tmp_path):
    from pipelines.reading import detect_format

    (tmp_path / "part-0").write_text('{"text": "x", "label": 1}\n')
    assert detect_format(f"file://{tmp_path}", "jsonl") == "jsonl"
    with pytest.raises(ValueError, match="pass --format jsonl"):
        detect_format(f"file://{tmp_path}")
    (tmp_path / "a.csv").write_text("text,label\nx,1\n")
    assert detect_format(f"file://{tmp_path}") == "csv" and detect_format(f"file://{tmp_path / 'a.csv'}") == "csv"


@pytest.mark.spark
def test_petastorm_metadata_goes_through_fsspec_on_hdfs_not_petastorm_s_legacy_client(spark, monkeypatch):
    """hdfs:// here is fsspec's memory file system under that scheme: the metadata reaches HDFS as the commit and
    the loader do (fsspec, pyarrow.fs on a real cluster), where Petastorm's resolver took pyarrow's removed client."""
    import pickle

    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem
    from fsspec.registry import _registry

    from compat import petastorm as petastorm_compat
    from pipelines.schemas import sequence_unischema

    petastorm_compat.install()
    from petastorm.etl import dataset_metadata

    class FakeHdfs(MemoryFileSystem):
        protocol, store, pseudo_dirs = ("hdfs",), {}, [""]

        @classmethod
        def _strip_protocol(cls, path):
            return super()._strip_protocol("memory://" + path[len("hdfs://"):] if path.startswith("hdfs://") else path)

    monkeypatch.setitem(_registry, "hdfs", FakeHdfs)
    url = "hdfs://namenode:8020/datasets/texts/snapshots/000001-20261129T020000Z/train"
    fs, path = fsspec.core.url_to_fs(url)
    for i, rows in enumerate([4, 3]):
        with fs.open(f"{path}/part-{i:05d}.parquet", "wb") as fh:
            pq.write_table(pa.table({"sample_id": list(range(rows))}), fh, row_group_size=2)
    writing.write_petastorm_metadata(spark, url, sequence_unischema())
    with fs.open(f"{path}/_common_metadata", "rb") as fh:
        stored = pq.read_metadata(fh).schema.to_arrow_schema().metadata
    assert json.loads(stored[dataset_metadata.ROW_GROUPS_PER_FILE_KEY]) == {"part-00000.parquet": 2,
                                                                             "part-00001.parquet": 2}
    assert pickle.loads(stored[dataset_metadata.UNISCHEMA_KEY]).fields.keys() == sequence_unischema().fields.keys()
