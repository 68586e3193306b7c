"""Helpers for the benchmarks: the work folder, timing, peak memory, the result table."""
from __future__ import annotations

import json
import os
import shutil
import statistics
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


@dataclass(frozen=True)
class Timing:
    """A timed figure: the median of ``runs`` timed runs after a warm-up, and their spread (min, max)."""
    median: float
    low: float
    high: float
    runs: int

    def text(self, fmt: str = ",.0f", unit: str = "/s") -> str:
        """e.g. ``36,512/s (35,900-37,020, median of 3)``."""
        return (f"{self.median:{fmt}}{unit} ({self.low:{fmt}}-{self.high:{fmt}}, median of {self.runs})")


REPEATS = 3  # timed runs per figure, after one warm-up; the floor for a figure worth printing


def set_repeats(n: int) -> None:
    """Timed runs per figure for this run (``benchmarks.run --repeats``; below 3 only to check the harness)."""
    global REPEATS
    REPEATS = n


def repeats() -> int:
    return REPEATS


def timing(values: list[float]) -> Timing:
    """The median and spread of figures measured already (alternated runs of two things, say)."""
    ordered = sorted(values)
    return Timing(statistics.median(ordered), ordered[0], ordered[-1], len(ordered))


def rate(run: Callable[[], int], runs: int | None = None, warmup: bool = True) -> Timing:
    """Items per second of ``run`` (which returns how many items it processed): the median of ``runs`` (default
    ``REPEATS``) timed runs after one warm-up, with their spread."""
    if warmup:
        run()
    rates = []
    for _ in range(runs or REPEATS):
        start = time.perf_counter()
        n = run()
        rates.append(n / (time.perf_counter() - start))
    return timing(rates)


def rates_alternated(runs: dict[str, Callable[[], int]]) -> dict[str, Timing]:
    """``rate`` of each of ``runs``, measured in turns (a warm-up of each, then ``REPEATS`` rounds of one run of
    each), so that the machine's drift over the measurement hits all of them alike."""
    for run in runs.values():
        run()
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(REPEATS):
        for name, run in runs.items():
            start = time.perf_counter()
            n = run()
            rates[name].append(n / (time.perf_counter() - start))
    return {name: timing(values) for name, values in rates.items()}


def seconds(run: Callable[[], object], runs: int | None = None, warmup: bool = True) -> Timing:
    """Seconds of ``run``: the median of ``runs`` (default ``REPEATS``) timed runs after one warm-up, with their
    spread."""
    if warmup:
        run()
    return timing([_timed(run) for _ in range(runs or REPEATS)])


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def memory_growth_mb(run: Callable[[], object], every: float = 0.05) -> float:
    """Peak memory growth while ``run`` runs, over this process's memory just before: this process's resident
    memory plus the unique memory (USS) of its child processes (the loader's workers: forked, they share the
    parent's pages until they write them), sampled every ``every`` seconds."""
    import threading

    import psutil

    me = psutil.Process()
    baseline, peak, done = me.memory_info().rss, 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            total = me.memory_info().rss
            for child in me.children(recursive=True):
                try:
                    total += child.memory_full_info().uss
                except psutil.Error:
                    pass
            peak = max(peak, total)
            done.wait(every)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        run()
    finally:
        done.set()
        thread.join()
    return max(0.0, (peak - baseline) / 2**20)


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
