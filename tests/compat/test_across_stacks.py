"""Datasets read the same on both stacks.

- The fixture (``fixtures/spark35``, written by the previous stack: Spark 3.5, pyarrow 14; see ``make_fixture.py``)
  reads on the stack under test exactly as the previous stack read it (``expected.json``): every value through
  Petastorm's two readers, their seeded orders, and an epoch of bigtrain's loader.
- A dataset written on this stack opens in the *other* stack's Petastorm with the same rows: the test runs
  ``tests.compat.stack_reads`` under the other stack's Python (``.venv-spark35`` from the current stack, ``.venv``
  from spark35; ``BIGTRAIN_OTHER_PYTHON`` names another). It is marked ``stacks``: ``make test`` (one stack) leaves
  it out, ``make test-legacy`` sets both stacks up and runs it from each side. Run by hand where the other venv
  is not set up, it fails naming the command that sets it up.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest

from tests.compat import stack_reads
from tests.conftest import REPO, subprocess_env

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "spark35"
CURRENT = int(pa.__version__.split(".")[0]) >= 15


@pytest.mark.parametrize("kind", ["images", "texts"])
def test_the_previous_stacks_dataset_reads_identically_here(kind, tmp_path):
    expected = json.loads((FIXTURE / "expected.json").read_text())
    assert expected["written_by"]["pyspark"].startswith("3.5") and expected["written_by"]["pyarrow"] == "14.0.2"
    copy = tmp_path / kind
    shutil.copytree(FIXTURE / kind, copy)  # read from elsewhere than where it was written: no path is baked in
    got = stack_reads.reads(str(copy))
    assert got.keys() == expected[kind].keys()
    for key in got:
        assert got[key] == expected[kind][key], key
    assert sum(len(got[s]["make_reader"]) for s in ("train", "validation", "test")) >= 15


def other_python() -> str:
    named = os.environ.get("BIGTRAIN_OTHER_PYTHON")
    if named:
        return named
    venv, stack = (".venv-spark35", "STACK=spark35") if CURRENT else (".venv", "STACK=current")
    python = REPO / venv / "bin" / "python"
    if not python.exists():
        pytest.fail(f"the other stack is not set up ({python} missing): run `make setup {stack}` (or "
                    "`make test-legacy`, which sets both stacks up and runs this test from each side)")
    return str(python)


@pytest.mark.spark
@pytest.mark.stacks
@pytest.mark.parametrize("kind", ["images", "texts"])
def test_this_stacks_dataset_opens_in_the_other_stacks_petastorm(kind, image_dataset, text_dataset):
    python = other_python()
    snapshot = image_dataset if kind == "images" else text_dataset
    here = stack_reads.reads(str(snapshot))
    done = subprocess.run([python, "-W", "ignore", "-m", "tests.compat.stack_reads", str(snapshot)], cwd=REPO,
                          env={**subprocess_env(), "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    there = json.loads(done.stdout)
    versions = subprocess.run([python, "-c", "import pyarrow; print(pyarrow.__version__)"], capture_output=True,
                              text=True, timeout=60).stdout.strip()
    assert (int(versions.split(".")[0]) >= 15) != CURRENT, f"{python} is on the same stack (pyarrow {versions})"
    for key in here:
        assert there[key] == here[key], key
