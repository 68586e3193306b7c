"""The pipeline runner: stages skipped when their inputs are unchanged, a lock against concurrent runs, a history,
and exit codes a scheduler can act on; the example nightly pipeline on the sample data."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from jobs.cli import SUBCOMMANDS
from orchestration import runner, runs
from tests.conftest import REPO, VENV_BIN, subprocess_env


def write_pipeline(tmp_path, stages, **extra):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "state": str(tmp_path / "state"), "stages": stages, **extra}))
    return str(path)


def load(pipeline_file, overrides=None):
    return runner.load(pipeline_file, overrides, subcommands=SUBCOMMANDS)


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def statuses(pipeline_file) -> list[list[str]]:
    return [[s["status"] for s in r["stages"]] for r in runs.read_history(load(pipeline_file))]


def test_a_stage_with_unchanged_inputs_is_skipped(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a")
    count = tmp_path / "count"
    stage = {"name": "step", "command": py(f"open({str(count)!r}, 'a').write('x')"), "inputs": [str(data)]}
    file = write_pipeline(tmp_path, [stage])
    pipeline = load(file)
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


def test_ctrl_c_stops_the_stage_and_is_recorded_as_interrupted_with_130(tmp_path):
    """A terminal's Ctrl-C reaches the whole process group: the runner and its stage."""
    import signal

    pid_file = tmp_path / "stage.pid"
    stage = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)"
    file = write_pipeline(tmp_path, [{"name": "slow", "command": py(stage)}, {"name": "after", "command": py("pass")}])
    # SIGINT at its default: a test run started in the background of a non-interactive shell inherits it ignored,
    # and Python then leaves it ignored (as a pipeline run from such a shell does: only a terminal sends Ctrl-C)
    runner_process = subprocess.Popen([sys.executable, "-m", "jobs.cli", "pipeline", "run", file], cwd=REPO,
                                      env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      start_new_session=True,
                                      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(runner_process.pid, signal.SIGINT)
    _, err = runner_process.communicate(timeout=60)
    assert runner_process.returncode == 130, err
    (last,) = runs.read_history(load(file))
    assert (last["status"], last["exit_code"]) == ("interrupted", 130) and "Ctrl-C" in last["error"]
    assert [s["status"] for s in last["stages"]] == ["stopped", "not run"]


def test_a_drift_stage_keeps_its_exit_7(tmp_path):
    file = write_pipeline(tmp_path, [{"name": "verify", "command": py("raise SystemExit(7)")},
                                     {"name": "train", "command": py("pass")}])
    assert runs.run(load(file)) == 7
    assert statuses(file) == [["failed", "not run"]]


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
        # One calm line (a scheduler does nothing on 75), not an ERROR log plus an "error:" echo.
        assert re.fullmatch(rf"pipeline t: already running \(pid {first.pid} on {re.escape(socket.gethostname())} "
                            r"since [0-9T:+-]+\), nothing done\n", second.stdout) and second.stderr == ""
    finally:
        go.write_text("")
        first.wait(timeout=60)
    assert first.returncode == 0, first.stderr
    history = runs.read_history(load(file))  # oldest start first: the lock holder, then the run it refused
    assert [(r["status"], r["exit_code"]) for r in history] == [("ok", 0), ("locked", 75)]
    assert history[1]["holder"]["pid"] == first.pid


def test_history_is_in_start_order_not_completion_order(tmp_path):
    file = write_pipeline(tmp_path, [{"name": "a", "command": py("pass")}])
    pipeline = load(file)
    late = {"run": "late", "started": "2026-11-29T04:59:04Z", "status": "locked", "exit_code": 75, "stages": []}
    early = {"run": "early", "started": "2026-11-29T04:59:02Z", "status": "ok", "exit_code": 0, "stages": []}
    same_second = [{"run": f"s{i}", "started": "2026-11-29T05:00:00Z", "started_unix": t, "status": "ok",
                    "exit_code": 0, "stages": []} for i, t in ((2, 1795928400.9), (1, 1795928400.1))]
    for record in (late, early, *same_second):  # appended as they completed
        runs.append_history(pipeline, record)
    assert [r["run"] for r in runs.read_history(pipeline)] == ["early", "late", "s1", "s2"]


def test_sigterm_stops_the_stage_records_the_run_and_frees_the_lock(tmp_path):
    """cron's or a scheduler's stop: the stage ends with the runner (no orphan holding on), the history says what
    happened, exit 143, and the next run starts."""
    pid_file = tmp_path / "stage.pid"
    stage = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)"
    file = write_pipeline(tmp_path, [{"name": "slow", "command": py(stage)}])
    runner_process = subprocess.Popen([sys.executable, "-m", "jobs.cli", "pipeline", "run", file], cwd=REPO,
                                      env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    stage_pid = int(pid_file.read_text())
    runner_process.terminate()
    runner_process.wait(timeout=60)
    assert runner_process.returncode == 143
    with pytest.raises(ProcessLookupError):
        os.kill(stage_pid, 0)
    (last,) = runs.read_history(load(file))
    assert (last["status"], last["exit_code"]) == ("terminated", 143) and "SIGTERM" in last["error"]
    assert [s["status"] for s in last["stages"]] == ["stopped"]
    pid_file.unlink()
    file = write_pipeline(tmp_path, [{"name": "slow", "command": py("pass")}])
    assert runs.run(load(file)) == 0  # the lock was released


def test_an_edited_config_file_reruns_its_stage_and_a_stages_75_is_kept(tmp_path):
    conf = tmp_path / "mine.yaml"
    conf.write_text("train: {epochs: 1}\n")
    file = write_pipeline(tmp_path, [{"name": "a", "command": [*py("pass"), "--config", str(conf)]}])
    assert runs.run(load(file)) == 0 and runs.run(load(file)) == 0
    conf.write_text("train: {epochs: 2}\n")  # same name, new content
    assert runs.run(load(file)) == 0
    assert statuses(file) == [["ran"], ["skipped"], ["ran"]]
    locked = write_pipeline(tmp_path, [{"name": "b", "command": py("raise SystemExit(75)")}])
    assert runs.run(load(locked)) == 75


def test_a_link_planted_at_the_history_is_refused_not_followed(tmp_path):
    from core.errors import UnsafeFileError

    pipeline = load(write_pipeline(tmp_path, [{"name": "a", "command": py("pass")}]))
    pipeline.state.mkdir(parents=True, exist_ok=True)
    victim = tmp_path / "bashrc"
    victim.write_text("# mine\n")
    (pipeline.state / "history.jsonl").symlink_to(victim)
    with pytest.raises(UnsafeFileError, match=r"history\.jsonl is a symbolic link"):
        runs.append_history(pipeline, {"run": "r", "started": "2026-12-06T00:00:00Z", "status": "ok",
                                       "exit_code": 0, "stages": []})
    assert victim.read_text() == "# mine\n"


def clean_env() -> dict[str, str]:
    """The cron situation: .venv/bin/bigtrain called by path, the virtual environment's bin not on PATH."""
    env = subprocess_env()
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p and Path(p) != VENV_BIN)
    return env


def test_a_launcher_in_the_venv_bin_is_found_without_the_venv_on_path(tmp_path):
    assert shutil.which("bigtrain", path=clean_env()["PATH"]) is None
    file = write_pipeline(tmp_path, [{"name": "help", "launcher": ["bigtrain"], "command": ["datasets", "--help"]}])
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "pipeline", "run", file], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert statuses(file) == [["ran"]]
    assert "usage: bigtrain datasets" in (tmp_path / "state" / "logs").glob("*/help.log").__next__().read_text()


def test_a_stage_whose_program_cannot_start_fails_with_one_line_and_is_recorded(tmp_path):
    file = write_pipeline(tmp_path, [{"name": "train", "launcher": ["no-such-horovodrun", "-np", "2"],
                                      "command": ["python", "-c", "pass"]},
                                     {"name": "after", "command": py("pass")}])
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "pipeline", "run", file], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    reason = f"cannot start no-such-horovodrun: not found on PATH or in {VENV_BIN}"
    assert f"stage train failed: {reason}" in done.stderr
    [record] = runs.read_history(load(file))
    assert (record["status"], record["exit_code"]) == ("failed", 1)
    assert [(s["name"], s["status"], s.get("error")) for s in record["stages"]] == [
        ("train", "failed", reason), ("after", "not run", None)]


def test_a_program_that_is_not_executable_fails_the_stage(tmp_path):
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\n")
    pipeline = load(write_pipeline(tmp_path, [{"name": "s", "command": [str(script)]}]))
    assert runs.run(pipeline) == 1
    assert runs.read_history(pipeline)[0]["stages"][0]["error"] == f"cannot start {script}: Permission denied"


def test_the_run_is_recorded_even_when_the_runner_itself_raises(tmp_path, monkeypatch):
    pipeline = load(write_pipeline(tmp_path, [{"name": "s", "command": py("pass")}]))

    def broken(stage):
        raise KeyError("fingerprint")

    monkeypatch.setattr(runs, "stage_fingerprint", broken)
    with pytest.raises(KeyError):
        runs.run(pipeline)
    [record] = runs.read_history(pipeline)
    assert (record["status"], record["exit_code"], record["error"]) == ("failed", 1, "KeyError: 'fingerprint'")


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


def readme_cron_line() -> str:
    text = (REPO / "docs" / "operations.md").read_text()
    lines = text.split("```cron\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0].split(" ", 5)[5]  # the command after the five time fields


@pytest.mark.spark
@pytest.mark.slow
def test_the_nightly_example_runs_on_the_sample_data_and_skips_when_nothing_changed(tmp_path):
    """The cron line of docs/operations.md, run by sh as cron would, with its own root (a folder that does not exist
    yet) and raw folder: every output lands below the root, the log included."""
    from pipelines.samples import generate_images

    generate_images(tmp_path / "incoming", per_class=4, seed=11, bad_files=0)
    root = tmp_path / "bigtrain"
    line = (readme_cron_line().replace("cd /opt/bigtrain", f"cd {REPO}").replace("/data/bigtrain", str(root))
            .replace("/data/incoming/images", str(tmp_path / "incoming")).replace(" --quiet", " --var epochs=1 --quiet"))
    assert "--var root=\"$ROOT\"" in line and str(root) in line
    for _ in range(2):
        done = subprocess.run(["sh", "-c", line], env=subprocess_env(), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (root / "cron.log").read_text()[-4000:] if (root / "cron.log").exists() else done
    assert sorted(p.name for p in root.iterdir()) == ["cron.log", "images_ds", "model", "pipeline", "predictions"]
    history = [json.loads(line) for line in (root / "pipeline" / "history.jsonl").read_text().splitlines()]
    assert [[s["status"] for s in r["stages"]] for r in history] == [["ran"] * 4, ["skipped"] * 4]
    preprocess = history[0]["stages"][0]["counts"]
    assert preprocess["records_read"] == 40 and sum(preprocess["rows"].values()) == 40
    assert history[0]["stages"][2]["counts"]["test_rows"] == preprocess["rows"]["test"]


def test_vars_may_name_other_vars_and_a_cycle_is_named(tmp_path):
    path = write_pipeline(tmp_path, [{"name": "s", "command": py("pass"), "args": {"out": "${model}"}}],
                          vars={"root": "runs/x", "dataset": "${root}/ds", "model": "${dataset}/../model"})
    pipeline = load(path, {"root": "/data/bt"})
    assert pipeline.stages[0].argv[-2:] == ["--out", "/data/bt/ds/../model"]
    cyclic = write_pipeline(tmp_path, [{"name": "s", "command": py("pass")}], vars={"a": "${b}", "b": "x/${a}"})
    with pytest.raises(runner.PipelineError, match=r"vars refer to each other in a cycle: a -> b -> a"):
        load(cyclic)
