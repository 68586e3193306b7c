"""Running a pipeline (orchestration.runner describes it): the lock, the stages as subprocesses, the skip decisions,
and the run history (``<state>/history.jsonl``, one record per run, appended)."""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from core import atomic, locking
from core.errors import (
    EXIT_DRIFT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_REJECTS,
    EXIT_REMOVALS,
    EXIT_TERMINATED,
)
from core.redact import redact_argv
from orchestration.runner import (
    Pipeline,
    Stage,
    _output_exists,
    counts_of,
    stage_fingerprint,
)

STOP_WAIT_S = 60  # a stopped stage's time to end (a training rank saving its resume point) before SIGKILL
log = logging.getLogger(__name__)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_state(pipeline: Pipeline) -> dict[str, Any]:
    """The last success of each stage; empty (every stage runs again) when stages.json is missing or unreadable."""
    path = pipeline.state / "stages.json"
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("pipeline %s: %s is unreadable (%s): every stage runs again", pipeline.name, path, exc)
        return {}
    return state if isinstance(state, dict) else {}


def write_state(pipeline: Pipeline, state: dict[str, Any]) -> None:
    atomic.write_json(pipeline.state / "stages.json", state)


def append_history(pipeline: Pipeline, record: dict[str, Any]) -> None:
    """Append the run's record as one line, fsynced (and its folder when the file is new), so a run that ended is
    on disk when the runner exits. A line torn by an earlier crash is ended first, so that this one reads."""
    pipeline.state.mkdir(parents=True, exist_ok=True)
    path = pipeline.state / "history.jsonl"
    line = json.dumps(record, sort_keys=True) + "\n"
    with atomic.open_append(path) as fh:  # never through a link planted at its name
        if fh.tell() and not _ends_a_line(path):
            line = "\n" + line
        fh.write(line.encode("utf-8"))  # one write of one line: appends of two runs do not interleave
        fh.flush()
        os.fsync(fh.fileno())
        created = fh.tell() == len(line.encode("utf-8"))
    if created:
        atomic.fsync_folder(path.parent)


def _ends_a_line(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def read_history(pipeline: Pipeline) -> list[dict[str, Any]]:
    """The recorded runs, oldest start first (the file is in order of completion: a run refused by the lock ends
    before the run that holds it). A line that does not parse (torn by a crash) is skipped with a warning."""
    path = pipeline.state / "history.jsonl"
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            log.warning("%s:%d is not a run record (torn by a crash?): skipped", path, number)
            continue
        if isinstance(record, dict) and "started" in record:
            records.append(record)
    return sorted(records, key=lambda r: (r["started"], r.get("started_unix", 0.0)))


def run(pipeline: Pipeline, *, force: bool = False) -> int:
    """Run the pipeline under its lock; returns the exit code (0 ok, 1 a stage failed, 3 a stage rejected too much
    input, 6 a stage refused a snapshot that lost inputs, 7 a stage found drift beyond its limits, 75 another run
    holds the lock). Every run, refused ones included, is appended to the history."""
    return run_recorded(pipeline, force=force)["exit_code"]


def run_recorded(pipeline: Pipeline, *, force: bool = False) -> dict[str, Any]:
    """``run``, returning the run's history record (its ``exit_code`` is what ``run`` returns). The record is
    appended whatever happens, also when the runner itself raises."""
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
    record: dict[str, Any] = {"run": run_id, "pipeline": pipeline.name, "file": pipeline.file, "started": _now(),
                              "started_unix": round(time.time(), 3), "stages": []}
    start, code = time.monotonic(), EXIT_FAILED
    try:
        with locking.hold(str(pipeline.state / "lock"), what=f"pipeline {pipeline.name}"), _terminable():
            code = _run_stages(pipeline, run_id, record, force=force)
    except Terminated:
        # cron's or a scheduler's SIGTERM: the stage was stopped first (_execute), the record says so, the lock goes
        record.update(status="terminated", error="stopped by SIGTERM; the running stage was stopped too")
        code = EXIT_TERMINATED
    except KeyboardInterrupt:
        # Ctrl-C: the stage got its SIGINT from the terminal too; the record says interrupted (exit 130), and the
        # interrupt goes on to the command, which prints its line and exits 130
        record.update(status="interrupted", error="stopped by Ctrl-C (SIGINT); the running stage was stopped too")
        code = EXIT_INTERRUPTED
        raise
    except locking.LockHeld as exc:
        # Not an error: the run holding the lock does the work (docs/operations.md: a scheduler does nothing on 75).
        record.update(status="locked", error=str(exc), holder=exc.holder)
        code = EXIT_LOCKED
        log.debug("%s", exc)
    except Exception as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        record.update(ended=_now(), seconds=round(time.monotonic() - start, 1), exit_code=code)
        record.setdefault("status", "ok" if code == EXIT_OK else "failed")
        append_history(pipeline, record)
    return record


def locked_message(record: dict[str, Any]) -> str:
    """The one line a refused (locked) run prints."""
    holder = record.get("holder") or {}
    who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}" if holder
           else "another process")
    return f"pipeline {record['pipeline']}: already running ({who}), nothing done"


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
        try:
            code, seconds, log_file = _execute(stage, logs)
        except BaseException:  # the runner was stopped (SIGTERM, Ctrl-C): so was the stage
            entry["status"] = "stopped"
            record["stages"] += [{"name": s.name, "status": "not run"} for s in pipeline.stages[index + 1:]]
            raise
        entry.update(exit_code=code, seconds=seconds, log=str(log_file), inputs=inputs)
        if code != 0:
            entry["status"] = "failed"
            record["stages"] += [{"name": s.name, "status": "not run"} for s in pipeline.stages[index + 1:]]
            if code is None:
                entry["error"] = log_file.read_text().strip()
                log.error("stage %s failed: %s", stage.name, entry["error"])
                return EXIT_FAILED
            tail = log_file.read_text(errors="replace").splitlines()[-15:]
            log.error("stage %s failed (exit %d); last lines of %s:\n  %s", stage.name, code, log_file,
                      "\n  ".join(tail))
            # 3 (rejects), 6 (input vanished) and 75 (a stage's own lock held: try later) mean the same for the
            # pipeline; others fail it
            return code if code in (EXIT_REJECTS, EXIT_REMOVALS, EXIT_DRIFT, EXIT_LOCKED) else EXIT_FAILED
        entry.update(status="ran", counts=counts_of(stage.output))
        state[stage.name] = {"fingerprint": fingerprint, "finished": _now(), "counts": entry["counts"]}
        write_state(pipeline, state)
        log.info("stage %s: done in %.1fs %s", stage.name, seconds, entry["counts"] or "")
    return EXIT_OK


def program_path(name: str) -> str | None:
    """Where a stage's program is: a path as given; a bare name on PATH or, failing that, next to this Python (the
    virtual environment's bin, which a cron line calling .venv/bin/bigtrain does not put on PATH); else None."""
    if os.sep in name:
        return name
    return shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))


def _execute(stage: Stage, logs: Path) -> tuple[int | None, float, Path]:
    """(exit code, seconds, log file) of the stage's subprocess; the code is None when its program could not be
    started, and the log file then holds the one-line reason."""
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / f"{stage.name}.log"
    log.info("stage %s: %s", stage.name, " ".join(redact_argv(stage.argv)))
    start, program = time.monotonic(), program_path(stage.argv[0])
    with open(log_file, "w") as out:
        try:
            if program is None:
                raise FileNotFoundError(errno.ENOENT, f"not found on PATH or in {os.path.dirname(sys.executable)}")
            process = subprocess.Popen([program, *stage.argv[1:]], stdout=out, stderr=subprocess.STDOUT)
        except OSError as exc:  # not found, not executable, not a program
            out.write(f"cannot start {stage.argv[0]}: {exc.strerror}\n")
            return None, round(time.monotonic() - start, 1), log_file
        try:
            code = process.wait()
        except BaseException:  # SIGTERM or Ctrl-C of the runner: the stage stops with it, never an orphan
            _stop(process, stage.name)
            raise
    return code, round(time.monotonic() - start, 1), log_file


class Terminated(Exception):
    """The runner got SIGTERM."""


@contextlib.contextmanager
def _terminable():
    """SIGTERM raises ``Terminated`` in the runner's main thread while a run holds the lock (elsewhere, and in
    threads, the handler is left alone)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop(process: subprocess.Popen, name: str) -> None:
    """SIGTERM to the stage, SIGKILL after ``STOP_WAIT_S`` if it is still there."""
    if process.poll() is not None:
        return
    log.warning("stopping stage %s (pid %d)", name, process.pid)
    process.terminate()
    try:
        process.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def format_history(records: list[dict[str, Any]]) -> str:
    lines = [f"{'run':<26} {'started':<21} {'seconds':>8} {'status':<7} {'exit':>4}  stages"]
    for r in records:
        stages = " ".join(f"{s['name']}:{s['status']}" for s in r.get("stages", []))
        lines.append(f"{r['run']:<26} {r['started']:<21} {r.get('seconds', 0):>8} {r['status']:<7} "
                     f"{r['exit_code']:>4}  {stages or r.get('error', '')}")
    return "\n".join(lines)
