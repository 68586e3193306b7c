"""The typed manifest: metadata.json as written before the types existed reads unchanged and writes back byte for
byte the same JSON; damaged or foreign manifests are refused naming the file and the key."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import DatasetError
from core.paths import to_url
from dataset import manifest
from dataset.info import load_dataset_info
from dataset.manifest import FileEntry, Manifest

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(kind: str) -> dict:
    """A metadata.json written by bigtrain before the manifest was typed (commit 950576c, `bigtrain
    preprocess-images --image-size 8` on 3 sample images per class + 2 bad files, and `bigtrain
    preprocess-sequences` on 60 sample reviews + 3 bad lines)."""
    return json.loads((FIXTURES / f"{kind}_metadata_v2.json").read_text())


def example(kind: str = "image") -> Manifest:
    return Manifest.from_dict(fixture(kind), where="fixture")


@pytest.mark.parametrize("kind", ["image", "sequence"])
def test_an_older_metadata_json_reads_typed_and_writes_back_the_same(kind, tmp_path):
    old = fixture(kind)
    contents = Manifest.from_dict(old, where="fixture")
    assert contents.kind == kind and contents.snapshot.id == old["snapshot"]["id"]
    assert contents.rows == sum(s["rows"] for s in old["splits"].values())
    assert {k: v.rows for k, v in contents.splits.items()} == {k: v["rows"] for k, v in old["splits"].items()}
    assert (contents.image is None) == (kind != "image") and (contents.sequence is None) == (kind != "sequence")
    parquet = [e for rel, e in contents.files.items() if rel.endswith(".parquet") and rel.startswith("train/")]
    assert parquet and all(isinstance(e, FileEntry) and e.rows for e in parquet)
    manifest.write(to_url(str(tmp_path)), contents)
    assert json.loads((tmp_path / "metadata.json").read_text()) == old
    assert manifest.read(to_url(str(tmp_path))) == contents


def test_the_spec_is_what_a_model_needs():
    spec = example("sequence").spec
    assert spec.kind == "sequence" and spec.classes == ["negative", "positive"]
    assert spec.sequence.vocab_size == 86 and spec.sequence.token_dtype == "<u2" and spec.image is None
    assert type(spec).from_dict(spec.to_dict(), where="x") == spec


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("kind"), "fixture: key kind is missing"),
    (lambda d: d.pop("files"), "fixture: key files is missing"),
    (lambda d: d["snapshot"].pop("id"), "fixture: key snapshot.id is missing"),
    (lambda d: d["splits"]["train"].update(rows="many"), r"key splits.train.rows: expected an integer, got 'many'"),
    (lambda d: d.update(kind="audio"), "key kind: 'audio' is not one of 'image', 'sequence'"),
    (lambda d: d.update(format_version=1), "format_version 1, this bigtrain reads 2"),
])
def test_a_damaged_manifest_is_refused_naming_the_key(change, message):
    data = fixture("image")
    change(data)
    with pytest.raises(DatasetError, match=message):
        Manifest.from_dict(data, where="fixture")


def test_reading_names_a_missing_or_broken_file(tmp_path):
    with pytest.raises(DatasetError, match=r"metadata.json not found: .* is not a bigtrain dataset"):
        manifest.read(to_url(str(tmp_path)))
    (tmp_path / "metadata.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"metadata.json is not valid JSON"):
        load_dataset_info(str(tmp_path))


def test_secrets_in_the_jobs_config_are_never_stored_nor_read_back(tmp_path):
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
    data = fixture("image")
    data["config"]["spark_conf"] = {"spark.hadoop.fs.s3a.secret.key": secret, "spark.executor.memory": "2g"}
    read_back = Manifest.from_dict(data, where="fixture")  # an older file that holds one: redacted when read
    assert read_back.config["spark_conf"] == {"spark.hadoop.fs.s3a.secret.key": "<redacted>",
                                              "spark.executor.memory": "2g"}
    draft = example().replace(config={**example().config, "spark_conf": {"fs.s3a.session.token": secret}})
    manifest.write(to_url(str(tmp_path)), draft)
    text = (tmp_path / "metadata.json").read_text()
    assert secret not in text and '"fs.s3a.session.token": "<redacted>"' in text


def test_a_manifest_read_back_lists_splits_in_their_order_and_rejects_by_count(tmp_path):
    contents = example()
    manifest.write(to_url(str(tmp_path)), contents)  # JSON keys sorted on disk: test, train, validation
    read_back = manifest.read(to_url(str(tmp_path)))
    assert list(read_back.splits) == ["train", "validation", "test"]
    assert list(read_back.schema_fingerprints) == [s for s in ("train", "validation", "test")
                                                   if s in read_back.schema_fingerprints]
    counts = list(read_back.rejected_by_reason.items())
    assert counts == sorted(counts, key=lambda kv: (-kv[1], kv[0]))
