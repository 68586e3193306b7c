"""Logging for every entry point: bigtrain's own loggers at INFO on rank 0 and WARNING elsewhere, so a
multi-process run prints one story."""
from __future__ import annotations

import logging
import sys
import warnings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OUR_LOGGERS = ("bigtrain", "core", "dataset", "pipelines", "training", "inference", "orchestration", "jobs",
               "benchmarks")


class CurrentStderr(logging.StreamHandler):
    """A handler writing to ``sys.stderr`` as it is when a line is logged, not as it was at setup: a test runner,
    a notebook or a job's own redirection may swap it, and a handler holding the old one would write to a closed
    stream ("--- Logging error ---")."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass  # always the current sys.stderr


def setup_logging(*, quiet: bool = False, rank: int = 0) -> None:
    """INFO on rank 0, WARNING elsewhere (and everywhere with ``quiet``); other ranks' lines carry their rank."""
    level = logging.WARNING if (quiet or rank != 0) else logging.INFO
    prefix = "" if rank == 0 else f"[rank {rank}] "
    # Libraries log at WARNING; bigtrain's own loggers at `level` (py4j reports its retried connections at INFO).
    logging.basicConfig(level=logging.WARNING, format=prefix + LOG_FORMAT, handlers=[CurrentStderr()], force=True)
    for ours in OUR_LOGGERS:
        logging.getLogger(ours).setLevel(level)
    # petastorm 0.13 uses pyarrow's legacy dataset API (docs/stack.md: the previous stack pins pyarrow 14 for it); its deprecation
    # warnings say nothing a bigtrain user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"petastorm(\.|$)")
    # PySpark 4.0 warns at every pandas UDF that it "does not yet fully support pandas >= 3.0.0"; bigtrain's jobs
    # run and are tested on pandas 3 (docs/stack.md), so the warning tells a user nothing to do.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 rank``, ``2 ranks``, ``0 epochs``: a count with its noun in the right number."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def with_article(word: str) -> str:
    """``an image``, ``a sequence``: the indefinite article for a word of bigtrain's messages."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"
