"""Feeding the step: does training run at the loader's speed, what does the stage ledger cost, how long does an
epoch's first batch take, and does a small split get slower with more workers?

Without a GPU the training step here is a "null model" whose step costs almost nothing (one parameter, logits that
ignore the pixels): training with it can only be as fast as the loader and the trainer's own work per step allow,
so its rate against the loader alone, in the same run, on the same workers, is the share of the loader's speed the
trainer keeps (the issue's target: 0.85). A GPU host measures the real thing (scripts/gpu_check.sh).
"""
from __future__ import annotations

import itertools
import os
import time

import torch
from torch import nn

from benchmarks.common import Result, check, cores, rate, repeats, seconds, timing
from benchmarks.loader import BATCH, epoch_runner, open_source
from core.config import load_section
from training.config import TrainConfig
from training.ledger import StageClock
from training.shards import EpochCounter, plan_shard
from training.watchdog import Heartbeat

EPOCHS_PER_ROUND = 5  # training epochs timed per round (after the round's first, which starts the workers)
FEED_BATCH = 256      # the GPU check's batch: a step's fixed host work is spread over as many rows as there


class NullModel(nn.Module):
    """Logits from one parameter vector: the step costs a few microseconds whatever the batch holds."""

    def __init__(self, classes: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(classes))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(len(inputs[0]), -1)


def null_model(dataset, model_config) -> nn.Module:
    """``train.model: benchmarks.feeding:null_model``."""
    return NullModel(len(dataset.classes))


def _train_rate(dataset: str, workers: int, out: str, batch: int) -> float:
    """Rows/s of the null model's training epochs after the first (each epoch's own train time, as
    ``samples_per_second`` reports it: from the epoch's start, its first batch included, to its last step)."""
    from training.distributed import SingleProcess
    from training.wiring import fit

    config = load_section("train", TrainConfig, overrides=[
        "train.model=benchmarks.feeding:null_model", f"train.epochs={1 + EPOCHS_PER_ROUND}",
        f"train.batch_size={batch}", f"train.loader_workers={workers}", "train.seed=1", "train.progress_bar=never",
        "train.resume=never", "train.early_stopping_patience=0", "train.keep_best=false"])
    # one compute thread: the null model needs none, and the cores are the loader workers' (as on a GPU host)
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        history = fit(config, data_url=dataset, output_dir=out, dist=SingleProcess("cpu")).metrics["history"][1:]
    finally:
        if saved is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    rows = sum(r["train_rows"] + r["padding_rows"] for r in history)
    return rows / sum((r["train_rows"] + r["padding_rows"]) / r["samples_per_second"] for r in history)


def feeding_results(name: str, dataset: str, work: str, workers: int, batch: int = FEED_BATCH,
                    target: float | None = 0.85) -> list[Result]:
    """Null-model training against the loader alone, alternated round by round, same workers and batch size.
    ``target`` None: reported only (token ids load at a million rows a second and more here, faster than any step
    of PyTorch's, whose autograd and optimizer calls alone cost a null model a few hundred microseconds)."""
    torch.set_num_threads(1)  # the null model needs none; the cores are the workers'
    source = open_source(dataset, workers)
    loader_rates, train_rates = [], []
    try:
        run = epoch_runner(source, batch_size=batch)
        run()  # start the pool
        for round_ in range(repeats()):
            loader_rates.append(rate(run, runs=EPOCHS_PER_ROUND, warmup=False).median)
            train_rates.append(_train_rate(dataset, workers, os.path.join(work, f"feeding-{name}-{round_}"), batch))
    finally:
        source.close()
    loader, trained = timing(loader_rates), timing(train_rates)
    ratio = trained.median / loader.median
    return [Result(f"feeding/{name}", "null-model training / loader alone, same workers", ratio, "",
                   f"training {trained.text()}, loader alone {loader.text()}, {workers} workers, batch {batch}",
                   f">= {target}" if target else "", check(ratio, ">=", target) if target else None)]


def ledger_cost_results(dataset: str) -> list[Result]:
    """What keeping the ledger costs a step: the training thread's stage marks and heartbeat updates of one step,
    timed in a loop, against one step of the dataset's default model on a batch in memory."""
    from benchmarks.train_bench import _step, held_batches

    model, optimizer, held = held_batches(dataset)
    step = seconds(lambda: [_step(model, optimizer, b) for b in held]).median / len(held)
    clock, beat, n = StageClock(), Heartbeat(), 20_000

    def bookkeeping() -> None:  # what training/epoch.py does per step for the ledger and the watchdog
        for i in range(n):
            clock.mark("wait")
            beat.set("compute", i)
            clock.mark("copy")
            beat.set("backward")
            clock.mark("compute")
            beat.set("collective")
            clock.mark("collective")
            beat.set("step")
            beat.set("loading", i + 1)
            clock.mark("other")
    per_step = seconds(bookkeeping).median / n
    ratio = per_step / step
    return [Result("feeding/ledger", "ledger bookkeeping per step / default model's step", ratio, "",
                   f"{per_step * 1e6:.1f} us per step; step {step * 1e3:.1f} ms (batch of the train config)",
                   "<= 0.01", check(ratio, "<=", 0.01))]


def scaling_results(name: str, dataset: str) -> list[Result]:
    """The loader alone at 1 worker, at every core, and at four times the cores (more workers than the split has
    chunks for are not started: the figures say how many were), and the time to an epoch's first batch with the
    pool running."""
    rates = {}
    for workers in sorted({1, cores(), 4 * cores()}):
        source = open_source(dataset, workers)
        try:
            rates[workers] = (rate(epoch_runner(source)), source.loader.active_workers)
        finally:
            source.close()
    one = rates[1][0].median
    results = [Result(f"feeding/{name}", f"loader at {w} workers / at 1 worker", r.median / one, "",
                      f"{r.text()} ({used} processes started); 1 worker {rates[1][0].text()}")
               for w, (r, used) in rates.items() if w != 1]
    source = open_source(dataset, cores())
    split = source.splits["train"]
    plan = plan_shard(split.row_group_sizes, 0, 1)
    epochs = itertools.count()
    firsts: list[float] = []

    def epoch() -> int:
        """One whole epoch (a pass abandoned half way would leave its chunks for the next pass to drain), noting
        the time to its first batch."""
        started = time.perf_counter()
        n = 0
        for n, _ in enumerate(source.training_batches(plan, batch_size=BATCH, epoch=next(epochs),
                                                      counter=EpochCounter(split, plan)), start=1):
            if n == 1:
                firsts.append(time.perf_counter() - started)
        return n
    try:
        epoch()  # the pool started
        whole = seconds(epoch)
    finally:
        source.close()
    first = timing(firsts[-repeats():])
    per_batch = whole.median / plan.steps(BATCH)
    results.append(Result(f"feeding/{name}", "first batch of an epoch / one batch of a running epoch",
                          first.median / per_batch, "x",
                          f"first batch {first.text('.4f', ' s')}; epoch {whole.text('.3f', ' s')} for "
                          f"{plan.steps(BATCH)} batches, {cores()} workers"))
    return results
