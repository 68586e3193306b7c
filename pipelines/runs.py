"""Running a pipeline (pipelines.runner describes it): the lock, the stages as subprocesses, the skip decisions,
and the run history (``<state>/history.jsonl``, one record per run, appended)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from pipelines import locking
from pipelines.runner import Pipeline, Stage, _output_exists, counts_of, stage_fingerprint

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_REJECTS, EXIT_LOCKED = 0, 1, 3, 75


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_state(pipeline: Pipeline) -> dict[str, Any]:
    path = pipeline.state / "stages.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def write_state(pipeline: Pipeline, state: dict[str, Any]) -> None:
    path = pipeline.state / "stages.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, path)


def append_history(pipeline: Pipeline, record: dict[str, Any]) -> None:
    pipeline.state.mkdir(parents=True, exist_ok=True)
    with open(pipeline.state / "history.jsonl", "a") as fh:  # one line per write: appends do not interleave
        fh.write(json.dumps(record, sort_keys=True) + "\n")


def read_history(pipeline: Pipeline) -> list[dict[str, Any]]:
    path = pipeline.state / "history.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(pipeline: Pipeline, *, force: bool = False) -> int:
    """Run the pipeline under its lock; returns the exit code (0 ok, 1 a stage failed, 3 a stage rejected too much
    input, 75 another run holds the lock). Every run, refused ones included, is appended to the history."""
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
    record: dict[str, Any] = {"run": run_id, "pipeline": pipeline.name, "file": pipeline.file, "started": _now(),
                              "stages": []}
    start = time.monotonic()
    try:
        with locking.hold(str(pipeline.state / "lock"), what=f"pipeline {pipeline.name}"):
            code = _run_stages(pipeline, run_id, record, force=force)
    except locking.LockHeld as exc:
        record.update(status="locked", error=str(exc))
        code = EXIT_LOCKED
        log.error("%s", exc)
    record.update(ended=_now(), seconds=round(time.monotonic() - start, 1), exit_code=code)
    record.setdefault("status", "ok" if code == EXIT_OK else "failed")
    append_history(pipeline, record)
    return code


def _run_stages(pipeline: Pipeline, run_id: str, record: dict[str, Any], *, force: bool) -> int:
    state = read_state(pipeline)
    logs = pipeline.state / "logs" / run_id
    for index, stage in enumerate(pipeline.stages):
        fingerprint, inputs = stage_fingerprint(stage)
        last = state.get(stage.name, {})
        entry: dict[str, Any] = {"name": stage.name, "fingerprint": fingerprint}
        record["stages"].append(entry)
        if not force and last.get("fingerprint") == fingerprint and _output_exists(stage.output):
            entry.update(status="skipped", reason=f"inputs unchanged since its run of {last.get('finished')}")
            log.info("stage %s: skipped (inputs unchanged since %s)", stage.name, last.get("finished"))
            continue
        code, seconds, log_file = _execute(stage, logs)
        entry.update(exit_code=code, seconds=seconds, log=str(log_file), inputs=inputs)
        if code != 0:
            entry["status"] = "failed"
            record["stages"] += [{"name": s.name, "status": "not run"} for s in pipeline.stages[index + 1:]]
            tail = log_file.read_text(errors="replace").splitlines()[-15:]
            log.error("stage %s failed (exit %d); last lines of %s:\n  %s", stage.name, code, log_file,
                      "\n  ".join(tail))
            return EXIT_REJECTS if code == EXIT_REJECTS else EXIT_FAILED
        entry.update(status="ran", counts=counts_of(stage.output))
        state[stage.name] = {"fingerprint": fingerprint, "finished": _now(), "counts": entry["counts"]}
        write_state(pipeline, state)
        log.info("stage %s: done in %.1fs %s", stage.name, seconds, entry["counts"] or "")
    return EXIT_OK


def _execute(stage: Stage, logs: Path) -> tuple[int, float, Path]:
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / f"{stage.name}.log"
    log.info("stage %s: %s", stage.name, " ".join(stage.argv))
    start = time.monotonic()
    with open(log_file, "w") as out:
        code = subprocess.run(stage.argv, stdout=out, stderr=subprocess.STDOUT).returncode
    return code, round(time.monotonic() - start, 1), log_file


def format_history(records: list[dict[str, Any]]) -> str:
    lines = [f"{'run':<26} {'started':<21} {'seconds':>8} {'status':<7} {'exit':>4}  stages"]
    for r in records:
        stages = " ".join(f"{s['name']}:{s['status']}" for s in r.get("stages", []))
        lines.append(f"{r['run']:<26} {r['started']:<21} {r.get('seconds', 0):>8} {r['status']:<7} "
                     f"{r['exit_code']:>4}  {stages or r.get('error', '')}")
    return "\n".join(lines)
