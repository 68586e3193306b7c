"""The wiring from a dataset URL to a ``training.trainer.Trainer``: ``fit`` opens the dataset (``PetastormSource``),
builds the model the config names for it, seeded, and its optimizer (``build_trainer``), and fits the trainer.
jobs/train.py, the Spark launcher and ``training.api.fit`` call it on every rank; tests and notebooks that hold
their data in memory build a Trainer from ``training.sources.InMemorySource`` (``build_trainer`` takes either
source).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from training.config import TrainConfig
from training.distributed import Backend, set_threads
from training.models import build_model, default_optimizer, resolve_model_name
from training.petastorm_source import PetastormSource
from training.sources import BatchSource, check_classes
from training.trainer import Trainer, TrainResult

log = logging.getLogger(__name__)

__all__ = ["TrainResult", "build_trainer", "fit", "make_optimizer"]


def fit(config: TrainConfig, *, data_url: str, output_dir: str | Path, dist: Backend,
        elastic: bool = False) -> TrainResult:
    """Train on ``data_url``'s train split, validate every epoch, evaluate on test; returns the metrics and the
    trained model. Rank 0 writes checkpoints, ``metrics.json``, ``metrics.jsonl``, TensorBoard events and the
    evaluation report into ``output_dir``."""
    threads = set_threads(dist, config.threads)
    if dist.rank == 0:
        log.info("%d compute thread%s per rank (train.threads %s)", threads, "" if threads == 1 else "s", config.threads)
    source = PetastormSource.open(data_url, config, pin_memory=dist.device.type == "cuda",
                                  local_ranks=dist.local_size)
    try:
        return build_trainer(config, source, output_dir, dist).fit(elastic=elastic)
    finally:
        source.close()  # the loader's worker processes


def build_trainer(config: TrainConfig, batches: BatchSource, output_dir: str | Path, dist: Backend) -> Trainer:
    """A Trainer with the model ``config.model`` names for the data (``auto``: its kind's), initialised from
    ``config.seed``, and the optimizer, learning rate and weight decay the config names (``auto``/null: the model's
    defaults). Data of a single class is refused first (``check_classes``)."""
    check_classes(batches, allow_single_class=config.allow_single_class)
    torch.manual_seed(config.seed)
    model = build_model(config.model, dataset=batches.spec, config=config).to(dist.device)
    model_name = resolve_model_name(config.model, batches.spec.kind)
    optimizer_default, default_lr, default_decay = default_optimizer(model_name)
    optimizer_name = optimizer_default if config.optimizer == "auto" else config.optimizer
    optimizer = make_optimizer(optimizer_name, config, model, default_lr if config.lr is None else config.lr,
                               default_decay if config.weight_decay is None else config.weight_decay)
    return Trainer(model, optimizer, batches, dist, config, output_dir, model_name=model_name)


def make_optimizer(name: str, config: TrainConfig, model: torch.nn.Module, lr: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum, weight_decay=weight_decay)
