"""The pipeline runner: stages skipped when their inputs are unchanged, a lock against concurrent runs, a history,
and exit codes a scheduler can act on; the example nightly pipeline on the sample data."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from pipelines import runner, runs
from tests.conftest import REPO, subprocess_env


def write_pipeline(tmp_path, stages, **extra):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "state": str(tmp_path / "state"), "stages": stages, **extra}))
    return str(path)


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def statuses(pipeline_file) -> list[list[str]]:
    return [[s["status"] for s in r["stages"]] for r in runs.read_history(runner.load(pipeline_file))]


def test_a_stage_with_unchanged_inputs_is_skipped(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a")
    count = tmp_path / "count"
    stage = {"name": "step", "command": py(f"open({str(count)!r}, 'a').write('x')"), "inputs": [str(data)]}
    file = write_pipeline(tmp_path, [stage])
    pipeline = runner.load(file)
    assert runs.run(pipeline) == 0 and runs.run(pipeline) == 0
    (data / "b.txt").write_text("b")  # a new input file
    assert runs.run(pipeline) == 0 and runs.run(pipeline, force=True) == 0
    assert statuses(file) == [["ran"], ["skipped"], ["ran"], ["ran"]] and count.read_text() == "xxx"
    record = runs.read_history(pipeline)[-1]
    assert record["status"] == "ok" and record["exit_code"] == 0 and record["started"] <= record["ended"]


def test_a_failed_stage_stops_the_run_with_its_exit_code(tmp_path):
    file = write_pipeline(tmp_path, [{"name": "ok", "command": py("pass")},
                                     {"name": "bad", "command": py("print('too many rejects'); raise SystemExit(3)")},
                                     {"name": "after", "command": py("pass")}])
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "pipeline", "run", file], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert "stage bad failed (exit 3)" in done.stderr and "too many rejects" in done.stderr
    assert statuses(file) == [["ran", "failed", "not run"]]
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "pipeline", "history", file], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "failed  " in done.stdout and "ok:ran bad:failed after:not run" in done.stdout


def test_a_second_concurrent_run_exits_75_and_is_recorded(tmp_path):
    go = tmp_path / "go"
    wait = f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.05)"
    file = write_pipeline(tmp_path, [{"name": "slow", "command": py(wait)}])
    cmd = [sys.executable, "-m", "jobs.cli", "pipeline", "run", file]
    first = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 60
        while not list((tmp_path / "state" / "logs").glob("*/slow.log")) and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=60)
        assert second.returncode == 75
        assert f"pipeline t is already running (lock {tmp_path / 'state' / 'lock'} held by" in second.stderr
    finally:
        go.write_text("")
        first.wait(timeout=60)
    assert first.returncode == 0, first.stderr
    history = runs.read_history(runner.load(file))
    assert [(r["status"], r["exit_code"]) for r in history] == [("locked", 75), ("ok", 0)]


@pytest.mark.parametrize("spec, message", [
    ({"stages": [{"run": "no-such-command"}]}, "run 'no-such-command' is not a bigtrain subcommand"),
    ({"stages": [{"run": "train", "argz": {}}]}, "stages[0]: unknown key 'argz'"),
    ({"stages": [{"run": "train", "args": {"data": "${nope}"}}]}, r"${nope} is not a var"),
    ({"stages": []}, "no stages"),
])
def test_a_wrong_pipeline_file_is_a_usage_error_naming_the_key(tmp_path, spec, message):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "pipeline", "run", str(path)], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr and str(path) in done.stderr


def test_the_airflow_dag_imports_without_airflow():
    import importlib

    module = importlib.import_module("dags.bigtrain_nightly")
    assert "bigtrain pipeline run conf/pipelines/nightly_images.yaml" in module.command("run")
    try:
        import airflow  # noqa: F401
    except ImportError:
        assert module.dag is None
    else:
        assert module.dag.dag_id == "bigtrain_nightly_images"


@pytest.mark.spark
@pytest.mark.slow
def test_the_nightly_example_runs_on_the_sample_data_and_skips_when_nothing_changed(tmp_path):
    from pipelines.samples import generate_images

    generate_images(tmp_path / "raw", per_class=4, seed=11, bad_files=0)
    cmd = [sys.executable, "-m", "jobs.cli", "pipeline", "run", str(REPO / "conf" / "pipelines" / "nightly_images.yaml"),
           "--var", f"root={tmp_path}", "--var", f"raw={tmp_path / 'raw'}", "--var", f"dataset={tmp_path / 'ds'}",
           "--var", f"model={tmp_path / 'model'}", "--var", "epochs=1"]
    done = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    again = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    history = [json.loads(line) for line in (tmp_path / "pipeline" / "history.jsonl").read_text().splitlines()]
    assert [[s["status"] for s in r["stages"]] for r in history] == [["ran"] * 4, ["skipped"] * 4]
    preprocess = history[0]["stages"][0]["counts"]
    assert preprocess["records_read"] == 40 and sum(preprocess["rows"].values()) == 40
    assert history[0]["stages"][2]["counts"]["test_rows"] == preprocess["rows"]["test"]
