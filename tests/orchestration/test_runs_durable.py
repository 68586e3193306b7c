"""orchestration.runs: the run records and stage states survive a crash: history lines are fsynced, a line torn by
a crash neither hides the other runs nor the next one, and an unreadable stages.json or metrics.json does not stop
every later run."""
from __future__ import annotations

import json
import os
import sys

import yaml

from jobs.cli import SUBCOMMANDS
from orchestration import runner, runs


def _pipeline(tmp_path, stages):
    file = tmp_path / "p.yaml"
    file.write_text(yaml.safe_dump({"name": "t", "state": str(tmp_path / "state"), "stages": stages}))
    return runner.load(str(file), subcommands=SUBCOMMANDS)


def _stage(name="step", **extra):
    return {"name": name, "command": [sys.executable, "-c", "pass"], **extra}


def test_a_history_line_torn_by_a_crash_hides_neither_the_earlier_runs_nor_the_next(tmp_path, caplog):
    pipeline = _pipeline(tmp_path, [_stage()])
    assert runs.run(pipeline, force=True) == 0
    history = pipeline.state / "history.jsonl"
    with open(history, "a") as fh:
        fh.write('{"run": "20260101T000000Z-1", "pipeline": "t", "sta')  # power lost mid-append
    assert runs.run(pipeline, force=True) == 0
    records = runs.read_history(pipeline)
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert f"{history}:2 is not a run record" in caplog.text
    assert len(history.read_text().splitlines()) == 3


def test_each_history_record_is_fsynced_before_the_run_returns(tmp_path, monkeypatch):
    pipeline = _pipeline(tmp_path, [_stage()])
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    runs.run(pipeline, force=True)
    history = str(pipeline.state / "history.jsonl")
    assert history in synced and str(pipeline.state) in synced[synced.index(history):]  # the new name too
    assert str(pipeline.state / "stages.json") not in synced  # written through core.atomic: its temporary file
    assert any("/.stages.json." in p and p.endswith(".tmp") for p in synced)


def test_an_unreadable_stages_json_runs_every_stage_again_instead_of_failing(tmp_path, caplog):
    pipeline = _pipeline(tmp_path, [_stage()])
    assert runs.run(pipeline) == 0
    (pipeline.state / "stages.json").write_text('{"step": {"fingerprint": "ab')  # torn by a crash
    assert runs.run(pipeline) == 0
    assert runs.read_history(pipeline)[-1]["stages"][0]["status"] == "ran"
    assert "stages.json is unreadable" in caplog.text
    assert json.loads((pipeline.state / "stages.json").read_text())["step"]["fingerprint"]


def test_an_unreadable_metrics_json_of_a_stage_output_is_recorded_not_raised(tmp_path):
    output = tmp_path / "model"
    output.mkdir()
    (output / "metrics.json").write_text('{"test_accuracy": 0.9')
    assert runner.counts_of(str(output)) == {"unreadable": str(output / "metrics.json")}
