"""Resume points: what a run has done so far (``Progress``), saved with the model and optimizer every N optimizer
steps and at each epoch end, and the checks that a run may continue from one.

The loader's position is the number of batches of the current epoch already trained: the epoch's order is a
function of (seed, epoch, rank, world size) only (``training.order``), whatever the number of loader workers, so
the loader starts at that batch without reading the ones before it. Resumed on another world size, the epoch goes
on with the rows no rank trained in it yet, each once, dealt to the new ranks; the point records that as a few
integers (``Progress.stretches``), not as a list of rows. Random states (torch, numpy, python) are
restored, so dropout draws the same masks as a run that was never interrupted.
"""
from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import CheckpointError
from training import checkpoint
from training.outputs import RESUME_DIR

log = logging.getLogger("bigtrain.train")
# Config keys a resumed run must share with the checkpoint: they shape the model, the optimizer state or what a
# saved loader position means. Others (epochs, logging, loader threads, checkpoint cadence) may change.
MUST_MATCH = ("model", "optimizer", "cnn", "rnn", "fasttext", "transformer", "model_config", "loss", "collate", "batch_size", "backward_passes_per_step", "seed",
              "length_bucketing", "shuffle_buffer")


@dataclass
class Progress:
    epoch: int = 0                  # epochs completed
    step: int = 0                   # batches of the current epoch already trained (the loader's position)
    global_step: int = 0            # optimizer steps so far
    world: int = 1                  # the world size ``step`` refers to
    # the current epoch resumed on another world size: (world size, its steps trained by then) of each earlier
    # stretch of it, from which every rank recomputes the rows left (training.order.remainder); [] for a plain epoch
    stretches: list[list[int]] = field(default_factory=list)
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # this epoch so far, all ranks: loss*n, hits, n
    stall: list[float] = field(default_factory=lambda: [0.0, 0.0])      # seconds waiting for data, seconds in steps
    history: list[dict[str, Any]] = field(default_factory=list)
    # the last epoch whose validation loss beat the best before it by more than early stopping's margins, and that
    # loss (a later epoch's may be lower by less: metrics.json's lowest_val_loss); its weights are checkpoints/best.pt
    best_val_loss: float | None = None
    best_epoch: int | None = None   # 1-based
    bad_epochs: int = 0
    stopped_early: bool = False

    def start_epoch_over(self) -> None:
        self.step, self.sums, self.stall, self.stretches = 0, [0.0, 0.0, 0.0], [0.0, 0.0], []


def random_states() -> dict[str, Any]:
    """torch, numpy and python random states as tensors and plain values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                        has_gauss, cached],
              "python": random.getstate()}
    if torch.cuda.is_initialized():  # dropout on a GPU draws from the current device's generator
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_random_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def save_point(output_dir: Path, base: checkpoint.Checkpoint, optimizer, progress: Progress, keep: int) -> Path:
    """Write a resume point (rank 0 only): ``base`` (the model's checkpoint) with the optimizer, the progress and
    the random states; drop the older ones beyond ``keep``."""
    path = output_dir / RESUME_DIR / f"step-{progress.global_step:09d}-e{progress.epoch}.pt"
    replace(base, optimizer_state=optimizer.state_dict(), progress=asdict(progress),
            schedule={"global_step": progress.global_step, "lr": [g["lr"] for g in optimizer.param_groups]},
            random=random_states(), epoch=progress.epoch, step=progress.step,
            global_step=progress.global_step).save(path)
    checkpoint.prune(output_dir, keep)
    return path


def find_point(config, output_dir: Path) -> Path | None:
    """The resume point this run continues from, by ``config.resume``; None to start fresh."""
    latest = checkpoint.latest_resume_point(output_dir)
    folder = output_dir / RESUME_DIR
    incomplete = sorted(p for p in folder.glob("step-*.pt") if not checkpoint.sidecar_of(p).is_file()
                        and (latest is None or p.name > latest.name)) if folder.is_dir() else []
    if incomplete and config.resume != "never":
        log.warning("ignoring %s: no sidecar, its save was cut short (a crash or a kill during the write); %s",
                    ", ".join(p.name for p in incomplete),
                    f"continuing from {latest.name}" if latest else "no complete resume point before it")
    if config.resume == "never":
        if latest is not None:  # removed, or the new run's early points would sort below the old run's later ones
            log.info("train.resume=never: starting over; removing the resume points of the previous run in %s",
                     output_dir / RESUME_DIR)
            checkpoint.prune(output_dir, keep=0)
        return None
    if latest is None and config.resume == "require":
        raise CheckpointError(f"train.resume=require (--resume) but {output_dir / RESUME_DIR} holds no "
                              "complete checkpoint to continue from")
    return latest


def check_compatible(saved: checkpoint.Checkpoint, path: Path, config, identity: str, model_name: str) -> None:
    """Refuse to continue a checkpoint with another dataset, model or a config that changes what it means."""
    if saved.snapshot_id != identity:
        raise CheckpointError(
            f"checkpoint {path} was trained on dataset snapshot {saved.snapshot_id} ({saved.dataset_url}), but "
            f"--data is snapshot {identity}: refusing to resume on other data (use a new --output, or "
            "--no-resume to start over)")
    if saved.model != model_name:
        raise CheckpointError(f"checkpoint {path} holds a {saved.model} model, this run trains {model_name}")
    current = asdict(config)
    changed = [k for k in MUST_MATCH if saved.config.get(k) != current.get(k)]
    if changed:
        key = changed[0]
        raise CheckpointError(f"checkpoint {path} was trained with train.{key}={saved.config.get(key)!r}, "
                              f"this run has {current.get(key)!r}: resuming would not continue the same run "
                              "(use a new --output, or --no-resume)")
