"""The training loop: data-parallel SGD over Petastorm shards, validation every epoch, test evaluation at the end.

Everything comes in as arguments (config, dataset URL, output folder, distributed backend), so the same code runs
under horovodrun (also elastic), under torchrun with DDP, as one plain process, and in tests. Rank 0 writes resume
points every ``checkpoint_every_steps`` optimizer steps and at each epoch end, and a run continues from the newest
one (``train.resume``), ending with the same weights as a run that was never interrupted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core import atomic
from core.errors import CheckpointError, DatasetError, LockHeld
from core.locking import hold
from dataset.info import DatasetInfo, load_dataset_info
from training import checkpoint, resume
from training.batching import evaluation_batches, training_batches
from training.collation import Task, task_for
from training.config import TrainConfig
from training.device import Precision, describe, pinned, precision_for, to_device
from training.distributed import set_threads, unwrap
from training.elastic import fit_elastic
from training.models import DEFAULT_OPTIMIZER, build_model, resolve_model_name
from training.reading import ReadOptions
from training.reports import MetricsLog, classification_report, write_evaluation_report
from training.resume import Progress
from training.schedule import lr_factor
from training.shards import DataCoverageError, EpochCounter, plan_shard

log = logging.getLogger("bigtrain.train")
CHECKPOINT_FILE = checkpoint.FINAL_FILE
METRICS_FILE = "metrics.json"


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    model: torch.nn.Module


@dataclass
class Run:
    """One training run's fixed parts, shared by the epoch loop, checkpoints and the elastic wrapper."""
    config: TrainConfig
    info: DatasetInfo
    output_dir: Path
    model: torch.nn.Module          # wrapped for DDP where the backend needs it
    optimizer: torch.optim.Optimizer
    model_name: str
    optimizer_name: str
    base_lr: float                  # per rank, before scaling by the world size and the schedule
    task: Task
    options: ReadOptions
    device: torch.device            # the backend's: this rank's GPU, or the CPU
    scaler: Any                     # torch.amp.GradScaler, enabled only for float16 mixed precision on GPU
    precision: Precision            # autocast dtype (bfloat16 where the GPU has it) or float32
    dataset: dict[str, Any]         # checkpoint.dataset_entry: identity, preprocessing config, vocabulary
    metrics_log: Any = None         # reports.MetricsLog on rank 0

    @property
    def identity(self) -> str:
        """The dataset snapshot the run trains on."""
        return self.dataset["snapshot_id"]

    def peak_lr(self, dist) -> float:
        return self.base_lr * (dist.size if self.config.scale_lr else 1)  # Horovod: scale the lr by the ranks

    def base_payload(self) -> dict[str, Any]:
        return checkpoint.base_payload(unwrap(self.model), self.model_name, self.config, self.info,
                                       dataset=self.dataset)


def train(config: TrainConfig, *, data_url: str, output_dir: str | Path, dist, elastic: bool = False) -> TrainResult:
    """Train on ``data_url``'s train split, validate every epoch, evaluate on test; returns the metrics and the
    trained model. Rank 0 writes checkpoints, ``metrics.json``, ``metrics.jsonl``, TensorBoard events and the
    evaluation report into ``output_dir``."""
    threads = set_threads(dist)
    with output_lock(Path(output_dir), dist):
        return _train(config, data_url, Path(output_dir), dist, elastic, threads)


@contextlib.contextmanager
def output_lock(output_dir: Path, dist):
    """Rank 0 holds ``<output>/.bigtrain-train.lock`` for the whole run: two runs writing one output folder would
    interleave their checkpoints. Every rank learns the outcome, so all fail together (LockHeld: exit 75)."""
    with contextlib.ExitStack() as stack:
        outcome = "ok"
        if dist.rank == 0:
            try:
                output_dir.mkdir(parents=True, exist_ok=True)
                stack.enter_context(hold(str(output_dir / ".bigtrain-train.lock"), what=f"training into {output_dir}"))
            except LockHeld as exc:
                outcome = str(exc)
        outcome = dist.broadcast_object(outcome, name="output_lock")
        if outcome != "ok":
            raise LockHeld(outcome)
        yield


def _train(config: TrainConfig, data_url: str, output_dir: Path, dist, elastic: bool, threads: int) -> TrainResult:
    run = prepare(config, data_url, output_dir, dist)
    progress, resumed_from = start_or_resume(run, dist)
    if dist.rank == 0:
        plan = plan_shard(run.info.splits["train"].row_group_sizes, 0, dist.size)
        log.info("training %s on %s (snapshot %s): %d train rows, %d ranks on %d hosts x %d threads (%s; rank 0 on "
                 "%s, %s), %d steps/epoch of %d, %s lr %.4g%s", run.model_name, run.info.url, run.identity,
                 run.info.splits["train"].rows, dist.size, dist.hosts, threads, dist.name, describe(run.device),
                 run.precision.name,
                 plan.steps(config.batch_size), config.batch_size, run.optimizer_name, run.peak_lr(dist),
                 "" if plan.by_row_group else " (fewer row groups than ranks: row sharding)")
    try:
        if elastic:
            progress = fit_elastic(run, progress, dist, fit)
        else:
            fit(run, progress, dist)
        return finish(run, progress, dist, resumed_from)
    finally:
        if run.metrics_log is not None:
            run.metrics_log.close()


def prepare(config: TrainConfig, data_url: str, output_dir: Path, dist) -> Run:
    info = load_dataset_info(data_url)
    if info.splits["train"].rows == 0:
        raise DatasetError(f"split {info.splits['train'].url} is empty: nothing to train on")
    torch.manual_seed(config.seed)
    device = dist.device
    model = build_model(config.model, dataset=info.spec, config=config).to(device)
    model_name = resolve_model_name(config.model, info.kind)
    default_optimizer, default_lr = DEFAULT_OPTIMIZER[model_name]
    optimizer_name = default_optimizer if config.optimizer == "auto" else config.optimizer
    base_lr = default_lr if config.lr is None else config.lr
    precision = precision_for(config.mixed_precision, device)
    if config.mixed_precision and precision.autocast is None and dist.rank == 0:
        log.info("train.mixed_precision: no GPU here, training in float32 on CPU (the setting only acts on GPU)")
    task = task_for(info.spec, length_bucketing=config.length_bucketing, decode_threads=config.loader_workers)
    if device.type == "cuda":  # batches land in page-locked memory in the loader's thread: copies don't block
        task = dataclasses.replace(task, collate=pinned(task.collate, task.host_inputs))
    options = ReadOptions(task.fields, workers=config.loader_workers, shuffle=True, shuffle_buffer=config.shuffle_buffer,
                          seed=config.seed, columnar=task.columnar, sort_key=task.sort_key,
                          prefetch=config.prefetch_batches)
    wrapped = dist.wrap_model(model, fp16_compression=config.fp16_compression)
    optimizer = make_optimizer(optimizer_name, config, model, base_lr)
    optimizer = dist.distributed_optimizer(optimizer, model, backward_passes_per_step=config.backward_passes_per_step,
                                           fp16_compression=config.fp16_compression)
    return Run(config, info, output_dir, wrapped, optimizer, model_name, optimizer_name, base_lr, task, options, device,
               torch.amp.GradScaler(device.type, enabled=precision.scaled), precision, checkpoint.dataset_entry(info))


def start_or_resume(run: Run, dist) -> tuple[Progress, str | None]:
    """A fresh Progress, or the one of the newest resume point (read on rank 0 and broadcast, so the output folder
    need not be shared); model, optimizer and random states restored on every rank."""
    found: tuple[str, Any] = ("none", None)
    if dist.rank == 0:
        try:
            path = resume.find_point(run.config, run.output_dir)
            if path is not None:
                payload = checkpoint.load(path)
                resume.check_compatible(payload, path, run.config, run.identity, run.model_name)
                found = ("ok", (str(path), payload))
        except CheckpointError as exc:
            found = ("error", str(exc))
    found = dist.broadcast_object(found, name="resume_point")  # every rank raises together, none is left waiting
    if found[0] == "error":
        raise CheckpointError(found[1])
    if found[0] == "none":
        dist.broadcast_state(unwrap(run.model), run.optimizer)
        return Progress(world=dist.size), None
    path, payload = found[1]
    unwrap(run.model).load_state_dict(payload["model_state"])
    run.optimizer.load_state_dict(payload["optimizer_state"])
    resume.set_random_states(payload["random"])
    progress = Progress(**payload["progress"])
    if dist.rank == 0 and (progress.epoch >= run.config.epochs or progress.stopped_early):
        log.info("the run in %s is complete (%d epochs%s, %s): evaluating it again; raise --epochs to train on, "
                 "or --no-resume to start over", run.output_dir, progress.epoch,
                 ", stopped early" if progress.stopped_early else "", path)
    elif dist.rank == 0:
        log.info("resuming from %s: epoch %d, batch %d of it, optimizer step %d", path, progress.epoch + 1,
                 progress.step, progress.global_step)
    return progress, path


def fit(run: Run, progress: Progress, dist, commit=None) -> None:
    """Epochs from ``progress`` on until ``config.epochs`` or early stopping. ``commit(progress)`` is called at
    every resume point (the elastic wrapper passes Horovod's state commit)."""
    config = run.config
    while progress.epoch < config.epochs and not progress.stopped_early:
        start = time.monotonic()
        record = {"epoch": progress.epoch + 1, **train_epoch(run, progress, dist, commit)}
        if run.info.splits["validation"].rows:
            val = evaluate(run, run.info.splits["validation"], dist)
            record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        record["seconds"] = round(time.monotonic() - start, 2)
        progress.history.append(record)
        progress.epoch += 1
        progress.start_epoch_over()
        update_early_stopping(progress, record, config)
        if dist.rank == 0:
            log.info("epoch %d/%d: train loss %.4f acc %.4f | val loss %s acc %s | lr %.3g | data stall %.0f%% | %.1fs",
                     record["epoch"], config.epochs, record["train_loss"], record["train_accuracy"],
                     _fmt(record.get("val_loss")), _fmt(record.get("val_accuracy")), record["lr"],
                     100 * record["data_stall"], record["seconds"])
            metrics_log(run, progress.history[:-1]).log_epoch(record)
            if progress.stopped_early:
                log.info("early stopping: val_loss has not improved by more than %g for %d epochs",
                         config.early_stopping_min_delta, config.early_stopping_patience)
        save_resume_point(run, progress, dist, commit)


def metrics_log(run: Run, history: list[dict[str, Any]]):
    """Rank 0's metrics.jsonl and TensorBoard writer, opened on first use (under --elastic, rank 0 may change)."""
    if run.metrics_log is None:
        run.metrics_log = MetricsLog(run.output_dir, history=history)
    return run.metrics_log


def update_early_stopping(progress: Progress, record: dict[str, Any], config: TrainConfig) -> None:
    val_loss = record.get("val_loss")
    if config.early_stopping_patience == 0 or val_loss is None:
        return
    if progress.best_val_loss is None or val_loss < progress.best_val_loss - config.early_stopping_min_delta:
        progress.best_val_loss, progress.bad_epochs = val_loss, 0
    else:
        progress.bad_epochs += 1
        progress.stopped_early = progress.bad_epochs >= config.early_stopping_patience


def save_resume_point(run: Run, progress: Progress, dist, commit) -> None:
    if dist.rank == 0:
        resume.save_point(run.output_dir, run.base_payload(), run.optimizer, progress, run.config.keep_checkpoints)
    if commit is not None:
        commit(progress)


def make_optimizer(name: str, config: TrainConfig, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)


def train_epoch(run: Run, progress: Progress, dist, commit=None) -> dict[str, float]:
    """One pass over the train split from ``progress.step`` on; returns the epoch's metrics over all ranks."""
    config, split = run.config, run.info.splits["train"]
    plan = plan_shard(split.row_group_sizes, dist.rank, dist.size)
    if progress.world != dist.size:  # elastic: the shards were re-planned, a saved position means nothing now
        if progress.step and dist.rank == 0:
            log.warning("world size changed from %d to %d during epoch %d: it starts over on the new shards",
                        progress.world, dist.size, progress.epoch + 1)
        progress.start_epoch_over()
        progress.world = dist.size
    run.model.train()
    counter = EpochCounter(split, plan)
    steps = plan.steps(config.batch_size)
    k = config.backward_passes_per_step
    local = torch.zeros(5, dtype=torch.float64)  # loss * n, correct, n, seconds waiting for data, seconds in steps
    # loss * n, correct, n summed where the model runs: reading them every step would wait for the GPU each time
    on_device = torch.zeros(3, dtype=torch.float64, device=run.device)
    # The resumed epoch's sums so far (over all ranks) are counted once, on rank 0.
    base = torch.tensor(progress.sums + progress.stall if dist.rank == 0 else [0.0] * 5, dtype=torch.float64)
    progress_bar = _progress(steps, f"epoch {progress.epoch + 1}", config, dist, initial=progress.step)
    batches = training_batches(split, plan, run.options, batch_size=config.batch_size, epoch=progress.epoch,
                               collate=run.task.collate, counter=counter)
    skip, waited_since = progress.step, time.monotonic()
    started = waited_since
    for index, (inputs, y, _ids) in enumerate(batches):
        if index < skip:  # trained before the interruption: read (same order) and passed over
            waited_since = time.monotonic()
            continue
        got = time.monotonic()
        group_start = index - index % k
        group_size = min(k, steps - group_start)
        last_of_group = index + 1 == group_start + group_size
        loss, hits = _forward_backward(run, inputs, y, group_size, dist, sync=last_of_group)
        on_device[0] += loss.double() * len(y)
        on_device[1] += hits
        on_device[2] += len(y)
        progress.step = index + 1
        if last_of_group:
            _optimizer_step(run, dist, lr=run.peak_lr(dist) * lr_factor(config, progress.epoch + progress.step / steps))
            progress.global_step += 1
            every = config.checkpoint_every_steps
            if every and progress.global_step % every == 0 and progress.step < steps:
                local[:3] = on_device.cpu()
                totals = base + dist.allreduce_sum(local, name=f"partial_{progress.global_step}")
                progress.sums, progress.stall = totals[:3].tolist(), totals[3:].tolist()
                save_resume_point(run, progress, dist, commit)
        now = time.monotonic()
        local[3:] += torch.tensor([got - waited_since, now - got], dtype=torch.float64)
        waited_since = now
        _report_step(progress_bar, progress, steps, local, on_device, config, dist)
    if progress_bar is not None:
        progress_bar.close()
    local[:3] = on_device.cpu()  # waits for the epoch's last step
    seconds = time.monotonic() - started
    coverage = torch.tensor([counter.first_pass_rows, counter.padding_rows], dtype=torch.float64)
    totals = dist.allreduce_sum(torch.cat([local, coverage]), name=f"train_epoch_{progress.epoch}") + torch.cat(
        [base, torch.zeros(2, dtype=torch.float64)])
    delivered = int(totals[5])
    if delivered != split.rows:  # every rank raises together: no rank is left waiting in a collective
        raise DataCoverageError(f"epoch {progress.epoch + 1}: the ranks read {delivered} distinct rows of {split.url}, "
                                f"the split holds {split.rows}")
    waiting, busy = float(totals[3]), float(totals[4])
    return {"train_loss": float(totals[0] / totals[2]), "train_accuracy": float(totals[1] / totals[2]),
            "train_rows": delivered, "padding_rows": int(totals[6]), "lr": run.optimizer.param_groups[0]["lr"],
            "data_stall": round(waiting / (waiting + busy), 4) if waiting + busy > 0 else 0.0,
            # rows trained by all ranks in this process's training time (this session's part of a resumed epoch)
            "samples_per_second": round(float(totals[2] - base[2]) / seconds, 1) if seconds > 0 else None}


def _forward_backward(run: Run, inputs, y, group_size: int, dist, *,
                      sync: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's loss and gradients; returns the loss and the count of correct predictions as tensors on the
    device (reading them here would make the host wait for the GPU). The loss is divided by the batches per
    optimizer step, so k accumulated batches of b rows give the gradient of one batch of k*b rows."""
    inputs = to_device(inputs, run.device, run.task.host_inputs)
    y = y.to(run.device, non_blocking=True)
    with contextlib.ExitStack() as stack:
        if not sync:
            stack.enter_context(dist.no_sync(run.model))  # DDP: allreduce only on the group's last backward pass
        with run.precision.context(run.device):
            logits = run.model(*inputs)
            loss = F.cross_entropy(logits, y)
        run.scaler.scale(loss / group_size).backward()
    return loss.detach(), (logits.argmax(1) == y).sum()


def _optimizer_step(run: Run, dist, *, lr: float) -> None:
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    clip = run.config.grad_clip_norm
    if clip is not None or run.scaler.is_enabled():
        dist.synchronize(run.optimizer)  # Horovod: averaged gradients before unscaling and clipping them
        run.scaler.unscale_(run.optimizer)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(unwrap(run.model).parameters(), clip)
        with dist.skip_synchronize(run.optimizer):
            run.scaler.step(run.optimizer)
    else:
        run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad()


def _report_step(progress_bar, progress: Progress, steps: int, local: torch.Tensor, on_device: torch.Tensor,
                 config: TrainConfig, dist) -> None:
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
        stall = float(local[3] / (local[3] + local[4])) if local[3] + local[4] > 0 else 0.0
        log.info("epoch %d step %d/%d: loss %.4f, data stall %.0f%%", progress.epoch + 1, progress.step, steps, loss,
                 100 * stall)


@torch.no_grad()
def evaluate(run: Run, split, dist, check_ids: bool = False) -> dict[str, Any]:
    """Loss, accuracy and confusion matrix over every row of ``split``, each read exactly once across the ranks."""
    model = run.model
    model.eval()
    num_classes = len(run.info.classes)
    plan = plan_shard(split.row_group_sizes, dist.rank, dist.size)
    # Summed on the model's device and read once at the end, not once per batch.
    loss_sum = torch.zeros(1, dtype=torch.float64, device=run.device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=run.device)  # row: true class
    ids = []
    for inputs, y, batch_ids in evaluation_batches(split, plan, run.options, batch_size=run.config.batch_size,
                                                   collate=run.task.collate):
        y = y.to(run.device, non_blocking=True)
        with run.precision.context(run.device):
            logits = model(*to_device(inputs, run.device, run.task.host_inputs))
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        confusion.index_add_(0, y * num_classes + logits.argmax(1),
                             torch.ones(len(y), dtype=torch.float64, device=run.device))
        ids.append(batch_ids)
    totals = dist.allreduce_sum(torch.cat([loss_sum, confusion]).cpu(), name=f"eval_{split.name}")
    loss_sum, confusion = totals[0], totals[1:].reshape(num_classes, num_classes)
    rows = int(confusion.sum())
    if rows != split.rows:
        raise DataCoverageError(f"evaluation read {rows} rows of {split.url}, the split holds {split.rows}")
    if check_ids:
        local = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int64)
        unique = int(torch.unique(dist.allgather(local, name=f"ids_{split.name}")).numel())
        if unique != split.rows:
            raise DataCoverageError(f"evaluation of {split.url} saw {unique} distinct rows of {split.rows}")
    per_class_rows = confusion.sum(1)
    return {"loss": float(loss_sum / rows) if rows else None,
            "accuracy": float(confusion.diagonal().sum() / rows) if rows else None, "rows": rows,
            "per_class_accuracy": [float(c / t) if t else None for c, t in zip(confusion.diagonal(), per_class_rows)],
            "per_class_rows": [int(t) for t in per_class_rows], "confusion": confusion.long()}


def finish(run: Run, progress: Progress, dist, resumed_from: str | None) -> TrainResult:
    """Test evaluation; on rank 0 the final checkpoint, metrics.json and the evaluation report."""
    info = run.info
    test = evaluate(run, info.splits["test"], dist, check_ids=True)
    if test["rows"] == 0 and dist.rank == 0:
        log.warning("the test split of %s is empty: test metrics are null", info.url)
    metrics = {
        "test_accuracy": test["accuracy"], "test_loss": test["loss"], "test_rows": test["rows"],
        "per_class_accuracy": dict(zip(info.classes, test["per_class_accuracy"])),
        "per_class_rows": dict(zip(info.classes, test["per_class_rows"])),
        "history": progress.history, "epochs_completed": progress.epoch, "stopped_early": progress.stopped_early,
        "world_size": dist.size, "hosts": dist.hosts, "backend": dist.name, "lr": run.peak_lr(dist),
        "device": str(run.device), "precision": run.precision.name,
        "optimizer": run.optimizer_name, "model": run.model_name, "dataset": info.url, "snapshot_id": run.identity,
        "train_rows": info.splits["train"].rows, "resumed_from": resumed_from, "config": asdict(run.config),
    }
    if dist.rank == 0:
        final = checkpoint.save(run.output_dir / CHECKPOINT_FILE,
                                {**run.base_payload(), "epoch": progress.epoch, "global_step": progress.global_step})
        atomic.write_json(run.output_dir / METRICS_FILE, metrics)
        written = []
        if test["rows"]:
            report = classification_report(test["confusion"].numpy(), info.classes)
            written = write_evaluation_report(run.output_dir, report, progress.history)
        log.info("test accuracy %s, loss %s on %d rows; wrote %s, %s%s", _fmt(test["accuracy"]), _fmt(test["loss"]),
                 test["rows"], final, run.output_dir / METRICS_FILE,
                 "".join(f", {p.name}" for p in written))
    return TrainResult(metrics, unwrap(run.model))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _progress(steps: int, desc: str, config: TrainConfig, dist, initial: int = 0):
    if dist.rank != 0 or config.progress_bar == "never":
        return None
    if config.progress_bar == "auto" and not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=steps, initial=initial, desc=desc, unit="step", leave=False, file=sys.stderr)
