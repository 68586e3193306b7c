"""A digest per training step: which rows each rank trained on, in a few bytes a step.

Every rank appends one line per step to ``<output>/digests/rank<R>.tsv`` (``outputs.DIGESTS_DIR``)::

    epoch  step  world  digest

``epoch`` counts from 1 and ``step`` from 1 within the epoch, as the logs do; ``world`` is the number of ranks
that ran it; ``digest`` is the first 8 bytes (hex) of the BLAKE2b hash of the batch's ``sample_id``s, in batch
order, as little-endian int64 (a padded shard's repeated rows included). The file is written line by line, so a
killed run keeps every step it ran; a resumed run appends the steps it trains again after its resume point, and the
last line of an (epoch, step) is the one that counts (``read``). Two runs at one world size trained the same rows
in the same order exactly when ``read`` gives the same digests for both (docs/guide.md shows the shell line).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from training.outputs import DIGESTS_DIR


def digest(sample_ids) -> str:
    """The digest of one batch's sample ids (a tensor or an array), in their order."""
    ids = np.ascontiguousarray(np.asarray(sample_ids), dtype="<i8")
    return hashlib.blake2b(ids.tobytes(), digest_size=8).hexdigest()


def path_of(output_dir: str | Path, rank: int) -> Path:
    return Path(output_dir) / DIGESTS_DIR / f"rank{rank}.tsv"


class StepDigests:
    """One rank's digest file, opened at its first step and kept for the run (``close`` when done). ``dist`` (a
    backend: ``rank``, ``size``) is asked at every step: under Horovod Elastic a rank's number and the world size can
    change between epochs."""

    def __init__(self, output_dir: str | Path, dist):
        self.output_dir, self.dist = output_dir, dist
        self._file, self._rank = None, None  # no file before the first step: a refused run leaves none

    def record(self, epoch: int, step: int, sample_ids) -> None:
        """Step ``step`` (from 1) of epoch ``epoch`` (from 1) trained the rows ``sample_ids``."""
        if self._rank != self.dist.rank:
            self.close()
            path = path_of(self.output_dir, self.dist.rank)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file, self._rank = path.open("a", encoding="ascii", buffering=1), self.dist.rank  # a line a step
        ids = sample_ids.numpy() if hasattr(sample_ids, "numpy") else sample_ids
        self._file.write(f"{epoch}\t{step}\t{self.dist.size}\t{digest(ids)}\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._rank = None, None


def read(output_dir: str | Path) -> dict[tuple[int, int, int], tuple[int, str]]:
    """(rank, epoch, step) -> (world, digest) of a run's digest files, the last line of each step winning."""
    found: dict[tuple[int, int, int], tuple[int, str]] = {}
    for path in sorted((Path(output_dir) / DIGESTS_DIR).glob("rank*.tsv")):
        rank = int(path.stem[len("rank"):])
        for line in path.read_text(encoding="ascii").splitlines():
            epoch, step, world, value = line.split("\t")
            found[(rank, int(epoch), int(step))] = (int(world), value)
    return found
