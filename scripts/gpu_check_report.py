"""The GPU check's results: metrics of a finished run, the verdict, the table (text and Markdown), results.json.

Standard library only (scripts/gpu_check.py imports it; both run on a plain python3 without pyspark).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

LAUNCHERS = {"single": "python", "torch": "torchrun", "horovod": "horovodrun"}
RANK_PREFIX = re.compile(r"^\[\d+\]<std(?:err|out)>:")  # horovodrun's prefix on every line of a rank
LAUNCHER_SUMMARY = re.compile(r"Horovod detected that one or more processes|ChildFailedError")


def last_error(text: str) -> str:
    """The line of a log that says what went wrong: the last of bigtrain's own 'error: ...' lines, else the last
    exception line (not the launcher's summary when a rank said more), else the last line."""
    lines = [line for line in (RANK_PREFIX.sub("", raw).strip() for raw in text.splitlines()) if line]
    own = [line for line in lines if line.lower().startswith("error:")]
    raised = [line for line in lines if re.match(r"\S*(Error|Exception)\b", line)]
    raised = [line for line in raised if not LAUNCHER_SUMMARY.search(line)] or raised
    return (own or raised or lines or ["(no output)"])[-1][:300]


def steady(history: list[dict]) -> list[dict]:
    """The epochs the rates are averaged over: all but the first (start-up, CUDA and cuDNN warm-up) when there are
    two or more."""
    return history[1:] if len(history) > 1 else history


def rates(history: list[dict]) -> tuple[float | None, float | None, bool]:
    """(mean data stall, mean samples per second, whether the rate was reported by training). Until training
    reports samples_per_second, the fallback is train_rows / seconds (the whole epoch, validation included)."""
    epochs = steady(history)
    if not epochs:
        return None, None, False
    stall = sum(e.get("data_stall", 0.0) for e in epochs) / len(epochs)
    reported = all(e.get("samples_per_second") is not None for e in epochs)
    if reported:
        per_second = [float(e["samples_per_second"]) for e in epochs]
    else:
        per_second = [e["train_rows"] / e["seconds"] for e in epochs if e.get("seconds")]
    return stall, (sum(per_second) / len(per_second) if per_second else None), reported


def collect(row: dict, output: Path, code: int | None, log_path: Path, host: dict) -> dict:
    """Fill a row from the run's metrics.json; the reasons a run counts as failed go to row['reason']."""
    text = log_path.read_text(errors="replace")
    metrics_path = output / "metrics.json"
    if code is None:
        return {**row, "status": "failed", "reason": f"timed out after {row['wall_s']}s: {last_error(text)}"}
    if code != 0:
        return {**row, "status": "failed", "reason": f"exit {code}: {last_error(text)}"}
    if not metrics_path.exists():
        return {**row, "status": "failed", "reason": f"exit 0 but no {metrics_path}"}
    metrics = json.loads(metrics_path.read_text())
    stall, per_second, reported = rates(metrics.get("history") or [])
    device = metrics.get("device")
    on_gpu = device.startswith("cuda") if device else bool(host["gpus"])
    row.update(test_accuracy=metrics.get("test_accuracy"), test_rows=metrics.get("test_rows"),
               world_size=metrics.get("world_size"), device=device, model=metrics.get("model", row["model"]),
               gpus=metrics.get("world_size", 0) if on_gpu else 0, data_stall=stall, samples_per_second=per_second,
               samples_per_second_reported=reported, epochs=metrics.get("epochs_completed"))
    problems = []
    if row["test_accuracy"] is None:
        problems.append("no test accuracy (empty test split?)")
    if metrics.get("backend") != row["backend"]:
        problems.append(f"ran with backend {metrics.get('backend')!r}, not {row['backend']!r}")
    if row["world_size"] != row["processes"]:
        problems.append(f"world size {row['world_size']}, expected {row['processes']}")
    if host["gpus"] and device and not on_gpu:
        problems.append(f"trained on {device} on a host with {host['gpus']} GPU(s)")
    return {**row, "status": "failed" if problems else "ok", "reason": "; ".join(problems) or None}


def verdict(rows: list[dict], tolerance: float) -> list[str]:
    """What makes the check fail: a failed run, or a run less accurate than its kind's single-process run by more
    than the tolerance. The single-process run is the reference and is not compared with itself; without one
    (--backends without single) accuracies are not compared."""
    problems = []
    for row in rows:
        if row["status"] != "ok":
            problems.append(f"{name(row)}: failed: {row['reason']}")
    for kind in dict.fromkeys(row["kind"] for row in rows):
        single = next((r for r in rows if r["kind"] == kind and r["backend"] == "single"), None)
        for row in rows:
            if row["kind"] != kind or row["backend"] == "single" or row["status"] != "ok":
                continue
            if single is None or single["status"] != "ok":  # not selected (not judged), or failed (judged above)
                continue
            if row["test_accuracy"] < single["test_accuracy"] - tolerance:
                problems.append(f"{name(row)}: test accuracy {row['test_accuracy']:.4f} is more than {tolerance:g} "
                                f"below the single-process run's {single['test_accuracy']:.4f}")
    return problems


def name(row: dict) -> str:
    return f"{row['kind']}/{row['model']} {row['backend']} ({LAUNCHERS[row['backend']]}, {row['processes']} " \
           f"process{'es' if row['processes'] != 1 else ''})"


COLUMNS = ("kind/model", "backend", "launcher", "GPUs", "test acc", "data stall", "samples/s", "wall s", "status")


def cells(row: dict) -> list[str]:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)
    rate = fmt(row.get("samples_per_second"), ",.0f")
    if row.get("samples_per_second") is not None and not row.get("samples_per_second_reported"):
        rate = "~" + rate
    status = row["status"] if row["status"] == "ok" else f"FAILED: {row['reason']}"[:90]
    return [f"{row['kind']}/{row['model']}", row["backend"], f"{LAUNCHERS[row['backend']]} x{row['processes']}",
            str(row.get("gpus", 0)), fmt(row.get("test_accuracy"), ".4f"),
            "-" if row.get("data_stall") is None else f"{100 * row['data_stall']:.1f}%", rate,
            fmt(row.get("wall_s"), ".1f"), status]


def table_text(rows: list[dict]) -> str:
    grid = [list(COLUMNS)] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) if i in (0, 1, 2, 8) else c.rjust(w)
                               for i, (c, w) in enumerate(zip(line, widths))).rstrip() for line in grid)


def footnote(rows: list[dict]) -> str:
    note = ("data stall and samples/s: means over the epochs after the first (warm-up), or over the one epoch; "
            "samples/s counts all ranks; wall s: the whole command, start-up and test evaluation included.")
    if any(r.get("samples_per_second") is not None and not r.get("samples_per_second_reported") for r in rows):
        note += " ~: train_rows / epoch seconds (validation included): the run reported no samples_per_second."
    return note


def table_markdown(results: dict) -> str:
    env = results["environment"]
    gpus = f"{env['gpus']} x {env['gpu_name']}" if env["gpus"] else "no GPU"
    epochs = results["epochs"]
    if isinstance(epochs, dict):
        epochs = ", ".join(f"{kind} {n}" for kind, n in epochs.items())
    head = (f"GPU check, {results['date']}, host {env['host']} ({gpus}, {env.get('cpus')} CPUs), "
            f"Python {env['python']}, torch {env.get('torch')}, "
            f"Horovod {results['horovod'].get('version') or '-'}; epochs: {epochs}; "
            f"global batch {results.get('global_batch', '-')} (split over a run's processes, lr not scaled); "
            f"tolerance {results['tolerance']:g}: **{results['verdict']}**")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |" for r in results["rows"]]
    problems = [f"- FAIL {problem}" for problem in results["problems"]]
    return "\n".join([head, "", *lines, "", footnote(results["rows"]), *([""] + problems if problems else []), ""])


def save_results(out: Path, results: dict) -> None:
    """results.json and table.md, without printing (the throughput part adds its status after the table)."""
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "table.md").write_text(table_markdown(results))


def write_results(out: Path, results: dict) -> None:
    save_results(out, results)
    print(table_text(results["rows"]))
    print(footnote(results["rows"]))
    if results["problems"]:
        print(f"\ngpu-check: FAILED ({len(results['problems'])} problem(s)):")
        for problem in results["problems"]:
            print(f"  FAIL {problem}")
    else:
        print(f"\ngpu-check: passed: every run finished and none is more than {results['tolerance']:g} below "
              "its single-process accuracy")
    print(f"gpu-check: {out / 'results.json'}, {out / 'table.md'}; per-run logs and outputs in {out}")
