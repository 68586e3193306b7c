"""Helpers for the benchmarks: the work folder, timing, peak memory, the result table."""
from __future__ import annotations

import json
import os
import resource
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Callable

WORK_MARKER = ".bigtrain-bench-work"  # written into a work folder the benchmarks created: only such a folder is emptied


def check_work_folder(path: str) -> None:
    """ValueError naming ``path`` unless it is missing, an empty folder, or a work folder of an earlier run (it holds
    WORK_MARKER): the benchmarks delete their work folder, so it must never be a folder of the user's."""
    work = os.path.abspath(path)
    if os.path.islink(work) or (os.path.lexists(work) and not os.path.isdir(work)):
        raise ValueError(f"--work {path}: {work} is not a folder; give a new or empty folder")
    if os.path.isdir(work) and os.listdir(work) and not os.path.isfile(os.path.join(work, WORK_MARKER)):
        raise ValueError(f"--work {path}: {work} holds files and was not created by benchmarks.run (no {WORK_MARKER});"
                         " refusing to delete it: give a new or empty folder")


def fresh_work_folder(path: str) -> str:
    """``path`` emptied (after ``check_work_folder``) and marked as the benchmarks' work folder; its absolute path."""
    check_work_folder(path)
    work = os.path.abspath(path)
    if os.path.isdir(work):
        shutil.rmtree(work)
    os.makedirs(work)
    with open(os.path.join(work, WORK_MARKER), "w") as fh:
        fh.write("scratch data of python -m benchmarks.run; the next run deletes this folder\n")
    return work


@dataclass
class Result:
    group: str
    name: str
    value: float | None          # the ratio (or figure) this row reports
    unit: str
    detail: str = ""             # the raw figures behind the ratio
    target: str = ""             # e.g. ">= 0.7"
    met: bool | None = None


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def best_rate(run: Callable[[], int], repeats: int = 2) -> float:
    """Items per second of ``run`` (which returns how many items it processed); the best of ``repeats`` runs
    after one warm-up, since the machines are noisy and the fastest run is the least disturbed."""
    run()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        n = run()
        best = max(best, n / (time.perf_counter() - start))
    return best


def best_seconds(run: Callable[[], object], repeats: int = 2) -> float:
    run()
    return min(_timed(run) for _ in range(repeats))


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check(value: float | None, op: str, bound: float) -> bool | None:
    if value is None:
        return None
    return value >= bound if op == ">=" else value <= bound


def table(results: list[Result]) -> str:
    rows = [("group", "measure", "value", "target", "met", "figures")]
    for r in results:
        value = "n/a" if r.value is None else f"{r.value:.3g} {r.unit}".strip()
        met = "" if r.met is None else ("yes" if r.met else "NO")
        rows.append((r.group, r.name, value, r.target, met, r.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths)) + "  " + row[5] for row in rows]
    lines.insert(1, "-" * min(160, len(lines[0])))
    return "\n".join(lines)


def write_json(path: str, results: list[Result], meta: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump({"meta": meta, "results": [asdict(r) for r in results]}, fh, indent=2)
