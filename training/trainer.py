"""The trainer: data-parallel SGD over a batch source's shards, validation every epoch, test evaluation at the end.

It takes its parts (model, optimizer, batch source, distributed backend, config, output folder), so the same code
runs under horovodrun (also elastic), under torchrun with DDP, as one plain process, and in tests and notebooks on
a dataset held in memory (``training.sources.InMemorySource``); ``training.wiring.fit`` builds the parts for a
dataset URL. ``fit`` is its one verb: resume, epochs (``training.epoch``, handed the parts each step uses), the
final evaluation and the outputs. Rank 0 writes resume points every ``checkpoint_every_steps`` optimizer steps and at each epoch end,
and a run continues from the newest one (``train.resume``), ending with the same weights as a run that was never
interrupted.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from core import atomic
from core.errors import CheckpointError, DatasetError, LockHeld, ReadErrorBudgetError, StallBudgetError
from core.locking import hold
from core.logs import counted
from dataset.info import locate_rows
from training import outputs, resume
from training.baselines import baselines
from training.checkpoint import Checkpoint
from training.config import TrainConfig
from training.device import describe, precision_for
from training.digests import StepDigests
from training.distributed import Backend, unwrap
from training.elastic import fit_elastic
from training.epoch import StepParts, train_epoch
from training.evaluation import evaluate
from training.feed import Placement
from training.ledger import RankLedger, StageClock
from training.ledger import describe as describe_ledger
from training.ledger import summary as ledger_summary
from training.model_inputs import scaled_inputs
from training.models import collate_function, loss_function, resolve_model_name
from training.reports import MetricsLog, classification_report, val_loss_summary, write_evaluation_report
from training.resume import Progress
from training.shards import plan_shard, shard_files
from training.sources import BatchSource
from training.user_code import COLLATE, guard_for
from training.watchdog import Heartbeat, Watchdog

log = logging.getLogger("bigtrain.train")
METRICS_FILE = outputs.METRICS_FILE  # its name here before training.outputs (tests/jobs/test_outputs.py reads it)


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    model: torch.nn.Module


class Trainer:
    """One training run: ``model`` and ``optimizer`` (over the model's parameters; its learning rate is the one
    per rank, before scaling by the world size and the schedule) trained on ``batches`` under ``backend``.

    The trainer moves the model to the backend's device and makes model and optimizer distributed (DDP's wrapper,
    Horovod's DistributedOptimizer): pass them plain. ``model_name`` is what checkpoints record to rebuild the
    model (``training.checkpoint.load_model``); by default the one ``config.model`` names for the data's kind.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: BatchSource,
                 backend: Backend, config: TrainConfig, output_dir: str | Path, *, model_name: str | None = None):
        train_split = batches.splits["train"]
        if train_split.rows == 0:
            raise DatasetError(f"split {train_split.url} is empty: nothing to train on")
        self.config, self.batches, self.dist, self.output_dir = config, batches, backend, Path(output_dir)
        self.digests: StepDigests | None = None  # open during fit
        self.model_name = model_name or resolve_model_name(config.model, batches.spec.kind)
        self.optimizer_name = type(optimizer).__name__.lower()
        self.base_lr = optimizer.param_groups[0]["lr"]
        self.device = backend.device  # this rank's GPU, or the CPU
        model.to(self.device)  # the optimizer keeps its parameters: moving a module keeps the Parameter objects
        precision = precision_for(config.mixed_precision, self.device)  # autocast dtype, or float32
        if config.mixed_precision and precision.autocast is None and backend.rank == 0:
            log.info("train.mixed_precision: no GPU here, training in float32 on CPU (the setting only acts on GPU)")
        # An exception of the user's model, loss or collate function on the first batch: one line, exit 2
        guard = guard_for(model, self.model_name, config, kind=batches.spec.kind, output_dir=self.output_dir,
                          rank=backend.rank)
        self.step = StepParts(
            model=backend.wrap_model(model, fp16_compression=config.fp16_compression),  # DDP: gradients averaged
            # Horovod: the optimizer averages gradients over the ranks every backward_passes_per_step batches
            optimizer=backend.distributed_optimizer(optimizer, model,
                                                    backward_passes_per_step=config.backward_passes_per_step,
                                                    fp16_compression=config.fp16_compression),
            loss=loss_function(config.loss), precision=precision,
            # float16 gradients underflow without loss scaling; enabled only for float16 mixed precision on a GPU
            scaler=torch.amp.GradScaler(self.device.type, enabled=precision.scaled),
            dist=backend, guard=guard, grad_clip_norm=config.grad_clip_norm)
        collate = guard.wrap(COLLATE, collate_function(config.collate))  # None, or the inputs -> the model's
        self.placement = Placement(self.device, batches.host_inputs, collate,
                                   scaled_inputs(batches.spec.kind, model, collate))  # images: float [0, 1]
        self.dataset = batches.dataset_entry()  # once: it may read the vocabulary
        self.metrics_log: MetricsLog | None = None  # rank 0's, opened on first use
        self.heartbeat = Heartbeat(position=getattr(getattr(batches, "loader", None), "position", None))

    @property
    def model(self) -> torch.nn.Module:
        """The model as training runs it (inside DDP's wrapper under --backend torch; ``unwrap`` for the model)."""
        return self.step.model

    @property
    def optimizer(self):
        return self.step.optimizer

    @property
    def identity(self) -> str:
        """The dataset snapshot the run trains on."""
        return self.batches.identity

    @property
    def peak_lr(self) -> float:
        return self.base_lr * (self.dist.size if self.config.scale_lr else 1)  # Horovod: scale the lr by the ranks

    def model_checkpoint(self, **counters: Any) -> Checkpoint:
        """The model's checkpoint now (weights, name, config, classes, dataset); ``counters``: epoch, global_step,
        weights_epoch."""
        return Checkpoint.of_model(unwrap(self.model), self.model_name, self.config, classes=self.batches.spec.classes,
                                   class_to_index=self.batches.class_to_index, dataset=self.dataset, **counters)

    def fit(self, *, elastic: bool = False) -> TrainResult:
        """Train from the newest resume point in the output folder (or from the start) until ``config.epochs`` or
        early stopping, then evaluate on the test split; returns the metrics and the trained model. Rank 0 holds
        the output folder locked meanwhile and writes checkpoints, ``metrics.json``, ``metrics.jsonl``,
        TensorBoard events and the evaluation report there. ``elastic``: under Horovod Elastic."""
        with output_lock(self.output_dir, self.dist), self._watchdog(elastic), self._digests():
            progress, resumed_from = self.start_or_resume()
            self._log_start()
            try:
                if elastic:
                    progress = fit_elastic(unwrap(self.model), self.optimizer, progress, self.dist, self._epochs)
                else:
                    self._epochs(progress)
                self.heartbeat.enter("finish")
                return self.finish(progress, resumed_from)
            finally:
                if self.metrics_log is not None:
                    self.metrics_log.close()
                    self.metrics_log = None

    @contextlib.contextmanager
    def _digests(self):
        """This rank's digest file (``<output>/digests/rank<R>.tsv``) open for the run."""
        self.digests = StepDigests(self.output_dir, self.dist)
        try:
            yield
        finally:
            self.digests.close()
            self.digests = None

    def _watchdog(self, elastic: bool):
        """Every rank's watchdog (``training.watchdog``); none under --elastic, where Horovod replaces lost
        workers itself and rank 0 may move."""
        seconds = 0.0 if elastic else self.config.watchdog_seconds
        if elastic and self.config.watchdog_seconds and self.dist.rank == 0:
            log.info("train.watchdog_seconds: no watchdog under --elastic (Horovod Elastic handles lost workers)")
        return Watchdog(self.dist, self.heartbeat, seconds=seconds, output_dir=self.output_dir)

    def _log_start(self) -> None:
        if self.dist.rank != 0:
            return
        dist, split, config = self.dist, self.batches.splits["train"], self.config
        plan = plan_shard(split.row_group_sizes, 0, dist.size)
        log.info("training %s on %s (snapshot %s): %s, %s on %s x %s (%s; rank 0 on "
                 "%s, %s), %d steps/epoch of %d, %s lr %.4g%s", self.model_name, self.batches.name, self.identity,
                 counted(split.rows, "train row"), counted(dist.size, "rank"), counted(dist.hosts, "host"),
                 counted(torch.get_num_threads(), "thread"), dist.name, describe(self.device),
                 self.step.precision.name, plan.steps(config.batch_size), config.batch_size, self.optimizer_name,
                 self.peak_lr, "" if plan.by_row_group else " (fewer row groups than ranks: row sharding)")
        if config.early_stopping_min_delta is not None:
            log.warning("train.early_stopping_min_delta (%g) is the old name of "
                        "train.early_stopping_min_delta_absolute and read as that, a margin in units of the loss: no "
                        "gain smaller than it counts as an improvement; train.early_stopping_min_delta_relative (%g) "
                        "is a share of the best loss",
                        config.early_stopping_min_delta, config.early_stopping_min_delta_relative)

    def start_or_resume(self) -> tuple[Progress, str | None]:
        """A fresh Progress, or the one of the newest resume point (read on rank 0 and broadcast, so the output
        folder need not be shared); model, optimizer and random states restored on every rank."""
        dist = self.dist
        found: tuple[str, Any] = ("none", None)
        if dist.rank == 0:
            try:
                path = resume.find_point(self.config, self.output_dir)
                if path is not None:
                    point = Checkpoint.load(path)
                    resume.check_compatible(point, path, self.config, self.identity, self.model_name)
                    found = ("ok", (str(path), point))
            except CheckpointError as exc:
                found = ("error", str(exc))
        found = dist.broadcast_object(found, name="resume_point")  # every rank raises together, none is left waiting
        if found[0] == "error":
            raise CheckpointError(found[1])
        if found[0] == "none":
            dist.broadcast_state(unwrap(self.model), self.optimizer)
            return Progress(world=dist.size), None
        path, point = found[1]
        unwrap(self.model).load_state_dict(point.model_state)
        self.optimizer.load_state_dict(point.optimizer_state)
        resume.set_random_states(point.random)
        progress = Progress(**point.progress)
        if dist.rank == 0 and (progress.epoch >= self.config.epochs or progress.stopped_early):
            log.info("the run in %s is complete (%d epochs%s, %s): evaluating it again; raise --epochs to train on, "
                     "or --no-resume to start over", self.output_dir, progress.epoch,
                     ", stopped early" if progress.stopped_early else "", path)
        elif dist.rank == 0:
            log.info("resuming from %s: epoch %d, batch %d of it, optimizer step %d", path, progress.epoch + 1,
                     progress.step, progress.global_step)
        return progress, path

    def _epochs(self, progress: Progress, commit: Callable[[Progress], None] | None = None) -> None:
        """Epochs from ``progress`` on until ``config.epochs`` or early stopping. ``commit(progress)`` is called at
        every resume point (the elastic wrapper passes Horovod's state commit)."""
        config, dist = self.config, self.dist
        while progress.epoch < config.epochs and not progress.stopped_early:
            start = time.monotonic()
            clock = StageClock()
            self.heartbeat.enter("train", progress.epoch)
            record = {"epoch": progress.epoch + 1,
                      **train_epoch(self.step, self.batches, self.placement, config, progress, peak_lr=self.peak_lr,
                                    beat=self.heartbeat, save_point=lambda p: self.save_resume_point(p, commit),
                                    clock=clock, digests=self.digests)}
            loader_times, device_busy = record.pop("loader_times"), record.pop("device_busy")
            if self.batches.splits["validation"].rows:
                self.heartbeat.enter("validation")
                val = self.evaluate("validation")
                record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            clock.mark("evaluation")
            record["read_errors"] = self._read_errors(progress.epoch)
            record["seconds"] = round(time.monotonic() - start, 2)
            mine = RankLedger(dist.rank, sum(clock.seconds.values()), progress.step, dict(clock.seconds),
                              dict(loader_times.seconds), loader_times.workers, device_busy)
            record["ledger"] = self._gather_ledger(mine, progress.epoch)
            progress.history.append(record)
            progress.epoch += 1
            progress.start_epoch_over()
            if update_best(progress, record, config) and config.keep_best and dist.rank == 0:
                self.model_checkpoint(epoch=progress.epoch, global_step=progress.global_step).save(self.best_path)
            if dist.rank == 0:
                log.info("epoch %d/%d: train loss %.4f acc %.4f | val loss %s acc %s | lr %.3g | data stall %.0f%% | "
                         "%.1fs | %s", record["epoch"], config.epochs, record["train_loss"], record["train_accuracy"],
                         _fmt(record.get("val_loss")), _fmt(record.get("val_accuracy")), record["lr"],
                         100 * record["data_stall"], record["seconds"], describe_ledger(record["ledger"]))
                self._metrics_log(progress.history[:-1]).log_epoch(record)
                if progress.stopped_early:
                    log.info("%s", describe_stop(progress, config))
            self.heartbeat.set("checkpoint")
            self.save_resume_point(progress, commit)
            self._check_stall_budget(record)
            self._check_read_errors(progress)

    def _read_errors(self, epoch: int) -> int:
        """The stored rows this epoch failed to read (each replaced by a stand-in of its window), over all ranks;
        this rank's go into ``<output>/read_errors.jsonl``, one JSON line each, appended."""
        take = getattr(self.batches, "take_read_errors", None)
        events = take() if take is not None else []
        if events:
            found = {}
            for split in {e["split"] for e in events}:
                ids = {e["sample_id"] for e in events if e["split"] == split}
                found.update(locate_rows(self.batches.splits[split].url, self.batches.spec.kind, ids))
            lines = []
            for e in events:
                source, file = found.get(e["sample_id"], (None, None))
                lines.append(json.dumps({"rank": self.dist.rank, "epoch": e["epoch"], "step": e["batch"] + 1,
                                         "split": e["split"], "sample_id": e["sample_id"], "source": source,
                                         "file": file, "reason": e["reason"], "replaced_by": e["replaced_by"]}))
                log.warning("rank %d, epoch %d, step %d: row %s of %s (%s) did not read (%s): replaced by row %s of "
                            "its window", self.dist.rank, e["epoch"], e["batch"] + 1, e["sample_id"], e["split"],
                            source, e["reason"], e["replaced_by"])
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / outputs.READ_ERRORS_FILE, "a", encoding="utf-8") as handle:  # O_APPEND
                handle.write("".join(line + "\n" for line in lines))
        total = self.dist.allreduce_sum(torch.tensor([float(len(events))], dtype=torch.float64),
                                        name=f"read_errors_{epoch}")
        return int(total.item())

    def _check_read_errors(self, progress: Progress) -> None:
        """``train.max_read_errors`` over the run: every rank sees the same totals, so all stop together."""
        total = sum(int(h.get("read_errors", 0)) for h in progress.history)
        if total > self.config.max_read_errors:
            raise ReadErrorBudgetError(
                f"{total} stored rows failed to read so far, over train.max_read_errors {self.config.max_read_errors}"
                f": {self.output_dir / outputs.READ_ERRORS_FILE} names them and their files (the dataset was damaged "
                "after it was written: `bigtrain verify` finds them; the epoch's resume point is saved)")

    def _gather_ledger(self, mine: RankLedger, epoch: int) -> dict[str, Any]:
        """Every rank's ledger of the epoch, on every rank (one allgather of a row of floats per rank)."""
        rows = self.dist.allgather(torch.tensor([mine.row()], dtype=torch.float64), name=f"ledger_{epoch}")
        ranks = [RankLedger.from_row(r, row.tolist()) for r, row in enumerate(rows)]
        split = self.batches.splits["train"]
        return ledger_summary(ranks, shard_of=lambda rank: shard_files(split, rank, len(ranks)))

    def _check_stall_budget(self, record: dict[str, Any]) -> None:
        """``train.max_data_stall``: every rank sees the same gathered ledger, so all warn or all stop together."""
        budget, ledger = self.config.max_data_stall, record["ledger"]
        if budget is None or ledger["max_data_stall"] <= budget:
            return
        rank = ledger["ranks"][ledger["most_stalled_rank"]]
        message = (f"epoch {record['epoch']}: rank {rank['rank']} waited for data {100 * rank['data_stall']:.1f}% of "
                   f"its step time, over train.max_data_stall {100 * budget:.1f}%; its loader is bound by "
                   f"{rank['bound']} ({counted(rank['workers'], 'worker')})")
        if self.config.stall_budget_action == "fail":
            raise StallBudgetError(message + " (train.stall_budget_action: fail; the epoch's resume point is saved)")
        if self.dist.rank == 0:
            log.warning("%s", message)

    @property
    def best_path(self) -> Path:
        return self.output_dir / outputs.RESUME_DIR / outputs.BEST_FILE

    def restore_best(self, progress: Progress) -> int:
        """The weights of the best validation epoch on every rank (read by rank 0, broadcast); returns the epoch
        whose weights the model now holds. Without validation, or with train.keep_best off, the last epoch's."""
        best = progress.best_epoch if self.config.keep_best else None
        if best is None or best == progress.epoch:
            return progress.epoch
        outcome: Any = best
        if self.dist.rank == 0:
            try:
                kept = Checkpoint.load(self.best_path)
                if kept.epoch != best:
                    raise CheckpointError(f"{self.best_path} holds epoch {kept.epoch}, not {best}")
                unwrap(self.model).load_state_dict(kept.model_state)
            except CheckpointError as exc:  # e.g. an elastic run whose new rank 0 is on another host
                log.warning("keeping the last epoch's weights, not those of the best validation epoch %d: %s", best,
                            exc)
                outcome = progress.epoch
        outcome = self.dist.broadcast_object(outcome, name="best_epoch")
        self.dist.broadcast_state(unwrap(self.model), self.optimizer)
        return outcome

    def _metrics_log(self, history: list[dict[str, Any]]) -> MetricsLog:
        """Rank 0's metrics.jsonl and TensorBoard writer, opened on first use (under --elastic, rank 0 may
        change)."""
        if self.metrics_log is None:
            self.metrics_log = MetricsLog(self.output_dir, history=history)
        return self.metrics_log

    def save_resume_point(self, progress: Progress, commit=None) -> None:
        if self.dist.rank == 0:
            resume.save_point(self.output_dir, self.model_checkpoint(), self.optimizer, progress,
                              self.config.keep_checkpoints)
        if commit is not None:
            commit(progress)

    def evaluate(self, split_name: str, check_ids: bool = False) -> dict[str, Any]:
        """``training.evaluation.evaluate`` of the split with this run's parts."""
        return evaluate(self.step, self.batches, self.placement, split_name, batch_size=self.config.batch_size,
                        beat=self.heartbeat, check_ids=check_ids)

    def finish(self, progress: Progress, resumed_from: str | None) -> TrainResult:
        """Test evaluation; on rank 0 the final checkpoint, metrics.json and the evaluation report."""
        dist, classes = self.dist, self.batches.spec.classes
        weights_epoch = self.restore_best(progress)
        val_losses = val_loss_summary(progress.history, weights_epoch)
        if dist.rank == 0 and weights_epoch != progress.epoch:
            log.info("%s", describe_kept(weights_epoch, val_losses, progress.epoch))
        self.heartbeat.enter("test")
        test = self.evaluate("test", check_ids=True)
        self.heartbeat.enter("finish")
        if test["rows"] == 0 and dist.rank == 0:
            log.warning("the test split of %s is empty: test metrics are null", self.batches.name)
        compared = baselines(self.batches, dist, test_rows=test["per_class_rows"], batch_size=self.config.batch_size)
        metrics = {
            "test_accuracy": test["accuracy"], "test_loss": test["loss"], "test_rows": test["rows"],
            "baselines": compared, "weights_epoch": weights_epoch, **val_losses,
            "best_epoch": progress.best_epoch,  # the last epoch that improved (read by benchmarks/text_models.py)
            "parameters": sum(p.numel() for p in unwrap(self.model).parameters()),
            "per_class_accuracy": dict(zip(classes, test["per_class_accuracy"])),
            "per_class_rows": dict(zip(classes, test["per_class_rows"])),
            "history": progress.history, "epochs_completed": progress.epoch, "stopped_early": progress.stopped_early,
            "world_size": dist.size, "hosts": dist.hosts, "backend": dist.name, "lr": self.peak_lr,
            "device": str(self.device), "precision": self.step.precision.name, "optimizer": self.optimizer_name,
            "model": self.model_name, "dataset": self.batches.name, "snapshot_id": self.identity,
            "train_rows": self.batches.splits["train"].rows, "resumed_from": resumed_from,
            # stored rows that failed to read (read_errors.jsonl): in the epochs, and in the test evaluation now
            "read_errors": sum(int(h.get("read_errors", 0)) for h in progress.history)
            + self._read_errors(progress.epoch + 1),
            "config": asdict(self.config),
        }
        if dist.rank == 0:
            self._write_outputs(progress, metrics, test)
        return TrainResult(metrics, unwrap(self.model))

    def _write_outputs(self, progress: Progress, metrics: dict[str, Any], test: dict[str, Any]) -> None:
        final = self.output_dir / outputs.CHECKPOINT_FILE
        self.model_checkpoint(epoch=progress.epoch, global_step=progress.global_step,
                              weights_epoch=metrics["weights_epoch"]).save(final)
        atomic.write_json(self.output_dir / outputs.METRICS_FILE, metrics)
        written = []
        if test["rows"]:
            report = classification_report(test["confusion"].numpy(), self.batches.spec.classes)
            report["baselines"] = metrics["baselines"]
            report["weights_epoch"] = metrics["weights_epoch"]
            written = write_evaluation_report(self.output_dir, report, progress.history)
        log.info("test accuracy %s, loss %s on %d rows (%s); wrote %s, %s%s", _fmt(test["accuracy"]),
                 _fmt(test["loss"]), test["rows"], describe_baselines(metrics["baselines"]), final,
                 self.output_dir / outputs.METRICS_FILE, "".join(f", {p.name}" for p in written))


@contextlib.contextmanager
def output_lock(output_dir: Path, dist):
    """Rank 0 holds ``<output>/.bigtrain-train.lock`` for the whole run: two runs writing one output folder would
    interleave their checkpoints. Every rank learns the outcome, so all fail together (LockHeld: exit 75)."""
    with contextlib.ExitStack() as stack:
        outcome = "ok"
        if dist.rank == 0:
            try:  # hold makes the folder: a run that fails before writing anything leaves none
                stack.enter_context(hold(str(output_dir / outputs.LOCK_FILE), what=f"training into {output_dir}",
                                         remove=True))
            except LockHeld as exc:
                outcome = str(exc)
        outcome = dist.broadcast_object(outcome, name="output_lock")
        if outcome != "ok":
            raise LockHeld(outcome)
        yield


def update_best(progress: Progress, record: dict[str, Any], config: TrainConfig) -> bool:
    """Track the best validation loss and its epoch, and stop early after ``early_stopping_patience`` epochs without
    an improvement (0: never). An epoch improves when its loss is lower than the best by more than
    ``config.early_stopping_margin`` (the larger of a share of the best and an absolute margin; Keras counts
    ``min_delta`` alike); a loss that is not finite never does. True when this epoch is the new best: its weights
    are the ones to keep."""
    val_loss = record.get("val_loss")
    if val_loss is None:
        return False
    best = progress.best_val_loss
    if math.isfinite(val_loss) and (best is None or val_loss < best - config.early_stopping_margin(best)):
        progress.best_val_loss, progress.best_epoch, progress.bad_epochs = val_loss, record["epoch"], 0
        return True
    progress.bad_epochs += 1
    progress.stopped_early = 0 < config.early_stopping_patience <= progress.bad_epochs
    return False


def describe_margins(config: TrainConfig) -> str:
    """"0.1% of it and 0.001": the margins an improvement must beat, as the early-stopping line names them."""
    absolute = config.early_stopping_absolute_margin
    parts = ([f"{100 * config.early_stopping_min_delta_relative:g}% of it"] if config.early_stopping_min_delta_relative
             else []) + ([f"{absolute:g}"] if absolute else [])
    return " and ".join(parts) or "0"


def describe_stop(progress: Progress, config: TrainConfig) -> str:
    """The line that says why a run stopped early."""
    if progress.best_epoch is None:
        return f"early stopping: no finite validation loss in {counted(progress.bad_epochs, 'epoch')}"
    return (f"early stopping: validation loss has not improved on epoch {progress.best_epoch}'s "
            f"{_fmt_loss(progress.best_val_loss)} by more than {describe_margins(config)} for "
            f"{counted(config.early_stopping_patience, 'epoch')}")


def describe_kept(weights_epoch: int, val_losses: dict[str, Any], last_epoch: int) -> str:
    """The closing line about the weights a run ends with, naming their validation loss and, where another epoch's
    was lower by less than the early-stopping margins, that one."""
    kept, lowest, lowest_epoch = (val_losses["kept_val_loss"], val_losses["lowest_val_loss"],
                                  val_losses["lowest_val_loss_epoch"])
    if lowest_epoch == weights_epoch:
        about = f"validation loss {_fmt_loss(kept)}, the lowest"
    else:
        about = (f"validation loss {_fmt_loss(kept)}; epoch {lowest_epoch}'s {_fmt_loss(lowest)} was lower by less "
                 "than the early-stopping margins")
    return f"keeping the weights of epoch {weights_epoch} ({about}), not those of the last epoch {last_epoch}"


def describe_baselines(compared: dict[str, Any]) -> str:
    """"majority class 0.1111, bag-of-words 0.7100": the closing line's comparison."""
    majority, words = compared["majority_class"], compared.get("bag_of_words")
    text = f"majority class {_fmt(majority['accuracy'])}"
    return text + (f", bag-of-words naive Bayes {_fmt(words['accuracy'])}" if words else "")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _fmt_loss(value: float | None) -> str:
    """Four significant digits: a loss of 0.0001 is not 0.0000."""
    return "-" if value is None else f"{value:.4g}"
