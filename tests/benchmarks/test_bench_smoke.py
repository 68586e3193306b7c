"""The benchmark harness keeps working: a smoke-size run produces every figure. No timing is asserted."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.spark, pytest.mark.horovod]


def test_smoke_run_reports_every_ratio(tmp_path):
    out = tmp_path / "results.json"
    # One timed run per figure (--repeats 1): this checks the harness, not the figures.
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--size", "smoke", "--repeats", "1", "--output", str(out),
                           "--work", str(tmp_path / "work")], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())["results"]
    groups = {r["group"] for r in results}
    assert groups == {"loader/images", "loader/texts", "loader/resume", "codecs", "preprocess/images", "preprocess/texts",
                      "stall/images", "stall/texts", "resilience/images", "distributed", "growth", "feeding/images",
                      "feeding/texts", "feeding/ledger", "feeding/png", "feeding/raw"}
    for r in results:
        assert r["value"] is None or r["value"] > 0, r
        assert r["detail"] or r["group"] == "codecs"
    assert "loader / decode-only limit" in done.stdout and "median of 1" in done.stdout
    assert json.loads(out.read_text())["meta"]["repeats"] == 1


def test_unknown_group_and_zero_repeats_are_named():
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--only", "loader,speed"], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "'speed'" in done.stderr
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--repeats", "0"], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--repeats 0" in done.stderr
