"""Which rows each rank reads: Petastorm's sharding of row groups, planned from the Parquet footers.

Sharding follows Petastorm (``cur_shard``/``shard_count`` assign row groups by position). Because the preprocessing
job writes row groups of near-equal size, shards are near-equal, but never assumed equal:

* every rank computes, from the Parquet footers, how many rows each rank's shard holds (``plan_shard``);
* a training epoch runs ``ceil(max_rows_of_any_rank / batch_size)`` steps on every rank, a rank whose shard is
  smaller topping up its last batches from a fresh pass over its own shard (so allreduce never waits on a rank
  that has stopped; ``training.order``);
* the first pass over the shard is counted, and a count that differs from the footers is an error
  (``DataCoverageError``), never a silently short epoch;
* with fewer row groups than ranks, each rank reads every row group and keeps every ``world``-th row.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from core.errors import DatasetError
from dataset.info import SplitInfo
from training.ledger import LoaderTimes


class DataCoverageError(DatasetError):
    """The rows a rank or an epoch delivered differ from what the dataset holds."""


@dataclass(frozen=True)
class ShardPlan:
    rank: int
    world: int
    by_row_group: bool        # False: fewer row groups than ranks, so every rank reads all and keeps every world-th row
    local_rows: int           # rows this rank's shard holds
    rows_per_rank: tuple[int, ...]
    # An epoch resumed on another world size (``training.order.remainder``): the shard is this rank's part of the
    # rows the earlier stretches of the epoch left, trained from the epoch's step ``first_step`` on; ``stretches``:
    # each earlier stretch's (world size, steps trained by its end). Empty for a plain epoch.
    first_step: int = 0
    stretches: tuple[tuple[int, int], ...] = ()

    @property
    def max_rows(self) -> int:
        return max(self.rows_per_rank)

    def steps(self, batch_size: int) -> int:
        """Training steps per epoch, the same on every rank (a resumed stretch: those before it included)."""
        return self.first_step + math.ceil(self.max_rows / batch_size)


def plan_shard(row_group_sizes: tuple[int, ...] | list[int], rank: int, world: int) -> ShardPlan:
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a world of {world}")
    total = sum(row_group_sizes)
    if len(row_group_sizes) >= world:
        per_rank = tuple(sum(n for i, n in enumerate(row_group_sizes) if i % world == r) for r in range(world))
        return ShardPlan(rank, world, True, per_rank[rank], per_rank)
    per_rank = tuple(len(range(r, total, world)) for r in range(world))
    return ShardPlan(rank, world, False, per_rank[rank], per_rank)


class EpochCounter:
    """Counts the first-pass rows of one epoch on this rank and checks them against the plan; ``loader`` holds the
    loader's busy seconds of the pass (``training.ledger``), which a source that times its stages adds to."""

    def __init__(self, split: SplitInfo, plan: ShardPlan):
        self.split, self.plan, self.first_pass_rows, self.padding_rows = split, plan, 0, 0
        self.loader = LoaderTimes()

    def check_first_pass(self) -> None:
        if self.first_pass_rows != self.plan.local_rows:
            raise DataCoverageError(
                f"rank {self.plan.rank}/{self.plan.world} read {self.first_pass_rows} rows of split "
                f"{self.split.url}, but its shard holds {self.plan.local_rows} (its row groups): refusing to train "
                "on silently missing data")


def shard_files(split: SplitInfo, rank: int, world: int, *, most: int = 20) -> dict:
    """Rank ``rank``'s shard of ``split`` as files and the row groups read from each (the first ``most`` files):
    the ledger names the slowest rank's shard with it."""
    plan = plan_shard(split.row_group_sizes, rank, world)
    groups = [g for g in range(len(split.row_group_sizes)) if not plan.by_row_group or g % world == rank]
    files: dict[str, list[int]] = {}
    for g in groups:
        if g < len(split.row_group_files):
            path, index = split.row_group_files[g]
            files.setdefault(path, []).append(index)
    shown = dict(list(files.items())[:most])
    return {"rows": plan.local_rows, "row_groups": len(groups), "files": shown, "more_files": len(files) - len(shown)}
