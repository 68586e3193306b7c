"""scripts/gpu_check.sh end to end on this CPU host: the real script, the real jobs/train.py under python,
torchrun and horovodrun (Gloo), on the small datasets the Spark jobs write in the fixtures, 1 epoch each; then its
throughput part on the same image set, with small batches and few steps and passes."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPO, subprocess_env

pytestmark = [pytest.mark.spark, pytest.mark.horovod, pytest.mark.slow]

SCRIPT = REPO / "scripts" / "gpu_check.sh"
RUNS = [(kind, model, backend) for kind, model in (("images", "cnn"), ("texts", "lstm"))
        for backend in ("single", "torch", "horovod")]
BATCHES = (16, 32)  # the fixture's image set has about 100 train rows: a few steps per epoch at each
# The throughput part kept cheap on CPU: two epochs per training (the first is not counted), two timed passes.
THROUGHPUT = ("--throughput-batches", ",".join(map(str, BATCHES)), "--throughput-epochs", "2",
              "--throughput-passes", "2", "--throughput-steps", "2")


def gpu_check(*args: str, tmp_path: Path, **env_vars: str) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env.update(GPU_CHECK_PYTHON=sys.executable, GPU_CHECK_CARRY=str(tmp_path / "no-carry"),
               CUDA_VISIBLE_DEVICES="", **env_vars)  # CUDA_VISIBLE_DEVICES: the CPU rows on any host
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def cpu_check(image_dataset, text_dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu-check")
    out = tmp / "out"
    # --tolerance 1: one epoch on about 100 rows is noise (the text LSTM's test accuracy was seen at 0.46 in one
    # process and 0.31 in two); the verdict itself is tested by --judge-only below.
    done = gpu_check("--out", str(out), "--images-data", str(image_dataset), "--texts-data", str(text_dataset),
                     "--epochs", "1", "--nproc", "2", "--export", str(tmp / "export"), "--tolerance", "1",
                     "--throughput-data", str(image_dataset), *THROUGHPUT, tmp_path=tmp)
    return done, out, {"images": image_dataset, "texts": text_dataset}


def test_cpu_rows_run_and_pass(cpu_check):
    done, out, datasets = cpu_check
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no GPU: the GPU rows are skipped" in done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["verdict"] == "passed" and results["problems"] == []
    assert results["environment"]["gpus"] == 0 and results["nproc"] == 2
    assert [(r["kind"], r["model"], r["backend"]) for r in results["rows"]] == RUNS
    table = done.stdout.splitlines()
    for row in results["rows"]:
        metrics = json.loads((out / f"{row['kind']}-{row['backend']}" / "metrics.json").read_text())
        test_split = json.loads((datasets[row["kind"]] / "metadata.json").read_text())["splits"]["test"]
        assert row["status"] == "ok" and row["reason"] is None
        assert row["test_accuracy"] == metrics["test_accuracy"] and 0.0 <= row["test_accuracy"] <= 1.0
        assert row["test_rows"] == metrics["test_rows"] == test_split["rows"] > 0
        assert row["world_size"] == metrics["world_size"] == (1 if row["backend"] == "single" else 2)
        assert metrics["backend"] == row["backend"] and row["gpus"] == 0 and row["epochs"] == 1
        assert row["samples_per_second"] > 0 and 0.0 <= row["data_stall"] <= 1.0
        line = [cells for cells in (line.split() for line in table)
                if cells[:2] == [f"{row['kind']}/{row['model']}", row["backend"]]]
        assert len(line) == 1 and f"{row['test_accuracy']:.4f}" in line[0] and line[0][-1] == "ok", table
    markdown = (out / "table.md").read_text()
    assert "**passed**" in markdown and markdown.count("| ok |") == len(RUNS)


def test_export_holds_the_results_and_every_runs_log_and_metrics(cpu_check):
    _, out, _ = cpu_check
    export = out.parent / "export"
    assert sorted(p.name for p in export.iterdir()) == ["results.json", "runs.tar.gz", "table.md", "throughput.json",
                                                        "throughput.md"]
    assert json.loads((export / "results.json").read_text()) == json.loads((out / "results.json").read_text())
    with tarfile.open(export / "runs.tar.gz") as archive:
        names = set(archive.getnames())
        for kind, _, backend in RUNS:
            assert {f"{kind}-{backend}.log", f"{kind}-{backend}/metrics.json"} <= names
            metrics = json.load(archive.extractfile(f"{kind}-{backend}/metrics.json"))
            assert metrics == json.loads((out / f"{kind}-{backend}" / "metrics.json").read_text())
        parts = ("step", "loader", "decode", *(f"train-b{batch}" for batch in BATCHES))
        assert {f"throughput-{part}.log" for part in parts} <= names
        assert {f"throughput-train-b{batch}/metrics.json" for batch in BATCHES} <= names
    assert json.loads((export / "throughput.json").read_text()) == json.loads((out / "throughput.json").read_text())


def test_accuracy_below_the_single_run_fails_the_verdict(cpu_check, tmp_path):
    """--judge-only re-judges the saved rows; a tolerance of -2 is an accuracy no run can reach."""
    _, out, _ = cpu_check
    (tmp_path / "out").mkdir()
    shutil.copy(out / "results.json", tmp_path / "out" / "results.json")
    done = gpu_check("--out", str(tmp_path / "out"), "--judge-only", "--tolerance", "-2", tmp_path=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["verdict"] == "FAILED" and len(results["problems"]) == 4  # every non-single row, not single
    for kind, model, backend in RUNS:
        failed = f"FAIL {kind}/{model} {backend} ("
        assert (failed in done.stdout) == (backend != "single"), done.stdout
    assert "below the single-process run's" in done.stdout


def test_a_failed_run_fails_the_check_and_names_the_row(tmp_path):
    not_a_dataset = tmp_path / "not-a-dataset"
    not_a_dataset.mkdir()
    done = gpu_check("--out", str(tmp_path / "out"), "--kinds", "texts", "--backends", "single", "--texts-data",
                     str(not_a_dataset), "--epochs", "1", "--no-throughput", tmp_path=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    problem = next(line for line in done.stdout.splitlines() if line.strip().startswith("FAIL "))
    assert problem.strip().startswith("FAIL texts/lstm single (python, 1 process): failed: exit ")
    assert str(not_a_dataset) in problem, problem
    row, = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert row["status"] == "failed" and row.get("test_accuracy") is None


def test_a_missing_dataset_is_a_usage_error_naming_it(tmp_path):
    done = gpu_check("--out", str(tmp_path / "out"), "--images-data", str(tmp_path / "absent"), tmp_path=tmp_path)
    assert done.returncode == 2
    assert f"the images dataset {tmp_path / 'absent'} is not a folder" in done.stderr
    assert "make gpu-check-data" in done.stderr


def test_a_failed_horovod_build_fails_the_horovod_rows_with_its_reason(tmp_path):
    """No usable Horovod (an importable stand-in that refuses to load hides the venv's), and a build that cannot
    start: the Horovod row fails naming build_horovod.sh's error line, without a training run."""
    hidden = tmp_path / "hide-horovod" / "horovod"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ImportError("hidden by the test")\n')
    missing_sdist = tmp_path / "horovod-0.28.1.tar.gz"
    done = gpu_check("--out", str(tmp_path / "out"), "--kinds", "texts", "--backends", "horovod",
                     "--horovod-wheels", str(tmp_path / "wheels"), "--horovod-sdist", str(missing_sdist),
                     "--texts-data", str(tmp_path), "--no-throughput", tmp_path=tmp_path, PYTHONPATH=str(hidden.parent),
                     BIGTRAIN_SITE=str(tmp_path / "site"))
    assert done.returncode == 1, done.stdout + done.stderr
    problem = next(line.strip() for line in done.stdout.splitlines() if line.strip().startswith("FAIL "))
    assert problem.startswith("FAIL texts/lstm horovod (horovodrun, 2 processes): failed: not run: Horovod build "
                              f"failed: error: HOROVOD_SDIST={missing_sdist} is not a file"), problem
    row, = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert row["status"] == "failed" and "wall_s" not in row  # nothing was trained
    assert not (tmp_path / "out" / "texts-horovod").exists()


def printed_tables(stdout: str) -> tuple[dict[tuple[str, str], list[str]], dict[str, list[str]]]:
    """The throughput part's two printed tables: rates by (part, setting), ratios by name; cells are separated by
    two or more spaces and never empty ("-")."""
    lines = stdout[stdout.index("gpu-check throughput ("):].splitlines()[1:]
    rates_end = lines.index("")
    rates = [re.split(r"\s{2,}", line.strip()) for line in lines[1:rates_end]]
    ratio_lines = lines[rates_end + 2:lines.index("", rates_end + 1)]
    ratios = [re.split(r"\s{2,}", line.strip()) for line in ratio_lines]
    return {(r[0], r[1]): r[2:] for r in rates}, {r[0]: r[1:] for r in ratios}


def rate(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_throughput_part_prints_every_rate_and_the_ratios_of_the_printed_rates(cpu_check):
    done, out, datasets = cpu_check
    results = json.loads((out / "throughput.json").read_text())
    assert results["status"] == "ok" and results["errors"] == [], results["errors"]
    assert json.loads((out / "results.json").read_text())["throughput"]["status"] == "ok"
    rates, ratios = printed_tables(done.stdout)
    cores = results["cores"]
    workers = [2**i for i in range(cores.bit_length()) if 2**i < cores] + [cores]  # 1, 2, 4, ... then every core

    def everyone(count: int) -> str:
        return " (all cores)" if count == cores else ""
    expected = [("step alone", f"batch {b}, float32, cpu, synthetic uint8") for b in BATCHES]
    expected += [("loader alone", f"batch {BATCHES[0]}, {w} worker{'s' if w > 1 else ''}{everyone(w)}")
                 for w in workers]
    expected += [("decode ceiling", f"png, {p} process{'es' if p > 1 else ''}{everyone(p)}")
                 for p in sorted({1, cores})]
    expected += [("training", f"batch {b}, float32, cpu, epoch 2") for b in BATCHES]
    assert list(rates) == expected, list(rates)
    assert all(rate(cells[0]) > 0 for cells in rates.values()), rates
    for batch, row in zip(BATCHES, results["training"]):
        stall, ledger = rates[("training", f"batch {batch}, float32, cpu, epoch 2")][2:]
        metrics = json.loads((out / f"throughput-train-b{batch}" / "metrics.json").read_text())
        assert row["batch"] == batch and row["epochs"] == [2] and metrics["epochs_completed"] == 2
        assert row["images_per_s"] == metrics["history"][1]["samples_per_second"]
        assert stall == f"{100 * metrics['history'][1]['data_stall']:.1f}%"
        assert ledger == "- (no ledger)" or "bound " in ledger, ledger  # with or without a stage ledger
    loader = rate(rates[("loader alone", f"batch {BATCHES[0]}, {cores} worker{'s' if cores > 1 else ''}"
                         f"{everyone(cores)}")][0])
    decode = rate(rates[("decode ceiling", f"png, {cores} process{'es' if cores > 1 else ''}{everyone(cores)}")][0])
    for batch in BATCHES:
        trained = rate(rates[("training", f"batch {batch}, float32, cpu, epoch 2")][0])
        step = rate(rates[("step alone", f"batch {batch}, float32, cpu, synthetic uint8")][0])
        value, source, target, result = ratios[f"training b{batch} / min(step b{batch}, loader all cores)"]
        assert abs(float(value) - trained / min(step, loader)) <= 0.006 + 0.01 * float(value), (value, source)
        assert target == ">= 0.8" and result == ("met" if float(value) >= 0.8 else "missed")
        value, source, target, result = ratios[f"data stall, training b{batch}"]
        assert value == rates[("training", f"batch {batch}, float32, cpu, epoch 2")][2]
        assert (target, result) == ("-", "-")  # the stall targets are set at batch 256 and 1024 only
    value, source, target, result = ratios["loader all cores / decode ceiling all cores"]
    assert abs(float(value) - loader / decode) <= 0.006 + 0.01 * float(value) and target == ">= 0.75"
    assert result == ("met" if float(value) >= 0.75 else "missed")
    markdown = (out / "throughput.md").read_text()
    assert "**ok**" in markdown and markdown.count("| training | batch ") == len(BATCHES)


def test_a_crashed_throughput_part_fails_the_check_and_names_the_part(tmp_path):
    """--only-throughput on a folder that is no dataset: every part crashes, each is named with its error line and
    log, and the check exits 1 (the targets alone never fail it)."""
    not_a_dataset = tmp_path / "not-a-dataset"
    not_a_dataset.mkdir()
    done = gpu_check("--out", str(tmp_path / "out"), "--only-throughput", "--throughput-data", str(not_a_dataset),
                     "--throughput-batches", "8", "--throughput-epochs", "1", tmp_path=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "gpu-check: FAILED: the throughput part crashed (4 part(s)):" in done.stdout
    failed = [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("FAIL throughput ")]
    assert [line.split(":")[0] for line in failed] == [f"FAIL throughput {part}" for part in
                                                        ("step", "loader", "decode", "train-b8")]
    for line in failed:
        assert ": exit " in line and f"(log: {tmp_path / 'out'}/throughput-" in line, line
    assert str(not_a_dataset) in failed[-1], failed[-1]
    results = json.loads((tmp_path / "out" / "throughput.json").read_text())
    assert results["status"] == "failed" and len(results["errors"]) == 4
    assert not (tmp_path / "out" / "results.json").exists()  # --only-throughput: no correctness rows
    assert all(r["value"] is None for r in results["ratios"])
    assert "not measured" in done.stdout


def test_a_missing_throughput_set_is_a_usage_error_naming_it(tmp_path):
    done = gpu_check("--out", str(tmp_path / "out"), "--only-throughput", "--throughput-data",
                     str(tmp_path / "absent"), tmp_path=tmp_path)
    assert done.returncode == 2
    assert f"the throughput part's image set {tmp_path / 'absent'} is not a folder" in done.stderr
    assert "--no-throughput" in done.stderr


def test_the_ledger_gives_rank_0s_stall_and_the_bounding_stage_and_its_absence_is_no_error(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from gpu_check_throughput import ledger_summary
    from gpu_check_throughput_report import ledger_text

    def epoch(stall0: float, bound: str) -> dict:
        ranks = [{"rank": 1, "data_stall": 0.5, "trainer_s": {"wait": 9.0}, "gpu_busy": None},
                 {"rank": 0, "data_stall": stall0, "trainer_s": {"wait": 1.0, "compute": 2.0}, "gpu_busy": 0.5}]
        return {"samples_per_second": 10.0, "data_stall": 0.3, "ledger": {"ranks": ranks, "slowest_rank": 1,
                                                                          "bound": bound}}

    summary = ledger_summary([epoch(0.1, "decode"), epoch(0.2, "decode"), epoch(0.3, "handover")])
    assert summary["rank0_data_stall"] == pytest.approx(0.2) and summary["bound"] == "decode"
    assert summary["bounds"] == {"decode": 2, "handover": 1} and summary["slowest_ranks"] == [1]
    assert summary["rank0_trainer_s"] == {"wait": 3.0, "compute": 6.0}
    assert ledger_text(summary) == "stall 20.0%, bound decode, GPU busy 50%"
    assert ledger_summary([{"samples_per_second": 10.0}]) is None and ledger_text(None) == "- (no ledger)"
