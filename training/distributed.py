"""The distributed glue: one small interface the training loop uses, backed by Horovod or by a single process.

Every line that exists only because training is distributed is marked ``# Horovod:``.
"""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


class SingleProcess:
    """World of one: what the loop sees under plain ``python jobs/train.py`` when Horovod is not installed."""

    name = "single"
    rank, size, local_rank, local_size, hosts = 0, 1, 0, 1, 1

    def allreduce_sum(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        return tensor

    def allgather(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        return tensor

    def broadcast_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        pass

    def distributed_optimizer(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> torch.optim.Optimizer:
        return optimizer

    def barrier(self) -> None:
        pass


class HorovodBackend:
    """Horovod over Gloo (CPU) or NCCL (GPU); ``hvd.init()`` also works as a world of one without horovodrun."""

    name = "horovod"

    def __init__(self):
        import horovod.torch as hvd

        hvd.init()  # Horovod: join the job started by horovodrun (or a world of one)
        self.hvd = hvd
        self.rank, self.size = hvd.rank(), hvd.size()
        self.local_rank, self.local_size = hvd.local_rank(), hvd.local_size()
        self.hosts = hvd.cross_size()  # Horovod: ranks with the same local rank, one per host

    def allreduce_sum(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        return self.hvd.allreduce(tensor, op=self.hvd.Sum, name=name)  # Horovod: sum a metric over ranks

    def allgather(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        return self.hvd.allgather(tensor, name=name)  # Horovod: concatenate along dim 0 over ranks

    def broadcast_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        # Horovod: every rank starts from rank 0's weights and optimizer state.
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def distributed_optimizer(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> torch.optim.Optimizer:
        # Horovod: average gradients over ranks with allreduce before each step.
        return self.hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())

    def barrier(self) -> None:
        self.hvd.allreduce(torch.zeros(1), name="barrier")  # Horovod: wait for every rank


def init_distributed(backend: str = "auto"):
    """``auto``: Horovod when it is installed, else a single process. ``horovod``: Horovod or an error."""
    if backend not in ("auto", "horovod", "single"):
        raise ValueError(f"backend {backend!r} is not one of auto, horovod, single")
    if backend == "single":
        return SingleProcess()
    try:
        return HorovodBackend()
    except ImportError as exc:
        if backend == "horovod":
            raise RuntimeError(f"Horovod is not importable ({exc}); run `make setup`") from exc
        log.warning("Horovod is not installed: training in a single process")
        return SingleProcess()


def set_threads(dist) -> int:
    """Give each local rank its share of the cores, so N ranks on one host don't oversubscribe it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // max(1, dist.local_size))
    torch.set_num_threads(threads)
    return threads
