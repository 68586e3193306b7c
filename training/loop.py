"""The training loop: data-parallel SGD over Petastorm shards, validation every epoch, test evaluation at the end.

Everything comes in as arguments (config, dataset URL, output folder, distributed backend), so the same code runs
under horovodrun, as one plain process, and in tests.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipelines.layout import DatasetError
from training.config import TrainConfig
from training.data import (DataCoverageError, DatasetInfo, EpochCounter, ReadOptions, SplitInfo, Task,
                           evaluation_batches, load_dataset_info, plan_shard, task_for, training_batches)
from training.distributed import set_threads
from training.models import DEFAULT_OPTIMIZER, build_model, resolve_model_name

log = logging.getLogger("bigtrain.train")
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    model: torch.nn.Module


def train(config: TrainConfig, *, data_url: str, output_dir: str | Path, dist) -> TrainResult:
    """Train on ``data_url``'s train split, validate every epoch, evaluate on test; returns the metrics and the
    trained model. Rank 0 writes ``checkpoint.pt`` and ``metrics.json`` into ``output_dir``."""
    output_dir = Path(output_dir)
    threads = set_threads(dist)
    info = load_dataset_info(data_url)
    train_split = info.splits["train"]
    if train_split.rows == 0:
        raise DatasetError(f"split {train_split.url} is empty: nothing to train on")
    torch.manual_seed(config.seed)
    model = build_model(config.model, metadata=info.metadata, config=config)
    model_name = resolve_model_name(config.model, info.metadata)
    default_optimizer, default_lr = DEFAULT_OPTIMIZER[model_name]
    optimizer_name = default_optimizer if config.optimizer == "auto" else config.optimizer
    base_lr = default_lr if config.lr is None else config.lr
    lr = base_lr * (dist.size if config.scale_lr else 1)  # Horovod: scale the learning rate by the number of ranks
    optimizer = make_optimizer(optimizer_name, config, model, lr)
    dist.broadcast_state(model, optimizer)
    optimizer = dist.distributed_optimizer(optimizer, model)
    task = task_for(info.metadata, length_bucketing=config.length_bucketing, decode_threads=config.loader_workers)
    options = ReadOptions(task.fields, workers=config.loader_workers, shuffle=True, shuffle_buffer=config.shuffle_buffer,
                          seed=config.seed, columnar=task.columnar, sort_key=task.sort_key,
                          prefetch=config.prefetch_batches)
    plan = plan_shard(train_split.row_group_sizes, dist.rank, dist.size)
    if dist.rank == 0:
        log.info("training %s on %s: %d train rows, %d ranks on %d hosts x %d threads, %d steps/epoch of %d, %s lr %.4g%s",
                 model_name, info.url, train_split.rows, dist.size, dist.hosts, threads, plan.steps(config.batch_size),
                 config.batch_size, optimizer_name, lr,
                 "" if plan.by_row_group else " (fewer row groups than ranks: row sharding)")
        output_dir.mkdir(parents=True, exist_ok=True)
    history = []
    for epoch in range(config.epochs):
        start = time.monotonic()
        record = {"epoch": epoch + 1, **train_epoch(model, optimizer, task, train_split, plan, options, config, epoch,
                                                          dist)}
        if info.splits["validation"].rows:
            val = evaluate(model, task, info.splits["validation"], options, config.batch_size, dist, len(info.classes))
            record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        record["seconds"] = round(time.monotonic() - start, 2)
        history.append(record)
        if dist.rank == 0:
            log.info("epoch %d/%d: train loss %.4f acc %.4f | val loss %s acc %s | %.1fs", epoch + 1, config.epochs,
                     record["train_loss"], record["train_accuracy"], _fmt(record.get("val_loss")),
                     _fmt(record.get("val_accuracy")), record["seconds"])
    test = evaluate(model, task, info.splits["test"], options, config.batch_size, dist, len(info.classes),
                    check_ids=True)
    if test["rows"] == 0 and dist.rank == 0:
        log.warning("the test split of %s is empty: test metrics are null", info.url)
    metrics = {
        "test_accuracy": test["accuracy"], "test_loss": test["loss"], "test_rows": test["rows"],
        "per_class_accuracy": dict(zip(info.classes, test["per_class_accuracy"])),
        "per_class_rows": dict(zip(info.classes, test["per_class_rows"])),
        "history": history, "world_size": dist.size, "hosts": dist.hosts, "lr": lr, "optimizer": optimizer_name, "model": model_name, "dataset": info.url, "train_rows": train_split.rows,
        "config": asdict(config),
    }
    if dist.rank == 0:
        save_checkpoint(output_dir / CHECKPOINT_FILE, model, model_name, config, info)
        write_json(output_dir / METRICS_FILE, metrics)
        log.info("test accuracy %s, loss %s on %d rows; wrote %s and %s", _fmt(test["accuracy"]), _fmt(test["loss"]),
                 test["rows"], output_dir / CHECKPOINT_FILE, output_dir / METRICS_FILE)
    return TrainResult(metrics, model)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def make_optimizer(name: str, config: TrainConfig, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)


def train_epoch(model, optimizer, task: Task, split: SplitInfo, plan, options: ReadOptions, config: TrainConfig,
                epoch: int, dist) -> dict[str, float]:
    model.train()
    counter = EpochCounter(split, plan)
    steps = plan.steps(config.batch_size)
    sums = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n
    progress = _progress(steps, f"epoch {epoch + 1}", config, dist)
    batches = training_batches(split, plan, options, batch_size=config.batch_size, epoch=epoch,
                               collate=task.collate, counter=counter)
    for step, (inputs, y, _ids) in enumerate(batches, start=1):
        optimizer.zero_grad()
        logits = model(*inputs)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        sums += torch.tensor([loss.item() * len(y), (logits.argmax(1) == y).sum().item(), len(y)], dtype=torch.float64)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{sums[0] / sums[2]:.4f}")
        elif dist.rank == 0 and step % config.log_every == 0:
            log.info("epoch %d step %d/%d: loss %.4f", epoch + 1, step, steps, sums[0] / sums[2])
    if progress is not None:
        progress.close()
    coverage = torch.tensor([counter.first_pass_rows, counter.padding_rows], dtype=torch.float64)
    totals = dist.allreduce_sum(torch.cat([sums, coverage]), name=f"train_epoch_{epoch}")
    delivered = int(totals[3])
    if delivered != split.rows:  # every rank raises together: no rank is left waiting in a collective
        raise DataCoverageError(f"epoch {epoch + 1}: the ranks read {delivered} distinct rows of {split.url}, "
                                f"the split holds {split.rows}")
    return {"train_loss": float(totals[0] / totals[2]), "train_accuracy": float(totals[1] / totals[2]),
            "train_rows": delivered, "padding_rows": int(totals[4])}


@torch.no_grad()
def evaluate(model, task: Task, split: SplitInfo, options: ReadOptions, batch_size: int, dist, num_classes: int,
             check_ids: bool = False) -> dict[str, Any]:
    """Loss and accuracy over every row of ``split``, each read exactly once across the ranks."""
    model.eval()
    plan = plan_shard(split.row_group_sizes, dist.rank, dist.size)
    loss_sum = torch.zeros(1, dtype=torch.float64)
    correct = torch.zeros(num_classes, dtype=torch.float64)
    total = torch.zeros(num_classes, dtype=torch.float64)
    ids = []
    for inputs, y, batch_ids in evaluation_batches(split, plan, options, batch_size=batch_size, collate=task.collate):
        logits = model(*inputs)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        hits = (logits.argmax(1) == y).double()
        correct.index_add_(0, y, hits)
        total.index_add_(0, y, torch.ones_like(hits))
        ids.append(batch_ids)
    totals = dist.allreduce_sum(torch.cat([loss_sum, correct, total]), name=f"eval_{split.name}")
    loss_sum, correct, total = totals[0], totals[1:1 + num_classes], totals[1 + num_classes:]
    rows = int(total.sum())
    if rows != split.rows:
        raise DataCoverageError(f"evaluation read {rows} rows of {split.url}, the split holds {split.rows}")
    if check_ids:
        local = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int64)
        unique = int(torch.unique(dist.allgather(local, name=f"ids_{split.name}")).numel())
        if unique != split.rows:
            raise DataCoverageError(f"evaluation of {split.url} saw {unique} distinct rows of {split.rows}")
    if rows == 0:
        return {"loss": None, "accuracy": None, "rows": 0, "per_class_accuracy": [None] * num_classes,
                "per_class_rows": [0] * num_classes}
    return {"loss": float(loss_sum / rows), "accuracy": float(correct.sum() / rows), "rows": rows,
            "per_class_accuracy": [float(c / t) if t else None for c, t in zip(correct, total)],
            "per_class_rows": [int(t) for t in total]}


def _progress(steps: int, desc: str, config: TrainConfig, dist):
    if dist.rank != 0 or config.progress_bar == "never":
        return None
    if config.progress_bar == "auto" and not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=steps, desc=desc, unit="step", leave=False, file=sys.stderr)


def save_checkpoint(path: Path, model, model_name: str, config: TrainConfig, info: DatasetInfo) -> None:
    """Weights, config and class map, written atomically (a crash never leaves a half-written file behind).

    Only tensors and plain Python values go in, so ``torch.load(path, weights_only=True)`` can read it."""
    payload = {"model_state": model.state_dict(), "model": model_name, "config": asdict(config),
               "classes": info.classes, "class_to_index": info.metadata["class_to_index"],
               "dataset": {"url": info.url, "kind": info.kind, "image": info.metadata.get("image"),
                           "sequence": info.metadata.get("sequence")}}
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
