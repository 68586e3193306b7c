"""The throughput part's report: the ratios the issue's targets are set on, the two tables (rates, ratios) as text
and Markdown, throughput.json. Standard library only (scripts/gpu_check_throughput.py imports it)."""
from __future__ import annotations

import json
from pathlib import Path

STALL_TARGETS = {256: 0.05, 1024: 0.15}  # the issue's: data stall at most 5 % at batch 256, 15 % at batch 1024
FEED_TARGET = 0.8     # training images/s against min(step alone, loader alone)
LOADER_TARGET = 0.75  # loader alone against the decode-only ceiling, both on every core


def ratios(figures: dict, batches: list[int]) -> list[dict]:
    """The issue's ratios, each with the rates it comes from (None where a part crashed) and its target."""
    loader, decode = all_cores(figures["loader"], "workers"), all_cores(figures["decode"], "processes")
    step = {int(b): f["images_per_s"] for b, f in ((figures["step"] or {}).get("batches") or {}).items()}
    trained = {row["batch"]: row for row in figures["training"]}
    rows = []
    for batch in batches:
        row = trained.get(batch)
        train_rate = row["images_per_s"] if row else None
        feed = min(step[batch], loader) if batch in step and loader else None
        rows.append(ratio(f"training b{batch} / min(step b{batch}, loader all cores)",
                          train_rate / feed if train_rate and feed else None, ">=", FEED_TARGET,
                          [train_rate, step.get(batch), loader]))
    for batch in batches:
        row = trained.get(batch)
        target = STALL_TARGETS.get(batch)
        rows.append(ratio(f"data stall, training b{batch}", row and row["data_stall"], "<=", target,
                          [], percent=True))
    rows.append(ratio("loader all cores / decode ceiling all cores",
                      loader / decode if loader and decode else None, ">=", LOADER_TARGET, [loader, decode]))
    return rows


def all_cores(part: dict | None, key: str) -> float | None:
    """The rate of a part's largest count (every core), or None when the part crashed."""
    if not part or not part.get("rates"):
        return None
    return max(part["rates"], key=lambda figure: figure[key])["images_per_s"]


def ratio(name: str, value: float | None, op: str, bound: float | None, rates: list, *, percent=False) -> dict:
    met = None if value is None or bound is None else (value >= bound if op == ">=" else value <= bound)
    return {"name": name, "value": value, "target": None if bound is None else f"{op} {bound:g}", "op": op,
            "bound": bound, "met": met, "rates": rates, "percent": percent}


RATE_COLUMNS = ("part", "setting", "images/s", "spread", "data stall", "ledger (rank 0)")
RATIO_COLUMNS = ("ratio", "value", "from images/s", "target", "result")


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else ('es' if word.endswith('s') else 's')}"


def rate_rows(results: dict) -> list[list[str]]:
    n, rows = results["cores"], []
    step = results["step"]
    if step:
        for batch, figure in step["batches"].items():
            rows.append(["step alone", f"batch {batch}, {step['precision']}, {step['device']}, synthetic uint8",
                         number(figure["images_per_s"]), f"{figure['steps']} steps", "-", "-"])
    for part, key, word, label in (("loader", "workers", "worker", "loader alone"),
                                   ("decode", "processes", "process", "decode ceiling")):
        figures = results[part]
        if not figures:
            continue
        first = f"batch {figures['batch_size']}" if part == "loader" else figures["codec"]
        for figure in figures["rates"]:
            every = " (all cores)" if figure[key] == n else ""
            rows.append([label, f"{first}, {plural(figure[key], word)}{every}", number(figure["images_per_s"]),
                         f"{number(figure['low'])}-{number(figure['high'])}, {plural(figure['passes'], 'pass')}",
                         "-", "-"])
    for row in results["training"]:
        epochs = row["epochs"]
        span = f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {epochs[0]}-{epochs[-1]}"
        stall = "-" if row["data_stall"] is None else f"{100 * row['data_stall']:.1f}%"
        rows.append(["training", f"batch {row['batch']}, {row['precision']}, {row['device']}, {span}",
                     number(row["images_per_s"]), f"{number(row['low'])}-{number(row['high'])}", stall,
                     ledger_text(row["ledger"])])
    # the reason in full is printed below the tables and kept in throughput.json
    rows += [[error["part"], f"FAILED: {error['reason'].split(':')[0]} (below)", "-", "-", "-", "-"]
             for error in results["errors"]]
    return rows


def ledger_text(ledger: dict | None) -> str:
    if ledger is None:
        return "- (no ledger)"
    parts = []
    if ledger["rank0_data_stall"] is not None:
        parts.append(f"stall {100 * ledger['rank0_data_stall']:.1f}%")
    parts.append(f"bound {ledger['bound'] or '-'}")
    if ledger["rank0_gpu_busy"] is not None:
        parts.append(f"GPU busy {100 * ledger['rank0_gpu_busy']:.0f}%")
    return ", ".join(parts)


def ratio_rows(results: dict) -> list[list[str]]:
    rows = []
    for r in results["ratios"]:
        scale, unit = (100, "%") if r["percent"] else (1, "")
        target = "-" if r["bound"] is None else f"{r['op']} {scale * r['bound']:g}{unit}"
        if r["percent"]:
            value = "-" if r["value"] is None else f"{100 * r['value']:.1f}%"
            source = "-"
        else:
            value = "-" if r["value"] is None else f"{r['value']:.2f}"
            rates = [number(x) for x in r["rates"]]
            source = f"{rates[0]} / min({rates[1]}, {rates[2]})" if len(rates) == 3 else " / ".join(rates)
        result = "-" if r["met"] is None else ("met" if r["met"] else "missed")
        if r["value"] is None:
            result = "not measured"
        rows.append([r["name"], value, source, target, result])
    return rows


def grid(columns: tuple[str, ...], rows: list[list[str]]) -> str:
    lines = [list(columns), *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def markdown(columns: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows)]


def notes(results: dict, gpus: int) -> list[str]:
    lines = ["images/s: loader and decode, the median of the timed passes after a warm-up pass (spread: low-high); "
             "training, the mean of the epochs after the first (worker start-up), data stall likewise; "
             "all cores: " + plural(results["cores"], "core") + ". Targets are reported, not judged: the exit "
             "status is about correctness, and about this part crashing."]
    if not gpus:
        lines.append("No GPU: the step and the training ran on the CPU, in float32; these rates only show that the "
                     "part runs, the targets are a GPU host's.")
    return lines


def write(out: Path, results: dict, gpus: int) -> None:
    """throughput.json and throughput.md in ``out``, and the tables on stdout."""
    (out / "throughput.json").write_text(json.dumps(results, indent=2) + "\n")
    rates, ratio_lines = rate_rows(results), ratio_rows(results)
    env = results.get("environment") or {}
    gpus_text = f"{env.get('gpus')} x {env.get('gpu_name')}" if env.get("gpus") else "no GPU"
    head = (f"GPU check, throughput part, {results.get('date', '-')}, host {env.get('host', '-')} ({gpus_text}, "
            f"{results['cores']} cores), Python {env.get('python', '-')}, torch {env.get('torch', '-')}; data "
            f"{results['data']}: **{results['status']}**")
    (out / "throughput.md").write_text("\n".join([head, "", *markdown(RATE_COLUMNS, rates), "",
                                                  *markdown(RATIO_COLUMNS, ratio_lines), "",
                                                  *notes(results, gpus), ""]))
    print(f"\ngpu-check throughput (data {results['data']}):")
    print(grid(RATE_COLUMNS, rates))
    print()
    print(grid(RATIO_COLUMNS, ratio_lines))
    print()
    print("\n".join(notes(results, gpus)))
    if results["errors"]:
        print(f"\ngpu-check: FAILED: the throughput part crashed ({len(results['errors'])} part(s)):")
        for error in results["errors"]:
            print(f"  FAIL throughput {error['part']}: {error['reason']} (log: {error['log']})")
    print(f"gpu-check: {out / 'throughput.json'}, {out / 'throughput.md'}")


def problems(results: dict) -> list[str]:
    """What makes the check fail: a part that crashed (the targets do not)."""
    return [f"throughput {error['part']}: crashed: {error['reason']} (log: {error['log']})"
            for error in results["errors"]]
