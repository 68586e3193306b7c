"""The stage ledger: where each rank's epoch went, stage by stage, and which rank and stage the others waited for.

Two kinds of time are kept per rank and epoch:

* **The training thread's stages** (``TRAINER_STAGES``), timed back to back by one ``StageClock``, so they add up
  to the epoch's wall time: ``start`` (from the epoch's start to its first batch: the workers' first reads),
  ``wait`` (a step waiting for its batch: the exposed data stall), ``copy`` (taking the batch over, and on a GPU
  making the step wait for its copy), ``compute`` (forward, backward and the optimizer's own work), ``collective``
  (waiting for the gradients of the other ranks: Horovod's synchronize; under DDP the allreduce runs inside
  backward and is counted as compute), ``checkpoint`` (mid-epoch resume points), ``evaluation`` (the validation
  pass) and ``other`` (metrics, logs, progress).
* **The loader's stages** (``LOADER_STAGES``), busy seconds of work that runs beside the training thread:
  ``read`` (Parquet to columns), ``decode`` (PNG/JPEG to pixels, .npy headers cut off), ``batch`` (rows cut and
  packed into batches) summed over the worker processes, and ``handover`` (the training process's side: a chunk's
  transfer from its worker, unpacking, ordering, counting, the ``train.collate`` hook and issuing the copy to the
  device).

``bound``: the loader stage with the most wall-clock time once divided over the processes that run it in parallel;
when a rank waits for data, that is the stage to speed up (more workers for read, decode and batch; a faster
``train.collate`` or fewer, larger batches for handover).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from core.logs import counted

TRAINER_STAGES = ("start", "wait", "copy", "compute", "collective", "checkpoint", "evaluation", "other")
STEP_STAGES = ("wait", "copy", "compute", "collective", "checkpoint", "other")  # the steps, after the first batch
LOADER_STAGES = ("read", "decode", "batch", "handover")
# wall, steps, workers, device busy seconds (-1: not measured), then the stages: the layout of one rank's row
_HEAD = ("wall", "steps", "workers", "device_busy")
WIDTH = len(_HEAD) + len(TRAINER_STAGES) + len(LOADER_STAGES)


class StageClock:
    """Back-to-back stage timing on one thread: ``mark(stage)`` adds the time since the previous mark to
    ``stage``. Nothing between two marks goes unaccounted, so the stages add up to the time since the clock began."""
    __slots__ = ("seconds", "_at", "_started")

    def __init__(self, stages: Sequence[str] = TRAINER_STAGES):
        self.seconds = dict.fromkeys(stages, 0.0)
        self._at = self._started = time.perf_counter()

    def mark(self, stage: str) -> float:
        """Close the running stage as ``stage``; returns its seconds."""
        now = time.perf_counter()
        took = now - self._at
        self.seconds[stage] += took
        self._at = now
        return took

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._started


@dataclass
class LoaderTimes:
    """The loader's busy seconds of one pass (``LOADER_STAGES``), and how many worker processes shared them."""
    workers: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LOADER_STAGES, 0.0))

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += max(0.0, seconds)


@dataclass(frozen=True)
class RankLedger:
    """One rank's epoch."""
    rank: int
    wall: float
    steps: int
    trainer: dict[str, float]
    loader: dict[str, float]
    workers: int
    device_busy: float | None = None   # GPU seconds of the steps (CUDA events), None on a CPU

    def row(self) -> list[float]:
        """The fixed-width row the ranks gather (``WIDTH`` floats)."""
        head = [self.wall, float(self.steps), float(self.workers),
                -1.0 if self.device_busy is None else self.device_busy]
        return head + [self.trainer.get(s, 0.0) for s in TRAINER_STAGES] + [self.loader.get(s, 0.0)
                                                                            for s in LOADER_STAGES]

    @classmethod
    def from_row(cls, rank: int, row: Sequence[float]) -> "RankLedger":
        if len(row) != WIDTH:
            raise ValueError(f"a ledger row holds {WIDTH} values, got {len(row)}")
        wall, steps, workers, busy = row[:4]
        trainer = dict(zip(TRAINER_STAGES, row[4:4 + len(TRAINER_STAGES)]))
        loader = dict(zip(LOADER_STAGES, row[4 + len(TRAINER_STAGES):]))
        return cls(rank, float(wall), int(steps), {k: float(v) for k, v in trainer.items()},
                   {k: float(v) for k, v in loader.items()}, int(workers), None if busy < 0 else float(busy))

    @property
    def stepping(self) -> float:
        """Seconds of the train steps after the first batch arrived: what the stall is a share of."""
        return sum(self.trainer[s] for s in STEP_STAGES)

    @property
    def data_stall(self) -> float:
        """The share of its steps' time this rank waited for data (the epoch's first batch apart: ``start``)."""
        return self.trainer["wait"] / self.stepping if self.stepping > 0 else 0.0

    @property
    def own_time(self) -> float:
        """The epoch's time less the time spent waiting for other ranks: the rank with the most holds the others
        up."""
        return self.wall - self.trainer["collective"]

    @property
    def bound(self) -> str | None:
        """The loader stage with the most wall-clock time, worker stages divided over the workers (None: a source
        that does not time its stages, such as data held in memory)."""
        parallel = max(1, self.workers)
        share = {s: self.loader[s] / (1 if s == "handover" else parallel) for s in LOADER_STAGES}
        stage = max(share, key=share.get)
        return stage if share[stage] > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "wall_s": round(self.wall, 4), "steps": self.steps,
                "data_stall": round(self.data_stall, 4),
                "gpu_busy": None if self.device_busy is None or not self.wall else round(self.device_busy / self.wall,
                                                                                        4),
                "trainer_s": {k: round(v, 4) for k, v in self.trainer.items()},
                "loader_s": {k: round(v, 4) for k, v in self.loader.items()}, "workers": self.workers,
                "bound": self.bound}


def summary(ranks: Sequence[RankLedger], shard_of=None) -> dict[str, Any]:
    """The epoch's ledger over all ranks (``metrics.json``: ``history[i]["ledger"]``): every rank's stages, the
    slowest rank (the most time of its own), its shard (``shard_of(rank)``: files and row groups), and the stage
    that dominates its wait."""
    slowest = max(ranks, key=lambda r: r.own_time)
    stalled = max(ranks, key=lambda r: r.data_stall)
    out = {"ranks": [r.to_dict() for r in ranks], "slowest_rank": slowest.rank, "bound": slowest.bound,
           "max_data_stall": round(stalled.data_stall, 4), "most_stalled_rank": stalled.rank}
    if shard_of is not None:
        out["slowest_shard"] = shard_of(slowest.rank)
    return out


def describe(ledger: dict[str, Any], *, notable: float = 0.05) -> str:
    """The epoch log line's part on the slowest rank: its time, and the loader stage that held it up when it waited
    for data for more than ``notable`` of its steps, else its largest stage:
    ``slowest rank 1 (3.20s): waits 13%, loader bound by decode (2 workers)`` or
    ``slowest rank 0 (3.20s): compute 85%``."""
    rank = ledger["ranks"][ledger["slowest_rank"]]
    text = f"slowest rank {rank['rank']} ({rank['wall_s']:.2f}s): "
    if rank["data_stall"] >= notable and rank["bound"] is not None:
        return f"{text}waits {100 * rank['data_stall']:.0f}%, loader bound by {rank['bound']} ({counted(rank['workers'], 'worker')})"
    stages = rank["trainer_s"]
    top = max(stages, key=stages.get)
    return f"{text}{top} {100 * stages[top] / rank['wall_s'] if rank['wall_s'] else 0:.0f}%"
