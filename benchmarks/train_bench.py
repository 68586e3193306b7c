"""Data stall (step time with the real loader / step time on the same batches in memory) and the distributed
overhead of Horovod (two processes against one on the same cores; allreduce against memcpy bandwidth)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

from benchmarks.common import Result, check, cores, repeats, timing
from core.config import load_section
from training.config import TrainConfig
from training.wiring import make_optimizer
from training.models import build_model, default_optimizer, resolve_model_name
from training.petastorm_source import PetastormSource
from training.shards import EpochCounter, plan_shard

HERE = os.path.dirname(os.path.abspath(__file__))


def held_batches(dataset: str, n: int = 8):
    """(model, optimizer, the first ``n`` batches held in memory) of ``dataset``, on this machine's cores."""
    torch.set_num_threads(cores())
    _, model, optimizer, batches, source = _setup(dataset)
    try:
        return model, optimizer, [batch for _, batch in zip(range(n), batches())]
    finally:
        source.close()


def _setup(dataset: str):
    """The default model for the dataset and the run's loader (its default workers), as ``train`` sets them up."""
    config = load_section("train", TrainConfig)
    source = PetastormSource.open(dataset, config)
    split = source.splits["train"]
    name = resolve_model_name("auto", source.spec.kind)
    torch.manual_seed(0)
    model = build_model(name, dataset=source.spec, config=config)
    optimizer_name, lr, weight_decay = default_optimizer(name)
    optimizer = make_optimizer(optimizer_name, config, model, lr, weight_decay)
    plan = plan_shard(split.row_group_sizes, 0, 1)
    epochs = iter(range(10**6))

    def batches():
        return source.training_batches(plan, batch_size=config.batch_size, epoch=next(epochs),
                                       counter=EpochCounter(split, plan))
    return name, model, optimizer, batches, source


def _step(model, optimizer, batch) -> None:
    inputs, y, _ = batch
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(*inputs), y).backward()
    optimizer.step()


def stall_results(name: str, dataset: str) -> list[Result]:
    torch.set_num_threads(cores())
    model_name, model, optimizer, batches, source = _setup(dataset)
    held = list(batches())
    for batch in held[:3]:
        _step(model, optimizer, batch)  # warm-up
    timings: dict[str, list[float]] = {"loader": [], "memory": []}
    for label in ("loader", "memory") * repeats():  # alternated, so drift hits both alike
        start = time.perf_counter()
        for batch in (batches() if label == "loader" else held):
            _step(model, optimizer, batch)
        timings[label].append(time.perf_counter() - start)
    source.close()
    loader_s, memory_s = timing(timings["loader"]), timing(timings["memory"])
    stall = 1 - memory_s.median / loader_s.median
    return [Result(f"stall/{name}", f"{model_name}: step time with loader / in memory",
                   loader_s.median / memory_s.median, "x",
                   f"{len(held)} steps: {loader_s.text('.2f', ' s')} with the loader, {memory_s.text('.2f', ' s')} "
                   f"in memory; stall {max(stall, 0):.1%} of step time", "stall <= 5%", check(stall, "<=", 0.05))]


def distributed_results(horovodrun: str) -> list[Result]:
    worker = os.path.join(HERE, "dist_worker.py")
    n = cores()
    runs: dict[str, list[dict]] = {"one": [], "two": []}
    for _ in range(repeats()):  # alternated
        runs["one"].append(_run_worker([sys.executable, worker, "--threads", str(n)]))
        runs["two"].append(_run_worker([horovodrun, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, worker,
                                        "--threads", str(max(1, n // 2))]))
    one, two = ({key: timing([r[key] for r in runs[k]]) for key in runs[k][0]} for k in ("one", "two"))
    return [
        Result("distributed", "horovodrun -np 2 / one process, same cores",
               two["samples_per_s"].median / one["samples_per_s"].median, "",
               f"np 2: {two['samples_per_s'].text(unit=' samples/s')} ({max(1, n // 2)} threads each); "
               f"np 1: {one['samples_per_s'].text(unit=' samples/s')} ({n} threads)"),
        Result("distributed", "allreduce / memcpy bandwidth",
               two["allreduce_gb_s"].median / two["memcpy_gb_s"].median, "",
               f"allreduce {two['allreduce_gb_s'].text('.2f', ' GB/s')} over Gloo (2 ranks, 64 MB); memcpy "
               f"{two['memcpy_gb_s'].text('.2f', ' GB/s')}"),
    ]


def _run_worker(cmd: list[str]) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    line = next(text for text in done.stdout.splitlines() if "BENCH " in text)
    return json.loads(line.split("BENCH ", 1)[1])


def checkpoint_results(name: str, dataset: str, work: str) -> list[Result]:
    """What resume points cost: an epoch of the real loop with a resume point after every optimizer step against
    the same epoch with none (alternated, the median of three each; the epoch's own clock, so test evaluation and
    reports are not counted)."""
    from training import checkpoint
    from training.distributed import SingleProcess
    from training.wiring import fit

    def epoch_seconds(every: int, out: str) -> tuple[float, int]:
        config = load_section("train", TrainConfig, overrides=[
            "train.epochs=1", "train.progress_bar=never", "train.resume=never",
            f"train.checkpoint_every_steps={every}"])
        metrics = fit(config, data_url=dataset, output_dir=out, dist=SingleProcess()).metrics
        steps = -(-metrics["train_rows"] // config.batch_size)
        return metrics["history"][0]["seconds"], steps

    torch.set_num_threads(cores())
    timings: dict[int, list[float]] = {0: [], 1: []}
    for every in (0, 1) * repeats():
        took, steps = epoch_seconds(every, os.path.join(work, f"ckpt-{name}-{every}"))
        timings[every].append(took)
    none_t, each_t = timing(timings[0]), timing(timings[1])
    none, each = none_t.median, each_t.median
    point = checkpoint.latest_resume_point(os.path.join(work, f"ckpt-{name}-1"))
    size = os.path.getsize(point) if point else 0
    saves = max(1, steps - 1)
    return [Result(f"resilience/{name}", "epoch with a resume point every step / with none", each / none, "x",
                   f"{steps} steps: {each_t.text('.2f', ' s')} with {saves} resume points ({size / 1e6:.1f} MB each, "
                   f"{1000 * max(each - none, 0) / saves:.0f} ms per point), {none_t.text('.2f', ' s')} without")]


def digest_cost_results(name: str, dataset: str, work: str) -> list[Result]:
    """What the per-step digests (``training.digests``) cost a step: steps of the dataset's default model on batches
    in memory with and without recording each step's digest, alternated (the median of each); and the record alone,
    timed in a loop (a batch's ids hashed, one line written), against the step without it: the figure checked."""
    from types import SimpleNamespace

    from training.digests import StepDigests

    model, optimizer, held = held_batches(dataset)
    log = StepDigests(os.path.join(work, f"digests-{name}"), SimpleNamespace(rank=0, size=1))

    def steps(digests: bool) -> None:
        for i, batch in enumerate(held):
            _step(model, optimizer, batch)
            if digests:
                log.record(1, i + 1, batch[2])

    steps(True)  # warm-up
    timings: dict[bool, list[float]] = {False: [], True: []}
    for digests in (False, True) * repeats():  # alternated, so drift hits both alike
        start = time.perf_counter()
        steps(digests)
        timings[digests].append((time.perf_counter() - start) / len(held))
    ids, n = held[0][2], 20_000
    start = time.perf_counter()
    for i in range(n):
        log.record(2, i + 1, ids)
    per_record = (time.perf_counter() - start) / n
    log.close()
    without, with_ = (timing([1e3 * t for t in timings[d]]) for d in (False, True))  # ms per step
    ratio = per_record * 1e3 / without.median
    return [Result(f"resilience/{name}", "per-step digest / default model's step", ratio, "",
                   f"{per_record * 1e6:.1f} us per step (the {len(ids)} ids of a batch hashed, a line written); step "
                   f"{without.text('.1f', ' ms')} without digests, {with_.text('.1f', ' ms')} with (alternated)",
                   "<= 0.01", check(ratio, "<=", 0.01))]
