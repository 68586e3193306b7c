"""The rows of one training step, rebuilt without the training processes (``bigtrain batches``).

An epoch's order is a function of the seed, the epoch, the rank and the world size (``training.order``), and the
loader starts an epoch at any step without reading what comes before it: so the batch that rank R trained at step
S of epoch E is found again from the dataset snapshot and the settings a run recorded in its newest checkpoint
(the final ``checkpoint.pt`` or a resume point), with the world size of that step's line in
``<output>/digests/rank<R>.tsv``. ``--check`` compares the rebuilt batch's digest with the logged one.

An epoch resumed on another world size is rebuilt too: its stretches (the world size and last step of each part of
the epoch, ``training.order``) are in the history of the run's newest resume point (a finished epoch's record) or in
its progress (the epoch it stopped in), and in ``metrics.json``'s history; a step after the change is rebuilt from
the rows the earlier stretches left, at the world size of its stretch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from core.errors import CheckpointError, UsageError
from core.paths import filesystem
from dataset import layout
from dataset.rows import LABEL, SAMPLE_ID, rows_of
from training import checkpoint, digests, outputs
from training.checkpoint import Checkpoint
from training.petastorm_source import PetastormSource
from training.shards import EpochCounter, plan_shard


@dataclass(frozen=True)
class StepRows:
    epoch: int             # from 1
    step: int              # from 1, within the epoch
    rank: int
    world: int
    steps: int             # the epoch's steps on every rank
    real: int              # the batch's first ``real`` rows are of the rank's shard; the rest pad it (repeats)
    stretches: list        # an epoch resumed on another world size: [world, last step] of each stretch; else []
    dataset: str           # the snapshot read
    sample_ids: list[int]  # in batch order (a padded shard's repeats included)
    rows: list[dict]       # sample_id, source, label (class name), in batch order
    digest: str            # training.digests.digest of sample_ids
    logged: str | None     # the digest the run logged for this step, if any


def recorded_checkpoint(run: Path) -> Path:
    """The newest checkpoint of a training output: the final one, else the newest resume point."""
    final = run / outputs.CHECKPOINT_FILE
    newest = final if final.is_file() else checkpoint.latest_resume_point(run)
    if newest is None:
        raise UsageError(f"--run {run}: no checkpoint.pt and no resume point in {run / outputs.RESUME_DIR}: not a "
                         "training output, or its run ended before its first resume point")
    return newest


def step_rows(run: str | Path, *, epoch: int, step: int, rank: int = 0, world: int | None = None) -> StepRows:
    """The rows rank ``rank`` trained at step ``step`` of epoch ``epoch`` (both from 1) of the run in ``run``."""
    run = Path(run)
    trained = Checkpoint.load(recorded_checkpoint(run))
    config = replace(trained.train_config(), loader_workers=0, progress_bar="never")
    if epoch < 1 or step < 1:
        raise UsageError("--epoch and --step count from 1, as the training logs do")
    logged_steps = digests.read(run)
    logged = logged_steps.get((rank, epoch, step))
    stretches = epoch_stretches(run, epoch)
    earlier, stretch_world = stretch_of(stretches, step)
    if stretch_world is not None:  # an epoch resumed on another world size: the step's stretch decides
        if world is not None and world != stretch_world:
            raise UsageError(f"--world {world}: step {step} of epoch {epoch} ran on {stretch_world} rank"
                             f"{'s' if stretch_world != 1 else ''} (the epoch was resumed on another world size: "
                             f"{describe_stretches(stretches)})")
        world = stretch_world
        if logged and logged[0] != world:  # a line of a run stopped past its resume point: not what trained
            logged = None
    if world is None:  # that step's, else that epoch's on any rank, else the run's last resume point's
        same_epoch = [w for (_, e, _), (w, _) in logged_steps.items() if e == epoch]
        world = logged[0] if logged else same_epoch[-1] if same_epoch else (trained.progress or {}).get("world", 1)
    if not 0 <= rank < world:
        raise UsageError(f"--rank {rank}: the run had {world} rank{'s' if world != 1 else ''} at that step")
    url = trained.dataset.get("url")
    if not url:
        raise CheckpointError(f"{run}: its checkpoint does not record the dataset snapshot it was trained on")
    source = PetastormSource.open(url, config)
    try:
        split = source.splits["train"]
        if earlier:
            plan = source.resumed_plan(rank, world, earlier, batch_size=config.batch_size, epoch=epoch - 1)
        else:
            plan = plan_shard(split.row_group_sizes, rank, world)
        steps = plan.steps(config.batch_size)
        if step > steps:
            raise UsageError(f"--step {step}: epoch {epoch} has {steps} steps per rank at world size {world}")
        batch = next(iter(source.training_batches(plan, batch_size=config.batch_size, epoch=epoch - 1,
                                                  counter=EpochCounter(split, plan), start=step - 1)))
    finally:
        source.close()
    ids = [int(i) for i in (batch[2].numpy() if hasattr(batch[2], "numpy") else batch[2])]
    real = max(0, min(len(ids), plan.local_rows - (step - 1 - plan.first_step) * config.batch_size))
    return StepRows(epoch=epoch, step=step, rank=rank, world=world, steps=steps, real=real,
                    stretches=[list(s) for s in stretches], dataset=url, sample_ids=ids,
                    rows=_lookup(split.url, trained, ids), digest=digests.digest(ids),
                    logged=logged[1] if logged else None)


def epoch_stretches(run: Path, epoch: int) -> list[tuple[int, int | None]]:
    """The stretches of epoch ``epoch`` (from 1) of the run in ``run``: (world size, its last step; None for the
    stretch still under way) of each, when the epoch was resumed on another world size; else []. From the newest
    resume point (its history, or its progress for the epoch it is in), else ``metrics.json``'s history."""
    history, progress = None, None
    point = checkpoint.latest_resume_point(run)
    if point is not None:
        progress = Checkpoint.load(point).progress or {}
        history = progress.get("history")
    if history is None and (run / outputs.METRICS_FILE).is_file():
        history = json.loads((run / outputs.METRICS_FILE).read_text()).get("history")
    history = history or []
    if epoch <= len(history):
        return [(int(w), int(e)) for w, e in history[epoch - 1].get("stretches") or []]
    if progress and progress.get("epoch") == epoch - 1 and progress.get("stretches"):
        return [(int(w), int(e)) for w, e in progress["stretches"]] + [(int(progress["world"]), None)]
    return []


def stretch_of(stretches: list[tuple[int, int | None]], step: int) -> tuple[tuple[tuple[int, int], ...], int | None]:
    """(the stretches before the one step ``step`` (from 1) is in, that one's world size); ((), None) for an epoch
    trained at one world size."""
    for i, (world, last) in enumerate(stretches):
        if last is None or step <= last or i == len(stretches) - 1:
            return tuple((w, e) for w, e in stretches[:i]), world
    return (), None


def describe_stretches(stretches: list[tuple[int, int | None]]) -> str:
    """"steps 1-4 on 2 ranks, 5-12 on 1": an epoch's stretches in words."""
    parts, first = [], 1
    for world, last in stretches:
        parts.append(f"steps {first}-{last if last is not None else '...'} on {world}")
        first = (last or 0) + 1
    return ", ".join(parts)


def _lookup(split_url: str, trained: Checkpoint, ids: list[int]) -> list[dict]:
    """sample_id, source and label of each id, from the split's Parquet files (three columns read)."""
    source_column = rows_of(trained.kind).source
    names = {index: name for name, index in trained.class_to_index.items()}
    wanted, found = set(ids), {}
    fs, _ = filesystem(split_url)
    for file, group, _ in layout.row_groups(split_url):
        with layout.open_parquet(fs, file) as parquet:
            table = parquet.read_row_group(group, columns=[SAMPLE_ID, source_column, LABEL], use_threads=False)
        for sid, where, label in zip(*(table.column(c).to_pylist() for c in (SAMPLE_ID, source_column, LABEL))):
            if sid in wanted:
                found[sid] = {"sample_id": sid, "source": where, "label": names.get(label, str(label))}
        if len(found) == len(wanted):
            break
    return [found[i] for i in ids]
