"""Elastic training on Horovod Elastic: ``horovodrun --min-np/--max-np --host-discovery-script ...`` starts the
workers, ``hvd.elastic.run`` restarts the epoch loop when a worker dies or hosts come and go.

At every resume point the loop commits a ``TorchState`` (model, optimizer and the run's ``Progress``) in memory.
When a worker fails, the others roll back to the last commit, Horovod re-forms the ring without it, and the loop
goes on: the train split is re-sharded for the new world size (an epoch cut short goes on with the rows no rank
trained in it yet, dealt to the new ranks: ``training.order.remainder``), and the learning rate follows the new
size where ``train.scale_lr`` is set.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from core.logs import setup_logging
from training.distributed import Backend
from training.resume import Progress

log = logging.getLogger("bigtrain.train")
# fit(progress, commit): runs epochs from progress, calling commit(progress) at every resume point
Fit = Callable[[Progress, Callable[[Progress], None]], None]


def fit_elastic(model: torch.nn.Module, optimizer: Any, progress: Progress, dist: Backend, fit: Fit) -> Progress:
    """Run ``fit(progress, commit)`` under ``hvd.elastic.run``, committing ``model`` (unwrapped: what is saved),
    ``optimizer`` and the progress at every resume point; returns the final Progress."""
    import horovod.torch as hvd

    # Horovod: what is rolled back to on a failure and sent to workers that join.
    state = hvd.elastic.TorchState(model=model, optimizer=optimizer, progress=progress)

    def on_reset() -> None:
        setup_logging(rank=dist.rank)  # Horovod: ranks are renumbered; rank 0 (maybe another process now) logs
        if dist.rank == 0:
            log.warning("elastic: the workers changed, training goes on with %d ranks from epoch %d, optimizer step %d",
                        dist.size, state.progress.epoch + 1, state.progress.global_step)

    state.register_reset_callbacks([on_reset])

    @hvd.elastic.run  # Horovod: on HorovodInternalError restore the last commit, re-rendezvous, call again
    def elastic_fit(state):
        fit(state.progress, lambda _progress: state.commit())
        return state.progress

    return elastic_fit(state)
