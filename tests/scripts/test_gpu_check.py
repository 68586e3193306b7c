"""scripts/gpu_check.sh end to end on this CPU host: the real script, the real jobs/train.py under python,
torchrun and horovodrun (Gloo), on the small datasets the Spark jobs write in the fixtures, 1 epoch each."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPO, subprocess_env

pytestmark = [pytest.mark.spark, pytest.mark.horovod, pytest.mark.slow]

SCRIPT = REPO / "scripts" / "gpu_check.sh"
RUNS = [(kind, model, backend) for kind, model in (("images", "cnn"), ("texts", "lstm"))
        for backend in ("single", "torch", "horovod")]


def gpu_check(*args: str, tmp_path: Path, **env_vars: str) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env.update(GPU_CHECK_PYTHON=sys.executable, GPU_CHECK_CARRY=str(tmp_path / "no-carry"),
               CUDA_VISIBLE_DEVICES="", **env_vars)  # CUDA_VISIBLE_DEVICES: the CPU rows on any host
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def cpu_check(image_dataset, text_dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu-check")
    out = tmp / "out"
    done = gpu_check("--out", str(out), "--images-data", str(image_dataset), "--texts-data", str(text_dataset),
                     "--epochs", "1", "--nproc", "2", "--export", str(tmp / "export"), tmp_path=tmp)
    return done, out, {"images": image_dataset, "texts": text_dataset}


def test_cpu_rows_run_and_pass(cpu_check):
    done, out, datasets = cpu_check
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no GPU: the GPU rows are skipped" in done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["verdict"] == "passed" and results["problems"] == []
    assert results["environment"]["gpus"] == 0 and results["nproc"] == 2
    assert [(r["kind"], r["model"], r["backend"]) for r in results["rows"]] == RUNS
    table = done.stdout.splitlines()
    for row in results["rows"]:
        metrics = json.loads((out / f"{row['kind']}-{row['backend']}" / "metrics.json").read_text())
        test_split = json.loads((datasets[row["kind"]] / "metadata.json").read_text())["splits"]["test"]
        assert row["status"] == "ok" and row["reason"] is None
        assert row["test_accuracy"] == metrics["test_accuracy"] and 0.0 <= row["test_accuracy"] <= 1.0
        assert row["test_rows"] == metrics["test_rows"] == test_split["rows"] > 0
        assert row["world_size"] == metrics["world_size"] == (1 if row["backend"] == "single" else 2)
        assert metrics["backend"] == row["backend"] and row["gpus"] == 0 and row["epochs"] == 1
        assert row["samples_per_second"] > 0 and 0.0 <= row["data_stall"] <= 1.0
        line = [cells for cells in (line.split() for line in table)
                if cells[:2] == [f"{row['kind']}/{row['model']}", row["backend"]]]
        assert len(line) == 1 and f"{row['test_accuracy']:.4f}" in line[0] and line[0][-1] == "ok", table
    markdown = (out / "table.md").read_text()
    assert "**passed**" in markdown and markdown.count("| ok |") == len(RUNS)


def test_export_holds_the_results_and_every_runs_log_and_metrics(cpu_check):
    _, out, _ = cpu_check
    export = out.parent / "export"
    assert sorted(p.name for p in export.iterdir()) == ["results.json", "runs.tar.gz", "table.md"]
    assert json.loads((export / "results.json").read_text()) == json.loads((out / "results.json").read_text())
    with tarfile.open(export / "runs.tar.gz") as archive:
        names = set(archive.getnames())
        for kind, _, backend in RUNS:
            assert {f"{kind}-{backend}.log", f"{kind}-{backend}/metrics.json"} <= names
            metrics = json.load(archive.extractfile(f"{kind}-{backend}/metrics.json"))
            assert metrics == json.loads((out / f"{kind}-{backend}" / "metrics.json").read_text())


def test_accuracy_below_the_single_run_fails_the_verdict(cpu_check, tmp_path):
    """--judge-only re-judges the saved rows; a tolerance of -2 is an accuracy no run can reach."""
    _, out, _ = cpu_check
    (tmp_path / "out").mkdir()
    shutil.copy(out / "results.json", tmp_path / "out" / "results.json")
    done = gpu_check("--out", str(tmp_path / "out"), "--judge-only", "--tolerance", "-2", tmp_path=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["verdict"] == "FAILED" and len(results["problems"]) == 4  # every non-single row, not single
    for kind, model, backend in RUNS:
        failed = f"FAIL {kind}/{model} {backend} ("
        assert (failed in done.stdout) == (backend != "single"), done.stdout
    assert "below the single-process run's" in done.stdout


def test_a_failed_run_fails_the_check_and_names_the_row(tmp_path):
    not_a_dataset = tmp_path / "not-a-dataset"
    not_a_dataset.mkdir()
    done = gpu_check("--out", str(tmp_path / "out"), "--kinds", "texts", "--backends", "single", "--texts-data",
                     str(not_a_dataset), "--epochs", "1", tmp_path=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    problem = next(line for line in done.stdout.splitlines() if line.strip().startswith("FAIL "))
    assert problem.strip().startswith("FAIL texts/lstm single (python, 1 process): failed: exit ")
    assert str(not_a_dataset) in problem, problem
    row, = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert row["status"] == "failed" and row.get("test_accuracy") is None


def test_a_missing_dataset_is_a_usage_error_naming_it(tmp_path):
    done = gpu_check("--out", str(tmp_path / "out"), "--images-data", str(tmp_path / "absent"), tmp_path=tmp_path)
    assert done.returncode == 2
    assert f"the images dataset {tmp_path / 'absent'} is not a folder" in done.stderr
    assert "make gpu-check-data" in done.stderr


def test_a_failed_horovod_build_fails_the_horovod_rows_with_its_reason(tmp_path):
    """No usable Horovod (an importable stand-in that refuses to load hides the venv's), and a build that cannot
    start: the Horovod row fails naming build_horovod.sh's error line, without a training run."""
    hidden = tmp_path / "hide-horovod" / "horovod"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ImportError("hidden by the test")\n')
    missing_sdist = tmp_path / "horovod-0.28.1.tar.gz"
    done = gpu_check("--out", str(tmp_path / "out"), "--kinds", "texts", "--backends", "horovod",
                     "--horovod-wheels", str(tmp_path / "wheels"), "--horovod-sdist", str(missing_sdist),
                     "--texts-data", str(tmp_path), tmp_path=tmp_path, PYTHONPATH=str(hidden.parent),
                     BIGTRAIN_SITE=str(tmp_path / "site"))
    assert done.returncode == 1, done.stdout + done.stderr
    problem = next(line.strip() for line in done.stdout.splitlines() if line.strip().startswith("FAIL "))
    assert problem.startswith("FAIL texts/lstm horovod (horovodrun, 2 processes): failed: not run: Horovod build "
                              f"failed: error: HOROVOD_SDIST={missing_sdist} is not a file"), problem
    row, = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert row["status"] == "failed" and "wall_s" not in row  # nothing was trained
    assert not (tmp_path / "out" / "texts-horovod").exists()
