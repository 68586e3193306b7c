"""Evaluation of a split: loss, accuracy and confusion matrix over every row, each read exactly once across the
ranks. Like ``training.epoch`` it takes the parts it uses (``epoch.StepParts``, the batch source, ``feed.Placement``).
"""
from __future__ import annotations

from typing import Any

import torch

from training.epoch import StepParts
from training.feed import Placement
from training.shards import DataCoverageError, plan_shard
from training.sources import BatchSource
from training.user_code import LOSS, MODEL
from training.watchdog import Heartbeat


@torch.no_grad()
def evaluate(step: StepParts, batches: BatchSource, placement: Placement, split_name: str, *, batch_size: int,
             beat: Heartbeat, check_ids: bool = False) -> dict[str, Any]:
    """Loss, accuracy, rows, per-class accuracy and rows, and the confusion matrix (row: true class) of the split,
    summed over the ranks; ``check_ids``: also check that the ranks read distinct rows."""
    model, device, dist, split = step.model, step.device, step.dist, batches.splits[split_name]
    model.eval()
    num_classes = len(batches.spec.classes)
    plan = plan_shard(split.row_group_sizes, dist.rank, dist.size)
    # Summed on the model's device and read once at the end, not once per batch.
    loss_sum = torch.zeros(1, dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=device)
    ids = []
    for index, fed in enumerate(placement.feed(batches.evaluation_batches(split_name, plan, batch_size=batch_size))):
        beat.set("compute", index + 1)
        y, batch_ids = fed.ready().labels, fed.ids
        with step.precision.context(device):
            logits = step.guard.call(MODEL, model, *fed.inputs)
        logits = logits.float()
        loss_sum += step.guard.call(LOSS, step.loss, logits, y).double().sum()
        step.guard.passed()
        confusion.index_add_(0, y * num_classes + logits.argmax(1), torch.ones(len(y), dtype=torch.float64,
                                                                              device=device))
        ids.append(batch_ids)
        beat.set("loading", index + 2)
    beat.set("collective")
    totals = dist.allreduce_sum(torch.cat([loss_sum, confusion]).cpu(), name=f"eval_{split.name}")
    loss_sum, confusion = totals[0], totals[1:].reshape(num_classes, num_classes)
    rows = int(confusion.sum())
    if rows != split.rows:
        raise DataCoverageError(f"evaluation read {rows} rows of {split.url}, the split holds {split.rows}")
    if check_ids:
        _check_distinct(dist, split, ids)
    per_class_rows = confusion.sum(1)
    return {"loss": float(loss_sum / rows) if rows else None,
            "accuracy": float(confusion.diagonal().sum() / rows) if rows else None, "rows": rows,
            "per_class_accuracy": [float(c / t) if t else None for c, t in zip(confusion.diagonal(), per_class_rows)],
            "per_class_rows": [int(t) for t in per_class_rows], "confusion": confusion.long()}


def _check_distinct(dist, split, ids: list[torch.Tensor]) -> None:
    local = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int64)
    unique = int(torch.unique(dist.allgather(local, name=f"ids_{split.name}")).numel())
    if unique != split.rows:
        raise DataCoverageError(f"evaluation of {split.url} saw {unique} distinct rows of {split.rows}")
