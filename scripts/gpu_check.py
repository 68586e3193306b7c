"""The GPU check: train the CNN (images) and the LSTM (texts) with every backend, tabulate, judge; then the
throughput part (scripts/gpu_check_throughput.py): how fast the loader feeds the GPU.

Run through scripts/gpu_check.sh (which first installs the carried wheels when petastorm/pyarrow do not
import); this file uses the standard library only and runs the training and the measurements in subprocesses
with its own interpreter, so it works with a plain python3.12 that has no pyspark.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

import gpu_check_throughput as throughput  # scripts/, next to this file
import gpu_check_throughput_report as throughput_report
from gpu_check_report import (
    collect,
    last_error,
    name,
    save_results,
    verdict,
    write_results,
)

REPO = Path(__file__).resolve().parent.parent
KINDS = {"images": "cnn", "texts": "lstm"}
BACKENDS = ("single", "torch", "horovod")
DEFAULT_EPOCHS = {"images": 10, "texts": 6}  # enough for 0.94 (CNN) and 1.00 (LSTM) on one GPU

PROBE = r"""
import json, platform
out = {"python": platform.python_version(), "gpus": 0}
try:
    import torch
    out.update(torch=torch.__version__, cuda=torch.version.cuda)
    if torch.cuda.is_available():
        out.update(gpus=torch.cuda.device_count(), gpu_name=torch.cuda.get_device_name(0))
except Exception as exc:
    out["torch_error"] = f"{type(exc).__name__}: {exc}"
try:
    from compat import petastorm as petastorm_compat
    petastorm_compat.install()  # before Petastorm's first import
except Exception as exc:
    out["compat_error"] = f"{type(exc).__name__}: {exc}"
for name in ("numpy", "pyarrow", "petastorm"):
    try:
        out[name] = __import__(name).__version__
    except Exception as exc:
        out[name + "_error"] = f"{type(exc).__name__}: {exc}"
try:
    import horovod, horovod.torch as hvd
    out["horovod"] = {"version": horovod.__version__, "nccl": bool(hvd.nccl_built()), "gloo": bool(hvd.gloo_built()),
                      "path": horovod.__file__}
except Exception as exc:
    out["horovod_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


class SetupError(Exception):
    """The check cannot start (missing dataset, no torch, bad flags): exit status 2, one line on stderr."""


def log(message: str) -> None:
    print(f"gpu-check: {message}", file=sys.stderr, flush=True)


def probe(env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SetupError(f"{sys.executable} cannot even probe torch: {last_error(done.stderr)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def prepend(env: dict, name: str, value: str) -> None:
    parts = [p for p in env.get(name, "").split(os.pathsep) if p]
    if value not in parts:
        env[name] = os.pathsep.join([value, *parts])


def run_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    prepend(env, "PYTHONPATH", str(REPO))
    return env


def ensure_horovod(args, env: dict, host: dict) -> tuple[dict | None, str | None]:
    """Horovod as the runs need it: with NCCL on a GPU host, Gloo otherwise. An installed one that fits is used;
    else scripts/build_horovod.sh builds one (from the carried sdist) and it goes into the check's site folder.
    Returns (what is used, None) or (None, why not)."""
    need = "nccl" if host["gpus"] else "gloo"
    have = host.get("horovod")
    if have and have[need]:
        return {**have, "source": "installed"}, None
    if args.no_build_horovod:
        return None, f"no Horovod with {need.upper()} ({host.get('horovod_error') or 'the installed one lacks it'})" \
                     " and --no-build-horovod"
    build_log = args.out / "horovod-build.log"
    benv = dict(env, BIGTRAIN_HOROVOD_GPU="1" if host["gpus"] else "0")
    sdist = args.horovod_sdist or next(iter(sorted((args.carry / "wheels").glob("horovod-0.28.1.tar.gz"))), None)
    if sdist:
        benv["HOROVOD_SDIST"] = str(Path(sdist).resolve())
    log(f"building Horovod with {need.upper()} (scripts/build_horovod.sh; log in {build_log})")
    start = time.monotonic()
    with build_log.open("w") as err:
        built = subprocess.run(["bash", str(REPO / "scripts" / "build_horovod.sh"), sys.executable,
                                str(args.horovod_wheels)], env=benv, stdout=subprocess.PIPE, stderr=err, text=True)
    if built.returncode != 0:
        return None, f"Horovod build failed: {last_error(build_log.read_text(errors='replace'))} (log: {build_log})"
    wheel = built.stdout.strip().splitlines()[-1] if built.stdout.strip() else ""
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                              "--upgrade", "--target", str(args.site), wheel], env=env, capture_output=True, text=True)
    if install.returncode != 0:
        return None, f"installing {wheel or '(no wheel path printed)'} failed: {last_error(install.stderr)}"
    prepend(env, "PYTHONPATH", str(args.site))
    prepend(env, "PATH", str(args.site / "bin"))
    again = probe(env).get("horovod")
    if not again or not again[need]:
        return None, f"the Horovod built from {wheel} has no {need.upper()} operations"
    log(f"Horovod from scripts/build_horovod.sh installed in {args.site} ({time.monotonic() - start:.0f}s): {wheel}")
    return {**again, "source": f"built: {wheel}", "build_seconds": round(time.monotonic() - start, 1)}, None


def command(backend: str, nproc: int, train_args: list[str], env: dict) -> list[str]:
    train = [sys.executable, str(REPO / "jobs" / "train.py"), "--backend", backend, *train_args]
    if backend == "single":
        return train
    if backend == "torch":  # torchrun, run by this interpreter
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                *train[1:]]
    runner = shutil.which("horovodrun", path=env.get("PATH"))
    launcher = [runner] if runner else [sys.executable, "-c",
                                        "from horovod.runner.launch import run_commandline; run_commandline()"]
    return [*launcher, "-np", str(nproc), "-H", f"localhost:{nproc}", *train]


def run_one(cmd: list[str], env: dict, log_path: Path, timeout: float) -> tuple[int | None, float]:
    """Runs cmd in its own process group (so a timeout ends the launcher and every rank it started);
    returns (exit status or None on timeout, wall seconds)."""
    start = time.monotonic()
    with log_path.open("w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            code = None
    return code, round(time.monotonic() - start, 1)


DESCRIPTION = """\
Train the CNN (images) and the LSTM (texts) with --backend single (python), --backend torch (torchrun
--standalone, one process per GPU) and --backend horovod (horovodrun -np N -H localhost:N; NCCL on GPUs, with
a Horovod built here by scripts/build_horovod.sh from the carried sdist when the installed one lacks NCCL),
each run with --no-progress --no-resume, a fixed number of epochs and, on GPUs, --mixed-precision; print a
table (GPUs, test accuracy, mean data stall, samples per second, wall seconds) and judge it. On a host without
a GPU the GPU rows are skipped (it says so) and the same runs go over Gloo on the CPU.
"""

EPILOG = """\
Outputs in --out: <kind>-<backend>/ (each run's --output: metrics.json, checkpoint.pt, ...), <kind>-<backend>.log,
results.json (environment, every row, the verdict), table.md (the table in Markdown, with date, host, GPU, torch),
horovod-build.log when Horovod was built; from the throughput part throughput.json (every figure, the ratios, what
crashed), throughput.md (its tables), throughput-<part>.log and throughput-train-b<B>/ (each training's output).
Exit status: 0 all runs passed, 1 a run failed or was less accurate than its kind's single-process run by more than
--tolerance, or a throughput part crashed, 2 a usage or set-up error.

On a lent GPU machine: first `make gpu-check-data` here (about 50 MiB in .cache/gpu_check), then the device tool's
run (it starts in the repository root; what is written under $OUT comes back):
  run(command="set -o pipefail; PYTHONUNBUFFERED=1 bash scripts/gpu_check.sh --run-timeout 150 --export $OUT
               2>&1 | tee $OUT/gpu_check.log", carry=[".cache/gpu_check"], timeout_s=600)
(--export: the device tool brings back at most 8 files from $OUT, so the full outputs stay in runs/gpu_check
there and only results.json, table.md, throughput.json, throughput.md, runs.tar.gz and the log come back.)
About 5 minutes for the correctness rows: the wheels install (~20 s), Horovod builds (~1.5 min on 16 cores; cached
in .cache/horovod-wheels while the machine stays warm), then six short trainings; the throughput part adds 2 to 3
minutes (two trainings of --throughput-epochs epochs, the loader at each worker count). With little device time
left, run the two parts in two calls (--no-throughput, then --only-throughput). Judge again without a GPU (on a
writable copy: the returned files are read-only):
  mkdir -p runs/gpu_check_gpu && cp <files_at>/results.json runs/gpu_check_gpu/ &&
  scripts/gpu_check.sh --out runs/gpu_check_gpu --judge-only --tolerance 0.03
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/gpu_check.sh", description=DESCRIPTION + "\n\n" + throughput.DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--out", type=Path, default=REPO / "runs" / "gpu_check", metavar="DIR", help="default: runs/gpu_check")
    add("--carry", type=Path, default=REPO / ".cache" / "gpu_check", metavar="DIR",
        help="what make gpu-check-data wrote (data/, wheels/); default .cache/gpu_check (set "
             "GPU_CHECK_CARRY instead: the .sh installs the wheels from there)")
    add("--images-data", type=Path, metavar="DIR", help="default: CARRY/data/images")
    add("--texts-data", type=Path, metavar="DIR", help="default: CARRY/data/texts")
    add("--kinds", default="images,texts", help="comma-separated subset of images,texts")
    add("--backends", default=",".join(BACKENDS), help="comma-separated subset of single,torch,horovod")
    add("--nproc", type=int, metavar="N", help="processes for torchrun and horovodrun (default: the GPUs; 2 on CPU)")
    add("--epochs", type=int, metavar="N", help="default: 10 for images, 6 for texts")
    add("--global-batch", type=int, default=64, metavar="B",
        help="rows per optimizer step over all processes (default 64): a run of N processes trains with batches "
             "of B/N per process and an unscaled learning rate, so every row does the same optimisation and their "
             "accuracies can be compared (with the lr scaled by N, N ranks take 1/N of the steps at N times the "
             "rate, and 10 epochs are not enough for them to catch up)")
    add("--tolerance", type=float, default=0.05, metavar="X",
        help="largest accepted drop in test accuracy below the single-process run (default 0.05)")
    add("--run-timeout", type=float, default=600, metavar="S", help="seconds before a run is ended (default 600)")
    add("--train-arg", action="append", default=[], metavar="ARG",
        help="extra argument for every jobs/train.py, repeatable (e.g. --train-arg=--batch-size=256)")
    add("--horovod-wheels", type=Path, default=REPO / ".cache" / "horovod-wheels", metavar="DIR",
        help="build_horovod.sh's wheel cache (default .cache/horovod-wheels)")
    add("--horovod-sdist", type=Path, metavar="FILE", help="default: CARRY/wheels/horovod-0.28.1.tar.gz")
    add("--no-build-horovod", action="store_true", help="use the installed Horovod or fail the Horovod rows")
    add("--site", type=Path, default=Path(os.environ.get("BIGTRAIN_SITE", "/tmp/bigtrain-site")), metavar="DIR",
        help="where a built Horovod is installed (default $BIGTRAIN_SITE or /tmp/bigtrain-site)")
    add("--export", type=Path, metavar="DIR",
        help="also copy results.json and table.md there (throughput.json and throughput.md from the throughput "
             "part), with runs.tar.gz (each run's log, metrics.json and evaluation.json, the Horovod build log): "
             "at most five files, for the device tool's $OUT")
    add("--judge-only", action="store_true",
        help="train nothing: judge the rows of OUT/results.json again (e.g. with another --tolerance)")
    throughput.add_arguments(parser)
    args = parser.parse_args(argv)
    args.kinds = pick(parser, "--kinds", args.kinds, KINDS)
    args.backends = pick(parser, "--backends", args.backends, BACKENDS)
    args.images_data = (args.images_data or args.carry / "data" / "images").resolve()
    args.texts_data = (args.texts_data or args.carry / "data" / "texts").resolve()
    if args.nproc is not None and args.nproc < 1 or args.epochs is not None and args.epochs < 1:
        parser.error("--nproc and --epochs must be at least 1")
    if args.global_batch < 1:
        parser.error("--global-batch must be at least 1")
    throughput.check_arguments(parser, args)
    return args


def pick(parser, flag: str, value: str, allowed) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in chosen if v not in allowed]
    if bad or not chosen:
        parser.error(f"{flag} {value!r}: choose from {', '.join(allowed)}")
    return chosen


def environment(host: dict) -> dict:
    return {"host": socket.gethostname(), "platform": platform.platform(), "python": host["python"],
            "torch": host.get("torch"), "cuda": host.get("cuda"), "gpus": host["gpus"],
            "gpu_name": host.get("gpu_name"), "numpy": host.get("numpy"), "pyarrow": host.get("pyarrow"),
            "petastorm": host.get("petastorm"), "cpus": os.cpu_count()}


def train_rows(args, host: dict, env: dict, nproc: int, horovod: tuple[dict | None, str | None]) -> list[dict]:
    rows = []
    plan = [(kind, backend) for kind in args.kinds for backend in args.backends]
    for index, (kind, backend) in enumerate(plan, 1):
        processes = 1 if backend == "single" else nproc
        row = {"kind": kind, "model": KINDS[kind], "backend": backend, "processes": processes, "gpus": 0,
               "batch_per_process": args.global_batch // processes}
        if backend == "horovod" and horovod[0] is None:
            rows.append({**row, "status": "failed", "reason": f"not run: {horovod[1]}"})
            log(f"[{index}/{len(plan)}] {name(row)}: not run: {horovod[1]}")
            continue
        output = args.out / f"{kind}-{backend}"
        shutil.rmtree(output, ignore_errors=True)  # a failed run must never leave an older metrics.json behind
        epochs = args.epochs or DEFAULT_EPOCHS[kind]
        data = args.images_data if kind == "images" else args.texts_data
        # The same global batch and learning rate for every row: the same optimisation, comparable accuracies.
        same_step = ["--batch-size", str(args.global_batch // processes), "--set", "train.scale_lr=false"]
        # every epoch run (no early stopping): the rates and accuracies of each row cover the same epochs
        train_args = ["--data", str(data), "--output", str(output), "--epochs", str(epochs), "--no-progress",
                      "--no-resume", "--early-stopping-patience", "0", "--model", KINDS[kind], *same_step, *(["--mixed-precision"] if host["gpus"] else []), *args.train_arg]
        log_path = args.out / f"{kind}-{backend}.log"
        log(f"[{index}/{len(plan)}] {name(row)}, {epochs} epoch{'s' if epochs != 1 else ''} (log: {log_path})")
        cmd = command(backend, processes, train_args, env)
        code, wall = run_one(cmd, env, log_path, args.run_timeout)
        row = collect({**row, "wall_s": wall, "command": " ".join(cmd), "log": str(log_path), "output": str(output)},
                      output, code, log_path, host)
        log(f"[{index}/{len(plan)}] {name(row)}: " + (f"test accuracy {row['test_accuracy']:.4f} in {wall:.0f}s"
                                                      if row["status"] == "ok" else f"FAILED: {row['reason']}"))
        rows.append(row)
    return rows


def export(args, file_names: list[str]) -> None:
    """--export: the files worth taking home, those this run wrote of results.json, table.md, throughput.json and
    throughput.md, with runs.tar.gz (the device tool brings back at most 8 files from $OUT)."""
    if args.export is None:
        return
    args.export.mkdir(parents=True, exist_ok=True)
    # the throughput part's files are missing when it crashed itself
    file_names = [file_name for file_name in file_names if (args.out / file_name).exists()]
    for file_name in file_names:
        shutil.copy(args.out / file_name, args.export / file_name)
    with tarfile.open(args.export / "runs.tar.gz", "w:gz") as archive:
        for path in sorted(args.out.glob("*.log")) + sorted(args.out.glob("*/metrics.json")) + \
                sorted(args.out.glob("*/evaluation.json")):
            archive.add(path, arcname=str(path.relative_to(args.out)))
    log(f"exported {', '.join(file_names)} and runs.tar.gz to {args.export}")


def judge_again(args) -> int:
    """--judge-only: the verdict over the rows of an earlier run's results.json, with this run's --tolerance."""
    saved = args.out / "results.json"
    if not saved.exists():
        raise SetupError(f"--judge-only: no {saved} (run the check first)")
    results = json.loads(saved.read_text())
    crashed = (results.get("throughput") or {}).get("problems", [])  # a crash of the throughput part stays a problem
    results.update(tolerance=args.tolerance, problems=verdict(results["rows"], args.tolerance) + crashed)
    results["verdict"] = "FAILED" if results["problems"] else "passed"
    write_results(args.out, results)
    export(args, ["results.json", "table.md"])
    return 1 if results["problems"] else 0


def start_up(args) -> tuple[dict, dict, int]:
    """(the environment for the runs, what the probe found, processes per launcher), or a SetupError."""
    for kind in [] if args.only_throughput else args.kinds:
        data = args.images_data if kind == "images" else args.texts_data
        if not data.is_dir():
            raise SetupError(f"the {kind} dataset {data} is not a folder: run `make gpu-check-data` (on a "
                             f"machine with Java, Spark and network) and carry {args.carry}, or pass --{kind}-data")
    if not args.no_throughput and not args.throughput_data.is_dir():
        raise SetupError(f"the throughput part's image set {args.throughput_data} is not a folder: run `make "
                         f"gpu-check-data` (it writes CARRY/data/images-png) and carry {args.carry}, pass "
                         "--throughput-data, or skip the part with --no-throughput")
    env = run_env()
    host = probe(env)
    if "torch_error" in host:
        raise SetupError(f"{sys.executable} cannot import torch: {host['torch_error']}")
    if host["gpus"]:
        log(f"{host['gpus']} GPU(s): {host['gpu_name']}; torch {host['torch']} (CUDA {host['cuda']}), "
            f"Python {host['python']}")
    elif args.only_throughput:
        log(f"no GPU: the throughput part runs on the CPU, torch {host['torch']}, Python {host['python']}")
    else:
        log(f"no GPU: the GPU rows are skipped; running the CPU rows (single, torchrun and horovodrun over Gloo), "
            f"torch {host['torch']}, Python {host['python']}")
    nproc = args.nproc or host["gpus"] or 2
    if host["gpus"] and nproc > host["gpus"]:
        raise SetupError(f"--nproc {nproc}: this host has {host['gpus']} GPU(s), one process per GPU")
    if args.global_batch % nproc:
        raise SetupError(f"--global-batch {args.global_batch} does not split into {nproc} equal per-process "
                         "batches: pass a multiple of the process count")
    return env, host, nproc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.judge_only:
        return judge_again(args)
    env, host, nproc = start_up(args)
    results, written = None, []
    if not args.only_throughput:
        results = correctness(args, env, host, nproc)
        written += ["results.json", "table.md"]
    problems = results["problems"] if results else []
    if not args.no_throughput:
        problems = problems + measure_throughput(args, env, host, results)
        written += ["throughput.json", "throughput.md"]
    export(args, written)
    return 1 if problems else 0


def correctness(args, env: dict, host: dict, nproc: int) -> dict:
    """The correctness rows, judged, written to results.json and table.md and printed."""
    horovod = ensure_horovod(args, env, host) if "horovod" in args.backends else ({"selected": False}, None)
    start = time.monotonic()
    rows = train_rows(args, host, env, nproc, horovod)
    problems = verdict(rows, args.tolerance)
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "environment": environment(host),
               "horovod": horovod[0] or {"error": horovod[1]}, "epochs": args.epochs or DEFAULT_EPOCHS,
               "nproc": nproc, "global_batch": args.global_batch, "tolerance": args.tolerance, "seconds": round(time.monotonic() - start, 1),
               "rows": rows, "problems": problems, "verdict": "FAILED" if problems else "passed"}
    write_results(args.out, results)
    return results


def measure_throughput(args, env: dict, host: dict, results: dict | None) -> list[str]:
    """The throughput part, written to throughput.json and throughput.md and printed; returns its crashes as
    problems, which also go into results.json's verdict when the correctness rows ran."""
    log(f"throughput part on {args.throughput_data} (logs: {args.out}/throughput-*.log)")
    for file_name in ("throughput.json", "throughput.md"):  # never exported from an earlier run
        (args.out / file_name).unlink(missing_ok=True)
    start = time.monotonic()
    try:
        figures = throughput.measure(args, env, run_one)
        figures.update(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), environment=environment(host),
                       seconds=round(time.monotonic() - start, 1))
        throughput_report.write(args.out, figures, host["gpus"])
        problems, status = throughput_report.problems(figures), figures["status"]
    except Exception as exc:  # noqa: BLE001 - say that the throughput part crashed, not a training row
        problems, status = [f"throughput part: crashed: {type(exc).__name__}: {exc}"], "failed"
        print(f"\ngpu-check: FAILED: {problems[0]}")
    if results is not None:
        results["throughput"] = {"status": status, "file": "throughput.json", "problems": problems}
        if problems:
            results["problems"] = results["problems"] + problems
            results["verdict"] = "FAILED"
        save_results(args.out, results)
    return problems


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
