"""One training epoch: its batches to optimizer steps, gradient accumulation, clipping, loss scaling, mid-epoch
resume points, and the epoch's metrics summed over all ranks. It takes the parts it uses (``StepParts``: model,
optimizer, loss, precision, backend; the batch source and how batches reach the device, ``feed.Placement``), not
the ``training.trainer.Trainer`` that owns them.

Every rank runs the same ``plan.steps(batch_size)`` steps (a short shard is padded by the source), so no rank waits
in an allreduce for one that has stopped; the rows the ranks read first are counted and checked against the split.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch

from core.logs import counted
from training.config import TrainConfig
from training.device import DeviceBusy, Precision
from training.digests import StepDigests
from training.distributed import Backend, unwrap
from training.feed import Placement
from training.ledger import STEP_STAGES, StageClock
from training.resume import Progress
from training.schedule import lr_factor
from training.shards import DataCoverageError, EpochCounter, ShardPlan, plan_shard
from training.sources import BatchSource
from training.user_code import LOSS, MODEL, FirstBatchGuard
from training.watchdog import Heartbeat

log = logging.getLogger("bigtrain.train")


@dataclass
class StepParts:
    """What a training step uses: the model and optimizer as the backend made them distributed (DDP's wrapper,
    Horovod's DistributedOptimizer), the loss (one value per row), the precision and its gradient scaler, the
    backend, and the guard around the user's code on the first batch."""
    model: torch.nn.Module
    optimizer: Any
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    precision: Precision
    scaler: torch.amp.GradScaler
    dist: Backend
    guard: FirstBatchGuard
    grad_clip_norm: float | None = None

    @property
    def device(self) -> torch.device:
        return self.dist.device


def train_epoch(step: StepParts, batches: BatchSource, placement: Placement, config: TrainConfig,
                progress: Progress, *, peak_lr: float, beat: Heartbeat, save_point: Callable[[Progress], None],
                clock: StageClock | None = None, digests: StepDigests | None = None) -> dict[str, Any]:
    """One pass over the train split from ``progress.step`` on; returns the epoch's metrics over all ranks. The
    learning rate is ``peak_lr`` times the schedule's factor; ``save_point(progress)`` writes a mid-epoch resume
    point (every ``config.checkpoint_every_steps``). The training thread's time goes into ``clock``'s stages
    (``training.ledger``) and the loader's into ``metrics["loader_times"]``; ``beat`` follows every step;
    ``digests`` gets each step's sample ids (``training.digests``)."""
    dist, split = step.dist, batches.splits["train"]
    clock = clock or StageClock()
    plan = _epoch_plan(batches, split, dist, progress, config)
    step.model.train()
    counter = EpochCounter(split, plan)
    steps = plan.steps(config.batch_size)
    k = config.backward_passes_per_step
    local = torch.zeros(5, dtype=torch.float64)  # loss * n, correct, n, seconds waiting for data, seconds in steps
    # loss * n, correct, n summed where the model runs: reading them every step would wait for the GPU each time
    on_device = torch.zeros(3, dtype=torch.float64, device=step.device)
    # The resumed epoch's sums so far (over all ranks) are counted once, on rank 0.
    base = torch.tensor(progress.sums + progress.stall if dist.rank == 0 else [0.0] * 5, dtype=torch.float64)
    progress_bar = _progress(steps, f"epoch {progress.epoch + 1}", config, dist, initial=progress.step)
    busy = DeviceBusy(step.device)
    # A resumed epoch starts at its saved step: the order is a function of (seed, epoch, rank, world), so the
    # source begins there without reading the batches trained before the interruption.
    fed_batches = placement.feed(batches.training_batches(plan, batch_size=config.batch_size, epoch=progress.epoch,
                                                          counter=counter, start=progress.step), times=counter.loader)
    first = progress.step
    beat.set("loading", first + 1)  # steps counted from 1, as in the logs
    for index, fed in enumerate(fed_batches, start=first):
        clock.mark("start" if index == first else "wait")  # the first batch: the workers' first reads
        beat.set("compute", index + 1)
        fed.ready()
        clock.mark("copy")
        group_start = index - index % k
        group_size = min(k, steps - group_start)
        last_of_group = index + 1 == group_start + group_size
        # The shard's own rows come first, padding after: metrics count the real rows only.
        real = max(0, min(len(fed.labels), plan.local_rows - (index - plan.first_step) * config.batch_size))
        busy.begin()
        loss_sum, hits = forward_backward(step, fed.inputs, fed.labels, group_size, sync=last_of_group, real=real,
                                          beat=beat)
        on_device[0] += loss_sum.double()
        on_device[1] += hits
        on_device[2] += real
        clock.mark("compute")
        progress.step = index + 1
        if digests is not None:
            digests.record(progress.epoch + 1, progress.step, fed.ids)
        if last_of_group:
            optimizer_step(step, lr=peak_lr * lr_factor(config, progress.epoch + progress.step / steps), clock=clock,
                           beat=beat)
        busy.end()
        if last_of_group:
            progress.global_step += 1
            every = config.checkpoint_every_steps
            if every and progress.global_step % every == 0 and progress.step < steps:
                beat.set("checkpoint", index + 1)
                _partial_sums(progress, dist, local, on_device, base, clock)
                save_point(progress)
                clock.mark("checkpoint")
        _report_step(progress_bar, progress, steps, clock, on_device, config, dist)
        beat.set("loading", index + 2)
        clock.mark("other")
    if progress_bar is not None:
        progress_bar.close()
    beat.set("collective", progress.step)
    local[:3] = on_device.cpu()  # waits for the epoch's last step
    local[3:] = _stall_sums(clock)
    # the rows the epoch's earlier stretches trained (an epoch resumed on another world size): its row groups' rows
    # less those dealt to this stretch's ranks
    earlier = sum(split.row_group_sizes) - sum(plan.rows_per_rank) if plan.stretches else 0
    metrics = _epoch_metrics(step, split, progress, local, base, counter, seconds=clock.elapsed, earlier=earlier)
    clock.mark("collective")
    metrics.update(loader_times=counter.loader, device_busy=busy.total())
    if plan.stretches:  # what `bigtrain batches` needs to rebuild this epoch's steps
        metrics["stretches"] = [list(s) for s in plan.stretches] + [[dist.size, steps]]
    return metrics


def _partial_sums(progress: Progress, dist: Backend, local: torch.Tensor, on_device: torch.Tensor,
                  base: torch.Tensor, clock: StageClock) -> None:
    """The epoch's sums so far over all ranks into ``progress``, for a mid-epoch resume point."""
    local[:3] = on_device.cpu()
    local[3:] = _stall_sums(clock)
    totals = base + dist.allreduce_sum(local, name=f"partial_{progress.global_step}")
    progress.sums, progress.stall = totals[:3].tolist(), totals[3:].tolist()


def _stall_sums(clock: StageClock) -> torch.Tensor:
    """(seconds waiting for data, seconds in the rest of the steps) so far: the data stall's two sums. The wait
    for an epoch's first batch (``start``: the workers' first reads) is not a stall of the steps."""
    stepping = sum(clock.seconds[s] for s in STEP_STAGES)
    return torch.tensor([clock.seconds["wait"], stepping - clock.seconds["wait"]], dtype=torch.float64)


def _epoch_plan(batches: BatchSource, split, dist: Backend, progress: Progress, config: TrainConfig) -> ShardPlan:
    """This rank's shard for the epoch: Petastorm's, or, in an epoch resumed on another world size, its part of the
    rows the epoch's earlier stretches left (``training.order.remainder``)."""
    resumable = getattr(batches, "resumed_plan", None)
    changed = _follow_world_size(progress, dist, resumable=resumable is not None)
    if not progress.stretches:
        return plan_shard(split.row_group_sizes, dist.rank, dist.size)
    plan = resumable(dist.rank, dist.size, tuple((int(w), int(e)) for w, e in progress.stretches),
                     batch_size=config.batch_size, epoch=progress.epoch)
    if changed and dist.rank == 0:
        left = sum(plan.rows_per_rank)
        log.info("world size changed from %d to %d at step %d of epoch %d: the %s row%s of the train split not "
                 "trained in it yet go to %s, each once, in %d more steps per rank; later epochs are sharded for %d",
                 changed, dist.size, progress.step, progress.epoch + 1, f"{left:,}", "" if left == 1 else "s",
                 counted(dist.size, "rank"), plan.steps(config.batch_size) - plan.first_step, dist.size)
    return plan


def _follow_world_size(progress: Progress, dist: Backend, *, resumable: bool) -> int:
    """A resume or an elastic reset on another world size: mid-epoch, the stretch trained so far is recorded in
    ``progress.stretches`` (the rest of the epoch is what it left); where the source cannot plan that, the epoch
    starts over on the new shards. Returns the old world size when it changed, else 0."""
    if progress.world == dist.size:
        return 0
    old = progress.world
    if progress.step and resumable:
        if not progress.stretches or progress.stretches[-1][1] != progress.step:  # a stretch of no step adds none
            progress.stretches.append([old, progress.step])
        progress.world = dist.size
        return old
    if progress.step and dist.rank == 0:
        log.warning("world size changed from %d to %d during epoch %d: it starts over on the new shards",
                    old, dist.size, progress.epoch + 1)
    progress.start_epoch_over()
    progress.world = dist.size
    return old


def _epoch_metrics(step: StepParts, split, progress: Progress, local: torch.Tensor, base: torch.Tensor,
                   counter: EpochCounter, *, seconds: float, earlier: int = 0) -> dict[str, Any]:
    """The epoch's sums over all ranks (and the resumed part before this session), checked for coverage; ``earlier``:
    the rows an epoch resumed on another world size trained before (counted once, on rank 0)."""
    first_pass = counter.first_pass_rows + (earlier if step.dist.rank == 0 else 0)
    coverage = torch.tensor([first_pass, counter.padding_rows], dtype=torch.float64)
    totals = step.dist.allreduce_sum(torch.cat([local, coverage]), name=f"train_epoch_{progress.epoch}") + torch.cat(
        [base, torch.zeros(2, dtype=torch.float64)])
    delivered = int(totals[5])
    if delivered != split.rows:  # every rank raises together: no rank is left waiting in a collective
        raise DataCoverageError(f"epoch {progress.epoch + 1}: the ranks read {delivered} distinct rows of {split.url}, "
                                f"the split holds {split.rows}")
    waiting, busy = float(totals[3]), float(totals[4])
    return {"train_loss": float(totals[0] / totals[2]), "train_accuracy": float(totals[1] / totals[2]),
            "train_rows": delivered, "padding_rows": int(totals[6]), "lr": step.optimizer.param_groups[0]["lr"],
            "data_stall": round(waiting / (waiting + busy), 4) if waiting + busy > 0 else 0.0,
            # rows trained by all ranks in this process's training time (this session's part of a resumed epoch)
            "samples_per_second": round(float(totals[2] - base[2]) / seconds, 1) if seconds > 0 else None}


def forward_backward(step: StepParts, inputs: tuple[torch.Tensor, ...], y: torch.Tensor, group_size: int, *,
                     sync: bool, real: int | None = None, beat: Heartbeat | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's loss and gradients; returns the summed loss and the count of correct predictions of its first
    ``real`` rows (default all; the rest pad a short shard: they are trained on, so that every rank takes the same
    steps, but not counted in the metrics), as tensors on the device (reading them here would make the host wait
    for the GPU). The loss is divided by the batches per optimizer step, so k accumulated batches of b rows give the
    gradient of one batch of k*b rows. ``inputs`` and ``y``: the model's, on its device (``feed.Placement``).
    ``beat``: the heartbeat, told when the backward pass starts (under DDP it waits there for the other ranks'
    gradients)."""
    real = len(y) if real is None else real
    with contextlib.ExitStack() as stack:
        if not sync:
            stack.enter_context(step.dist.no_sync(step.model))  # DDP: allreduce only on the group's last pass
        with step.precision.context(step.device):
            logits = step.guard.call(MODEL, step.model, *inputs)
            per_row = step.guard.call(LOSS, step.loss, logits, y)
        if beat is not None:
            beat.set("backward")
        step.scaler.scale(per_row.mean() / group_size).backward()
        step.guard.passed()
    return per_row[:real].detach().float().sum(), (logits[:real].argmax(1) == y[:real]).sum()


def optimizer_step(step: StepParts, *, lr: float, clock: StageClock | None = None,
                   beat: Heartbeat | None = None) -> None:
    """Set the learning rate, wait for the gradients averaged over the ranks (the ledger's ``collective``), then
    unscale and clip them where asked, step and zero (``compute``)."""
    optimizer, scaler, dist = step.optimizer, step.scaler, step.dist
    for group in optimizer.param_groups:
        group["lr"] = lr
    if beat is not None:
        beat.set("collective")
    dist.synchronize(optimizer)  # Horovod: the averaged gradients, before unscaling, clipping and stepping
    if clock is not None:
        clock.mark("collective")
    if beat is not None:
        beat.set("step")
    if scaler.is_enabled():
        scaler.unscale_(optimizer)
    if step.grad_clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(unwrap(step.model).parameters(), step.grad_clip_norm)
    with dist.skip_synchronize(optimizer):
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
    if clock is not None:
        clock.mark("compute")


def _report_step(progress_bar, progress: Progress, steps: int, clock: StageClock, on_device: torch.Tensor,
                 config: TrainConfig, dist: Backend) -> None:
    """The progress bar or a log line on rank 0. The running loss is read from the device only every
    ``log_every`` steps: each read waits for the GPU to finish the step."""
    if progress_bar is not None:
        progress_bar.update(1)
    if progress_bar is None and dist.rank != 0 or progress.step % config.log_every:
        return
    sums = on_device.cpu()
    loss = float(sums[0] / sums[2]) if sums[2] else float("nan")
    if progress_bar is not None:
        progress_bar.set_postfix(loss=f"{loss:.4f}")
    else:
        waiting, other = _stall_sums(clock).tolist()
        stall = waiting / (waiting + other) if waiting + other > 0 else 0.0
        log.info("epoch %d step %d/%d: loss %.4f, data stall %.0f%%", progress.epoch + 1, progress.step, steps, loss,
                 100 * stall)


def _progress(steps: int, desc: str, config: TrainConfig, dist: Backend, initial: int = 0):
    if dist.rank != 0 or config.progress_bar == "never":
        return None
    if config.progress_bar == "auto" and not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=steps, initial=initial, desc=desc, unit="step", leave=False, file=sys.stderr)
