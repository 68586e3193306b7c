"""The GPU check's throughput part: does the loader feed the GPU? Four measurements on the carried PNG image set, each
in a subprocess of the check's interpreter, then a table of rates and ratios against the issue's targets:

- the CNN's training step alone on synthetic uint8 images already on the device (scripts/gpu_throughput.py step);
- the training loader alone, 1, 2, 4, ... workers up to the cores (scripts/gpu_throughput.py loader);
- the decode-only ceiling of the same bytes, in 1 process and in as many as cores (scripts/gpu_throughput.py decode);
- jobs/train.py --backend single --mixed-precision at each batch size, read back from its metrics.json (the epochs
  after the first, and rank 0's stage ledger where training writes one).

Targets are reported (met / missed), not judged: the check's exit status stays about correctness, and about this
part crashing. Its flags and help are here too. Standard library only (scripts/gpu_check.py imports it; the report
is scripts/gpu_check_throughput_report.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

from gpu_check_report import last_error, steady  # scripts/, next to this file
from gpu_check_throughput_report import ratios

REPO = Path(__file__).resolve().parent.parent
HELPER = REPO / "scripts" / "gpu_throughput.py"


DESCRIPTION = """\
Then the throughput part (--no-throughput skips it, --only-throughput runs it alone), on the carried PNG image set
(--throughput-data): the CNN's training step alone on synthetic uint8 images already on the device (bf16 where the
GPU has it; on a CPU host a few steps on the CPU), the training loader alone with 1, 2, 4, ... workers up to the
cores, the decode-only ceiling in 1 process and in one per core, and jobs/train.py --backend single
--mixed-precision at each --throughput-batches size (the epochs after the first; rank 0's data stall and bounding
stage from the stage ledger where training writes one); a table of the rates and of the ratios the targets are set
on: training / min(step alone, loader alone) >= 0.8, data stall <= 5 % at batch 256 and <= 15 % at 1024, loader
alone / decode ceiling >= 0.75 (both on every core). The targets are reported (met / missed), not judged; a part
of it that crashes fails the check."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    part = parser.add_argument_group("throughput part")
    which = part.add_mutually_exclusive_group()
    which.add_argument("--no-throughput", action="store_true", help="the correctness rows only")
    which.add_argument("--only-throughput", action="store_true",
                       help="the throughput part only (no correctness rows, no Horovod, no results.json)")
    part.add_argument("--throughput-data", type=Path, metavar="DIR",
                      help="an image dataset big enough for steady state (default: CARRY/data/images-png, the "
                           "12,000 train rows of 24 px PNG make gpu-check-data writes)")
    part.add_argument("--throughput-batches", default="256,1024", metavar="B,B",
                      help="batch sizes of the step alone and the trainings (default 256,1024); the loader alone "
                           "reads batches of the first")
    part.add_argument("--throughput-epochs", type=int, default=6, metavar="N",
                      help="epochs of each training, the first not counted (default 6)")
    part.add_argument("--throughput-passes", type=int, default=5, metavar="N",
                      help="timed passes over the train split per loader and decode figure, after one warm-up "
                           "pass (default 5)")
    part.add_argument("--throughput-steps", type=int, metavar="N",
                      help="timed steps per batch size of the step alone (default 200 on a GPU, 10 on CPU)")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The throughput flags resolved in place (the data folder from --carry, the batches as numbers)."""
    args.throughput_data = (args.throughput_data or args.carry / "data" / "images-png").resolve()
    text = args.throughput_batches
    batches = [b.strip() for b in text.split(",") if b.strip()]
    if not batches or not all(b.isdigit() and int(b) >= 1 for b in batches):
        parser.error(f"--throughput-batches {text!r}: give positive integers separated by commas")
    args.throughput_batches = [int(b) for b in batches]
    if min(args.throughput_epochs, args.throughput_passes, args.throughput_steps or 1) < 1:
        parser.error("--throughput-epochs, --throughput-passes and --throughput-steps must be at least 1")


def log(message: str) -> None:
    print(f"gpu-check: {message}", file=sys.stderr, flush=True)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_counts(n: int) -> list[int]:
    """1, 2, 4, ... below n, then n itself: the loader's curve up to every core."""
    counts, count = [], 1
    while count < n:
        counts.append(count)
        count *= 2
    return [*counts, n]


def measure(args, env: dict, run_one) -> dict:
    """Run the four parts (``run_one(cmd, env, log_path, timeout) -> (exit status or None, seconds)``) and return
    the figures, the ratios and what crashed; a part that crashes leaves its figures out and the rest still run."""
    n = cores()
    batches = args.throughput_batches
    errors: list[dict] = []

    def helper(part: str, *extra: str) -> dict | None:
        json_path, log_path = args.out / f"throughput-{part}.json", args.out / f"throughput-{part}.log"
        json_path.unlink(missing_ok=True)  # a crash must never leave an older run's figures behind
        cmd = [sys.executable, str(HELPER), part, "--data", str(args.throughput_data), "--json", str(json_path),
               *extra]
        log(f"[throughput] {part}: {' '.join(extra)} (log: {log_path})")
        code, wall = run_one(cmd, env, log_path, args.run_timeout)
        if code == 0 and json_path.exists():
            log(f"[throughput] {part}: done in {wall:.0f}s")
            return json.loads(json_path.read_text())
        errors.append(crash(part, code, log_path, args.run_timeout))
        log(f"[throughput] {part}: CRASHED: {errors[-1]['reason']}")
        return None

    passes = ["--passes", str(args.throughput_passes)]
    steps = ["--steps", str(args.throughput_steps)] if args.throughput_steps else []
    step = helper("step", "--batches", ",".join(map(str, batches)), *steps)
    loader = helper("loader", "--workers", ",".join(map(str, worker_counts(n))), "--batch-size", str(batches[0]),
                    *passes)
    decode = helper("decode", "--processes", ",".join(map(str, sorted({1, n}))), *passes)
    training = [row for row in (train_row(args, env, run_one, batch, errors) for batch in batches) if row]
    figures = {"cores": n, "data": str(args.throughput_data), "step": step, "loader": loader, "decode": decode,
               "training": training}
    return {**figures, "ratios": ratios(figures, batches), "errors": errors,
            "status": "failed" if errors else "ok"}


def crash(part: str, code: int | None, log_path: Path, timeout: float) -> dict:
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    reason = (f"timed out after {timeout:g}s" if code is None else f"exit {code}") + f": {last_error(text)}"
    return {"part": part, "reason": reason, "log": str(log_path)}


def train_row(args, env: dict, run_one, batch: int, errors: list[dict]) -> dict | None:
    part, output = f"train-b{batch}", args.out / f"throughput-train-b{batch}"
    shutil.rmtree(output, ignore_errors=True)  # a failed run must never leave an older metrics.json behind
    log_path = args.out / f"throughput-{part}.log"
    count = f"{args.throughput_epochs} epoch{'s' if args.throughput_epochs != 1 else ''}"
    log(f"[throughput] {part}: jobs/train.py, batch {batch}, {count} (log: {log_path})")
    cmd = [sys.executable, str(REPO / "jobs" / "train.py"), "--backend", "single", "--data",
           str(args.throughput_data), "--output", str(output), "--epochs", str(args.throughput_epochs),
           "--batch-size", str(batch), "--model", "cnn", "--mixed-precision", "--no-progress", "--no-resume",
           "--early-stopping-patience", "0"]
    code, wall = run_one(cmd, env, log_path, args.run_timeout)
    metrics_path = output / "metrics.json"
    if code != 0 or not metrics_path.exists():
        errors.append(crash(part, code, log_path, args.run_timeout) if code != 0 else
                      {"part": part, "reason": f"exit 0 but no {metrics_path}", "log": str(log_path)})
        log(f"[throughput] {part}: CRASHED: {errors[-1]['reason']}")
        return None
    log(f"[throughput] {part}: done in {wall:.0f}s")
    metrics = json.loads(metrics_path.read_text())
    history = metrics.get("history") or []
    epochs = steady(history)
    rates = [e["samples_per_second"] for e in epochs if e.get("samples_per_second")]
    stalls = [e["data_stall"] for e in epochs if e.get("data_stall") is not None]
    if not rates:
        errors.append({"part": part, "reason": f"{metrics_path} reports no samples_per_second", "log": str(log_path)})
        return None
    return {"batch": batch, "device": metrics.get("device"), "precision": metrics.get("precision"),
            "epochs": list(range(len(history) - len(epochs) + 1, len(history) + 1)),
            "images_per_s": sum(rates) / len(rates),
            "low": min(rates), "high": max(rates), "data_stall": sum(stalls) / len(stalls) if stalls else None,
            "ledger": ledger_summary(epochs), "wall_s": wall, "output": str(output)}


def ledger_summary(epochs: list[dict]) -> dict | None:
    """Rank 0's mean data stall and the stage most often bounding the slowest rank, over the epochs, from each
    epoch's stage ledger (``history[i]["ledger"]``); None when training writes no ledger (older code)."""
    ledgers = [e.get("ledger") for e in epochs]
    if not ledgers or not all(isinstance(ledger, dict) for ledger in ledgers):
        return None
    rank0 = [next((r for r in ledger.get("ranks") or [] if isinstance(r, dict) and r.get("rank") == 0), None)
             for ledger in ledgers]
    stalls = [r["data_stall"] for r in rank0 if r and isinstance(r.get("data_stall"), (int, float))]
    busy = [r["gpu_busy"] for r in rank0 if r and isinstance(r.get("gpu_busy"), (int, float))]
    bounds = Counter(ledger["bound"] for ledger in ledgers if ledger.get("bound"))
    trainer: Counter = Counter()
    for r in rank0:
        for stage, seconds in ((r or {}).get("trainer_s") or {}).items():
            if isinstance(seconds, (int, float)):
                trainer[stage] += seconds
    return {"rank0_data_stall": sum(stalls) / len(stalls) if stalls else None,
            "bound": bounds.most_common(1)[0][0] if bounds else None, "bounds": dict(bounds),
            "rank0_gpu_busy": sum(busy) / len(busy) if busy else None,
            "slowest_ranks": sorted({ledger["slowest_rank"] for ledger in ledgers
                                     if isinstance(ledger.get("slowest_rank"), int)}),
            "rank0_trainer_s": {stage: round(seconds, 4) for stage, seconds in trainer.items()}}
