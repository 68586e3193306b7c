"""Compare bigtrain's text models on real text: the docstrings of installed packages, labelled by package.

Usage:
    python -m benchmarks.text_models                                  # every text model, one run each
    python -m benchmarks.text_models --models lstm,gru --seeds 3      # seeds 1, 2, 3 of each
    python -m benchmarks.text_models --models lstm --set train.batch_size=32

Steps, one at a time (2 and 3 are subprocesses running the bigtrain command a user runs):
  1. the corpus (benchmarks.text_corpus, defaults) into <work>/corpus.jsonl, rewritten only when its rows changed;
  2. `bigtrain preprocess-sequences` into <work>/ds (local[2], one rank): nothing to do when the corpus is
     unchanged, --mode overwrite when it changed (an incremental run would keep the old vocabulary);
  3. `bigtrain train` per model (and seed) into <work>/models/<model>[-seed<N>] with bigtrain's defaults
     (epochs, learning rate, optimizer: the model's), timed; its log goes to <work>/logs/.
A model that `bigtrain train --model` does not accept (exit 2) is skipped with a note. The table gives each
model's test accuracy, best validation accuracy, epochs run / best epoch, seconds and parameters (as far as
metrics.json has them), and the baselines metrics.json reports, computed on the same splits.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any, Sequence

from benchmarks import common, text_corpus
from core import atomic
from core.errors import EXIT_OK, EXIT_USAGE
from core.paths import to_url
from dataset import layout, manifest

MODELS = ("fasttext", "transformer", "lstm", "gru", "rnn")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def say(text: str) -> None:
    print(f"[text-bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def run_dirs(models: Sequence[str], seeds: int) -> list[tuple[str, int | None, str]]:
    """(model, seed, output folder name) of every training run: one per model with bigtrain's default seed when
    ``seeds`` is 1, else seeds 1..``seeds`` each."""
    if seeds == 1:
        return [(model, None, model) for model in models]
    return [(model, seed, f"{model}-seed{seed}") for model in models for seed in range(1, seeds + 1)]


def preprocess_command(corpus: str, dataset: str, *, overwrite: bool) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", "preprocess-sequences", "--input", corpus, "--output", dataset,
            "--master", "local[2]", "--ranks", "1", "--quiet", *(["--mode", "overwrite"] if overwrite else [])]


def train_command(dataset: str, output: str, model: str, seed: int | None, overrides: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", "train", "--data", dataset, "--output", output, "--model", model,
            "--no-progress", "--no-resume", *(["--seed", str(seed)] if seed is not None else []),
            *(arg for value in overrides for arg in ("--set", value))]


def child_env() -> dict[str, str]:
    """This environment with the repository first on PYTHONPATH and Spark's Python workers on this interpreter."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    return env


def run_logged(command: list[str], log: str) -> tuple[int, float, str]:
    """(exit code, seconds, stdout) of ``command`` run from the repository; stdout and stderr also go to ``log``."""
    os.makedirs(os.path.dirname(log), exist_ok=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    atomic.write_text(log, f"$ {' '.join(command)}\n# exit {done.returncode} after {elapsed:.1f} s\n"
                           f"## stdout\n{done.stdout}## stderr\n{done.stderr}")
    return done.returncode, elapsed, done.stdout


def last_lines(log: str, n: int = 15) -> str:
    with open(log, encoding="utf-8") as fh:
        return "".join(fh.readlines()[-n:])


def read_metrics(output: str) -> dict[str, Any]:
    """The figures of one run's ``metrics.json`` this bench reports; keys metrics.json lacks are None."""
    with open(os.path.join(output, "metrics.json"), encoding="utf-8") as fh:
        metrics = json.load(fh)
    history = metrics.get("history") or []
    vals = [h["val_accuracy"] for h in history if h.get("val_accuracy") is not None]
    return {"test_accuracy": metrics.get("test_accuracy"), "best_val_accuracy": max(vals) if vals else None,
            "epochs_completed": metrics.get("epochs_completed"), "best_epoch": metrics.get("best_epoch"),
            "stopped_early": metrics.get("stopped_early"), "parameters": metrics.get("parameters"),
            "train_rows": metrics.get("train_rows"), "test_rows": metrics.get("test_rows"),
            "baselines": metrics.get("baselines")}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One model's runs (over seeds, all finished) as one row: test accuracy mean and standard deviation, the
    rest per run."""
    accuracies = [r["test_accuracy"] for r in runs if r["test_accuracy"] is not None]
    return {"model": runs[0]["model"], "runs": len(runs), "seeds": [r["seed"] for r in runs],
            "test_accuracy": statistics.mean(accuracies) if accuracies else None,
            "test_accuracy_sd": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
            "test_accuracy_range": [min(accuracies), max(accuracies)] if accuracies else None,
            "best_val_accuracy": _mean([r["best_val_accuracy"] for r in runs]),
            "epochs_completed": [r["epochs_completed"] for r in runs], "best_epoch": [r["best_epoch"] for r in runs],
            "stopped_early": [r["stopped_early"] for r in runs],
            "seconds": common.timing([r["seconds"] for r in runs]).median, "parameters": runs[0]["parameters"]}


def _mean(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.mean(present) if present else None


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else f"{value:{fmt}}"


def _per_run(values: list) -> str:
    """One value when every run agrees, else each run's, comma-separated; ``-`` for an absent one."""
    shown = ["-" if v is None else str(v) for v in values]
    return shown[0] if len(set(shown)) == 1 else ",".join(shown)


def table(rows: list[dict[str, Any]], baselines: dict[str, Any] | None) -> str:
    """The markdown table: a row per model, then the two baselines."""
    lines = ["| model | test accuracy | best val accuracy | epochs run / best | seconds per run | parameters |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        accuracy = _num(row["test_accuracy"])
        if row["test_accuracy_sd"] is not None:
            low, high = row["test_accuracy_range"]
            accuracy += f" ± {row['test_accuracy_sd']:.3f} ({low:.3f}-{high:.3f}, {row['runs']} seeds)"
        epochs = f"{_per_run(row['epochs_completed'])} / {_per_run(row['best_epoch'])}"
        if any(row["stopped_early"]):
            epochs += " (stopped early)"
        params = "-" if row["parameters"] is None else f"{row['parameters']:,}"
        lines.append(f"| {row['model']} | {accuracy} | {_num(row['best_val_accuracy'])} | {epochs} | "
                     f"{row['seconds']:.0f} | {params} |")
    majority = (baselines or {}).get("majority_class")
    bow = (baselines or {}).get("bag_of_words")
    lines.append(_baseline_row("majority class", majority, "class"))
    lines.append(_baseline_row("bag of words", bow, "method"))
    return "\n".join(lines)


def _baseline_row(name: str, baseline: dict[str, Any] | None, what: str) -> str:
    label = f"baseline: {name}" + (f" ({baseline[what]})" if baseline and baseline.get(what) else "")
    return f"| {label} | {_num((baseline or {}).get('accuracy'))} | - | - | - | - |"


def verdict(rows: list[dict[str, Any]], baselines: dict[str, Any] | None) -> str:
    """The line saying which models' mean test accuracy is above the bag-of-words baseline's."""
    bow = (baselines or {}).get("bag_of_words")
    if not bow or bow.get("accuracy") is None:
        return "bag-of-words baseline: not in metrics.json, so no model can be said to beat it"
    above = [r["model"] for r in rows if r["test_accuracy"] is not None and r["test_accuracy"] > bow["accuracy"]]
    return (f"beat the bag-of-words baseline ({bow['accuracy']:.3f}): {', '.join(above) if above else 'none'} "
            f"(of {', '.join(r['model'] for r in rows) or 'no model'})")


def split_rows(dataset: str) -> dict[str, int]:
    """Rows per split of the dataset's current snapshot."""
    snapshot = manifest.read(layout.resolve_snapshot(to_url(dataset)))
    return {name: counts.rows for name, counts in snapshot.splits.items()}


def prepare_work(path: str) -> str:
    """``path`` made (or kept: its dataset is reused) and marked as a benchmarks work folder; its absolute path.
    A folder of the user's is refused (``common.check_work_folder``)."""
    common.check_work_folder(path)
    work = os.path.abspath(path)
    os.makedirs(work, exist_ok=True)
    marker = os.path.join(work, common.WORK_MARKER)
    if not os.path.isfile(marker):
        atomic.write_text(marker, "scratch data of python -m benchmarks.text_models; its models are deleted and "
                                  "trained again by the next run\n")
    return work


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    head, *rest = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(prog="benchmarks.text_models", description=head,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(rest[1:]))
    parser.add_argument("--work", default="runs/bench/text",
                        help="folder for the corpus, the dataset, the models and the logs: new, empty, or one an "
                             "earlier run of this bench made (its dataset is reused, its models trained again) "
                             "(default: runs/bench/text)")
    parser.add_argument("--models", default=",".join(MODELS), metavar="A,B,...",
                        help=f"comma-separated `bigtrain train --model` names (default: {','.join(MODELS)})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to every `bigtrain train` as --set KEY=VALUE (e.g. train.batch_size=32); "
                             "repeatable")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="runs per model: 1 (default) with bigtrain's default seed, else --seed 1..N, and "
                             "the test accuracy as mean ± standard deviation")
    parser.add_argument("--output", default=None, metavar="FILE",
                        help="the JSON results (default: <work>/results.json)")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models:
        parser.error("--models: name at least one model")
    if len(set(args.models)) != len(args.models):
        parser.error(f"--models {','.join(args.models)}: a model is named twice")
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: expected at least 1")
    try:
        common.check_work_folder(args.work)
    except ValueError as exc:
        parser.error(str(exc))
    args.output = args.output or os.path.join(args.work, "results.json")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = prepare_work(args.work)
    corpus_path, dataset = os.path.join(work, "corpus.jsonl"), os.path.join(work, "ds")
    steps: dict[str, float] = {}

    start = time.perf_counter()
    corpus = text_corpus.build(text_corpus.default_site_packages(), text_corpus.PACKAGES)
    changed = text_corpus.write_jsonl(corpus_path, corpus.rows)
    steps["corpus"] = time.perf_counter() - start
    print(text_corpus.summary_table(corpus) + "\n")
    say(f"corpus: {len(corpus.rows):,} rows, {'written' if changed else 'unchanged'} ({steps['corpus']:.0f} s)")

    overwrite = changed and os.path.isdir(dataset)
    code, steps["preprocess"], out = run_logged(preprocess_command(corpus_path, dataset, overwrite=overwrite),
                                                os.path.join(work, "logs", "preprocess.log"))
    print(out.strip() + "\n")
    if code != EXIT_OK:
        say(f"preprocess-sequences failed (exit {code}); the end of {work}/logs/preprocess.log:\n"
            + last_lines(os.path.join(work, "logs", "preprocess.log")))
        return 1
    splits = split_rows(dataset)
    say(f"dataset: {', '.join(f'{name} {n:,}' for name, n in splits.items())} rows ({steps['preprocess']:.0f} s)")

    runs, skipped, failed = [], {}, {}
    for model, seed, name in run_dirs(args.models, args.seeds):
        if model in skipped:
            continue
        output, log = os.path.join(work, "models", name), os.path.join(work, "logs", f"{name}.log")
        if os.path.isdir(output):
            shutil.rmtree(output)  # an earlier run's metrics.json must not stand in for this run's
        say(f"train {name} ...")
        code, elapsed, _ = run_logged(train_command(dataset, output, model, seed, args.overrides), log)
        steps[f"train {name}"] = elapsed
        if code == EXIT_USAGE:
            skipped[model] = last_lines(log, 1).strip()
            say(f"skipped {model}: `bigtrain train` refused it (exit 2, usage): {skipped[model]}")
            continue
        if code != EXIT_OK:
            failed[name] = code
            say(f"train {name} failed (exit {code}); the end of {log}:\n{last_lines(log)}")
            continue
        runs.append({"model": model, "seed": seed, "output": output, "seconds": elapsed, **read_metrics(output)})
        say(f"train {name}: test accuracy {_num(runs[-1]['test_accuracy'])} ({elapsed:.0f} s)")

    rows = [summarise([r for r in runs if r["model"] == model]) for model in args.models
            if any(r["model"] == model for r in runs)]
    baselines = runs[0]["baselines"] if runs else None
    print(table(rows, baselines))
    print()
    print(verdict(rows, baselines))
    for model, note in skipped.items():
        print(f"skipped {model}: bigtrain train exited 2 (usage): {note}")
    for name, code in failed.items():
        print(f"failed {name}: exit {code}, see {work}/logs/{name}.log")
    meta = {"corpus": {"rows": len(corpus.rows), "per_class": corpus.counts(), "packages": list(corpus.packages),
                       "words": text_corpus.WORDS, "changed": changed},
            "splits": splits, "seconds": {k: round(v, 1) for k, v in steps.items()}, "overrides": args.overrides,
            "cores": common.cores(), "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "python": platform.python_version(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    atomic.write_json(args.output, {"meta": meta, "models": rows, "runs": runs, "baselines": baselines,
                                    "skipped": skipped, "failed": failed})
    say(f"wrote {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
