"""The rows of one training step, rebuilt without the training processes (``bigtrain batches``).

An epoch's order is a function of the seed, the epoch, the rank and the world size (``training.order``), and the
loader starts an epoch at any step without reading what comes before it: so the batch that rank R trained at step
S of epoch E is found again from the dataset snapshot and the settings a run recorded in its newest checkpoint
(the final ``checkpoint.pt`` or a resume point), with the world size of that step's line in
``<output>/digests/rank<R>.tsv``. ``--check`` compares the rebuilt batch's digest with the logged one.
"""
from __future__ import annotations

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
    logged_steps = digests.read(run)
    logged = logged_steps.get((rank, epoch, step))
    if world is None:  # that step's, else that epoch's on any rank, else the run's last resume point's
        same_epoch = [w for (_, e, _), (w, _) in logged_steps.items() if e == epoch]
        world = logged[0] if logged else same_epoch[-1] if same_epoch else (trained.progress or {}).get("world", 1)
    if not 0 <= rank < world:
        raise UsageError(f"--rank {rank}: the run had {world} rank{'s' if world != 1 else ''} at that step")
    if epoch < 1 or step < 1:
        raise UsageError("--epoch and --step count from 1, as the training logs do")
    url = trained.dataset.get("url")
    if not url:
        raise CheckpointError(f"{run}: its checkpoint does not record the dataset snapshot it was trained on")
    source = PetastormSource.open(url, config)
    try:
        split = source.splits["train"]
        plan = plan_shard(split.row_group_sizes, rank, world)
        steps = plan.steps(config.batch_size)
        if step > steps:
            raise UsageError(f"--step {step}: epoch {epoch} has {steps} steps per rank at world size {world}")
        batch = next(iter(source.training_batches(plan, batch_size=config.batch_size, epoch=epoch - 1,
                                                  counter=EpochCounter(split, plan), start=step - 1)))
    finally:
        source.close()
    ids = [int(i) for i in (batch[2].numpy() if hasattr(batch[2], "numpy") else batch[2])]
    return StepRows(epoch=epoch, step=step, rank=rank, world=world, steps=steps, dataset=url, sample_ids=ids,
                    rows=_lookup(split.url, trained, ids), digest=digests.digest(ids),
                    logged=logged[1] if logged else None)


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
