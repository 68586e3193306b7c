"""Training nodes without Spark: training and evaluation read a dataset that the Spark job wrote without pyspark
importable, and never load the Unischema pickle stored in it (a tampered one would run code)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, subprocess_env

pytestmark = [pytest.mark.spark, pytest.mark.slow]
TRAIN = str(REPO / "jobs" / "train.py")
UNISCHEMA_KEY = b"dataset-toolkit.unischema.v1"  # where petastorm's materialize_dataset stores the pickle


def pyspark_blocker(folder: Path) -> tuple[Path, Path]:
    """A ``pyspark`` package that records any attempt to import it and then fails, first on PYTHONPATH."""
    attempts = folder / "pyspark-imports.log"
    package = folder / "blocked" / "pyspark"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import traceback\n"
        f"with open({str(attempts)!r}, 'a') as fh:\n"
        "    fh.write(''.join(traceback.format_stack()) + '\\n')\n"
        "raise ImportError('pyspark is not installed on this training node (blocked by the test)')\n")
    return package.parent, attempts


def train_without_pyspark(dataset: Path, out: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    blocked, attempts = pyspark_blocker(tmp_path / out.name)
    env = {**subprocess_env(), "PYTHONPATH": f"{blocked}{os.pathsep}{REPO}"}
    done = subprocess.run([sys.executable, TRAIN, "--backend", "single", "--data", str(dataset), "--output", str(out),
                           "--epochs", "1", "--batch-size", "16", "--no-progress"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    return done, attempts


@pytest.mark.parametrize("kind", ["image", "sequence"])
def test_train_and_evaluate_where_pyspark_cannot_be_imported(image_dataset, text_dataset, tmp_path, kind):
    dataset = image_dataset if kind == "image" else text_dataset
    done, attempts = train_without_pyspark(dataset, tmp_path / "model", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not attempts.exists(), f"something imported pyspark:\n{attempts.read_text()[-3000:]}"
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["test_rows"] == json.loads((dataset / "metadata.json").read_text())["splits"]["test"]["rows"] > 0
    assert metrics["test_accuracy"] is not None and metrics["history"][0]["train_rows"] > 0


def tamper(snapshot: Path, marker: Path) -> None:
    """Replace every split's stored Unischema by a pickle that creates ``marker`` when loaded, and rewrite the
    manifest to match (whoever can write the dataset's folder can do both)."""
    import pyarrow.parquet as pq

    class Payload:  # Petastorm's "restricted" unpickler allows every global of builtins, exec among them
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    metadata = json.loads((snapshot / "metadata.json").read_text())
    for split in ("train", "validation", "test"):
        path = snapshot / split / "_common_metadata"
        schema = pq.read_schema(path)
        assert UNISCHEMA_KEY in schema.metadata
        pq.write_metadata(schema.with_metadata({**schema.metadata, UNISCHEMA_KEY: pickle.dumps(Payload())}), path)
        entry = metadata["files"][f"{split}/_common_metadata"]
        data = path.read_bytes()
        entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (snapshot / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))


def test_a_tampered_schema_pickle_is_never_loaded(image_dataset, tmp_path):
    copy = tmp_path / "dataset"
    shutil.copytree(image_dataset, copy)
    marker = tmp_path / "pickle-ran"
    tamper(copy, marker)
    # The tampering is real: plain Petastorm, asked for the stored schema, runs the payload.
    probe = subprocess.run([sys.executable, "-c", "import sys; import compat.petastorm as c; c.install(); "
                            "from petastorm.etl.dataset_metadata import get_schema_from_dataset_url as g; "
                            "g(sys.argv[1])", f"file://{copy / 'train'}"],
                           env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert marker.exists(), f"the tampered pickle did not run under plain Petastorm: {probe.stderr[-2000:]}"
    marker.unlink()

    done, _ = train_without_pyspark(copy, tmp_path / "model", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not marker.exists(), "training loaded the pickle stored in the dataset"
    assert json.loads((tmp_path / "model" / "metrics.json").read_text())["test_accuracy"] is not None


def read_columns(split_url: str, arrow_only: bool) -> dict:
    from compat import petastorm as petastorm_compat

    petastorm_compat.install()
    from petastorm import make_batch_reader

    schema = petastorm_compat.arrow_schema_only() if arrow_only else contextlib.nullcontext()
    with schema:
        reader = make_batch_reader(split_url, reader_pool_type="dummy", num_epochs=1, shuffle_row_groups=False)
    try:
        batches = list(reader)
    finally:
        reader.stop()
        reader.join()
    return {name: [getattr(b, name) for b in batches] for name in batches[0]._fields}


@pytest.mark.parametrize("kind", ["image", "sequence"])
def test_the_arrow_schema_reads_what_the_stored_unischema_reads(image_dataset, text_dataset, kind):
    """Same columns, values and numpy dtypes as Petastorm's own reading with the pickled Unischema."""
    dataset = image_dataset if kind == "image" else text_dataset
    url = f"file://{dataset / 'train'}"
    stored, arrow = read_columns(url, arrow_only=False), read_columns(url, arrow_only=True)
    assert sorted(arrow) == sorted(stored) and "label" in arrow and "sample_id" in arrow
    for name in stored:
        assert [a.dtype for a in arrow[name]] == [s.dtype for s in stored[name]], name
        assert all(list(a) == list(s) for a, s in zip(arrow[name], stored[name])), name
