"""One spelling of a path (issue 13, item 1): folder and file names with spaces, ``%``, ``#``, ``+``, glob
characters and non-ASCII letters, through full and incremental runs of both preprocessing jobs and through the
scoring rows of batch inference: every path bigtrain compares or stores is the one the file system names (Spark's
file sources spelled it two ways, decoded and URI-encoded; the inputs are now listed by ``pipelines.inputs``)."""
from __future__ import annotations

import io
import json
import os

import pyarrow.parquet as pq
import pytest
from PIL import Image

from core.config import load_section
from core.paths import to_url
from dataset import layout
from pipelines.image_dataset import PreprocessImagesConfig, preprocess_images
from pipelines.sequence_dataset import PreprocessSequencesConfig, preprocess_sequences
from tests.conftest import snapshot_path

pytestmark = pytest.mark.spark

IMAGES = ["big cat/a b é.png", "big cat/a+b.png", "big cat/x.png", "d%20og/c%41 #1.png", "d%20og/y.png",
          "ü [x]/f{1}.png", "ü [x]/z.png"]
EMPTY = "big cat/empty b.png"


def png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(out, "PNG")
    return out.getvalue()


def write(path, data: bytes, *, mtime: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def split_values(snapshot, column: str) -> list:
    out = []
    for split in layout.SPLITS:
        if any((snapshot / split).glob("*.parquet")):
            out += pq.read_table(snapshot / split, columns=[column]).column(column).to_pylist()
    return out


def images(spark, src, out) -> dict:
    config = load_section("preprocess_images", PreprocessImagesConfig, flags={"image_size": 8, "ranks": 1, "max_reject_fraction": 0.5})
    return preprocess_images(spark, input_url=to_url(str(src)), output_url=to_url(str(out)), config=config)


def test_image_names_with_spaces_percent_hash_and_accents_in_full_and_incremental_runs(spark, tmp_path):
    src, ds = tmp_path / "in put [1]", tmp_path / "data set [2]"  # the incremental run reads "[2]" as a path
    for i, name in enumerate(IMAGES):
        write(src / name, png((30 * i, 10, 200)), mtime=1_700_000_000)
    write(src / EMPTY, b"")

    first = images(spark, src, ds)
    assert (first["records_read"], first["rows_written"], first["rejected"]) == (8, 7, 1)
    assert first["rejected_by_reason"] == {"empty file": 1}
    a = snapshot_path(first)
    assert sorted(split_values(a, "relpath")) == sorted(IMAGES)
    rejected = pq.read_table(a / "rejected").to_pylist()
    assert [(r["relpath"], r["class_name"]) for r in rejected] == [(EMPTY, "big cat")]
    inputs = pq.read_table(a / layout.INPUTS_FILE).to_pylist()
    assert sorted(r["relpath"] for r in inputs) == sorted(IMAGES + [EMPTY])
    assert {r["path"] for r in inputs} == {f"file:{src}/{name}" for name in IMAGES + [EMPTY]}  # decoded, one form
    assert {r["relpath"]: r["size"] > 0 for r in inputs} == {**{n: True for n in IMAGES}, EMPTY: False}

    assert images(spark, src, ds)["unchanged"]  # an unchanged rerun sees every file as unchanged

    write(src / "big cat/a b é.png", png((1, 250, 1)), mtime=1_700_000_100)  # changed
    write(src / "ü [x]/new é #2.png", png((250, 1, 1)))                       # added
    second = images(spark, src, ds)
    assert second["processed"] == (2, 0)
    assert (second["records_read"], second["rows_written"], second["rejected"]) == (9, 8, 1)
    b = snapshot_path(second)
    relpaths = split_values(b, "relpath")
    assert sorted(relpaths) == sorted(IMAGES + ["ü [x]/new é #2.png"])  # no stale row of the changed file
    meta = json.loads((b / "metadata.json").read_text())
    assert meta["snapshot"]["inputs"]["changed"] == 1 and meta["snapshot"]["inputs"]["added"] == 1
    assert meta["rejected_by_reason"] == {"empty file": 1}


def sequences(spark, src, out, **flags) -> dict:
    config = load_section("preprocess_sequences", PreprocessSequencesConfig, flags={"ranks": 1, **flags})
    return preprocess_sequences(spark, input_url=to_url(str(src)), output_url=to_url(str(out)), fmt="jsonl",
                                config=config)


def lines(n: int, start: int = 0) -> bytes:
    words = ["good", "bad", "plot", "fun"]
    return "".join(json.dumps({"text": f"review {start + i} {words[i % 4]}", "label": "pos" if i % 2 else "neg"})
                   + "\n" for i in range(n)).encode()


def test_text_sources_name_files_as_written_and_a_changed_file_leaves_no_duplicates(spark, tmp_path):
    src, ds = tmp_path / "te xts", tmp_path / "ds"
    write(src / "dir name/part 1.jsonl", lines(4), mtime=1_700_000_000)
    write(src / "dir name/ü%41+#[1].jsonl", lines(3, start=10), mtime=1_700_000_000)

    first = sequences(spark, src, ds)
    assert (first["records_read"], first["rows_written"], first["rejected"]) == (7, 7, 0)
    sources = split_values(snapshot_path(first), "source")
    assert sorted(sources) == sorted([f"dir name/part 1.jsonl:{i}" for i in (1, 2, 3, 4)]
                                     + [f"dir name/ü%41+#[1].jsonl:{i}" for i in (1, 2, 3)])
    assert sequences(spark, src, ds)["unchanged"]

    write(src / "dir name/part 1.jsonl", lines(6, start=20), mtime=1_700_000_100)  # changed: 6 other lines
    second = sequences(spark, src, ds)
    assert second["processed"] == (6, 0) and second["records_read"] == 9
    b = snapshot_path(second)
    sources, ids = split_values(b, "source"), split_values(b, "sample_id")
    assert len(ids) == len(set(ids)) == 9
    assert sorted(s for s in sources if "part 1" in s) == [f"dir name/part 1.jsonl:{i}" for i in range(1, 7)]


def test_scoring_rows_of_raw_inputs_carry_the_names_as_written(spark, tmp_path):
    from inference import predict
    from pipelines import images as image_transforms
    from pipelines import inputs, reading, text

    root = tmp_path / "new inputs"
    for i, name in enumerate(IMAGES):
        write(root / name, png((20 * i, 40, 90)))
    write(root / EMPTY, b"")
    url = to_url(str(root))
    params = image_transforms.DecodeParams(image_size=8, channels=3, codec="raw", max_pixels=10**7, min_side=4,
                                           max_aspect_ratio=10.0)
    files = reading.files_frame(spark, inputs.list_files(url).entries)
    rows = predict.raw_images(files, root_url=url, params=params).collect()
    assert sorted(r["source"] for r in rows) == sorted(IMAGES + [EMPTY])
    assert [r["source"] for r in rows if r["reason"]] == [EMPTY]

    texts = tmp_path / "new texts"
    write(texts / "dir name/part 1.jsonl", lines(2))
    entries = inputs.list_files(to_url(str(texts))).entries
    params = text.ParseParams(fmt="jsonl", text_field="text", label_field="label", tokens_field=None,
                              tokenizer="word", lowercase=True)
    scored = predict.raw_texts(spark, entries, fmt="jsonl", fields=["text"], max_record_bytes=None, params=params,
                               vocabulary=list(text.RESERVED) + ["good"], max_length=8, dtype="<u2").collect()
    assert sorted(r["source"] for r in scored) == ["dir name/part 1.jsonl:1", "dir name/part 1.jsonl:2"]
    assert all(r["reason"] is None for r in scored)
