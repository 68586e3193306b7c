"""The distributed glue: one small interface training uses (``Backend``, a protocol), implemented by Horovod, by
PyTorch DistributedDataParallel (``torchrun``) and by a single process, each on its own: no backend inherits
another's behaviour, so what each does is read in its class.

Every line that exists only because training is distributed is marked ``# Horovod:`` (or ``# DDP:``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Any, ContextManager, Protocol

import torch

from core.errors import LaunchError
from training.device import process_group_backend, take_device

log = logging.getLogger(__name__)
BACKENDS = ("auto", "horovod", "torch", "single")


class Backend(Protocol):
    """What training uses of its world: who this process is, the collectives, and how model and optimizer become
    distributed. ``SingleProcess``, ``HorovodBackend`` and ``TorchBackend`` each implement all of it."""

    name: str                                         # single | horovod | torch: logs and metrics.json
    rank: int
    size: int
    local_rank: int
    local_size: int                                   # ranks on this host: the loader's share of its cores
    hosts: int
    device: torch.device                              # this rank's GPU, or the CPU
    peer_errors: tuple[type[BaseException], ...]      # what a collective raises when another rank is gone

    def allreduce_sum(self, tensor: torch.Tensor, name: str) -> torch.Tensor: ...
    def allgather(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        """Every rank's ``tensor`` concatenated along dim 0, in rank order."""
    def broadcast_object(self, obj: Any, name: str) -> Any:
        """Rank 0's ``obj`` on every rank."""
    def broadcast_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Rank 0's weights and optimizer state on every rank."""
    def wrap_model(self, model: torch.nn.Module, *, fp16_compression: bool = False) -> torch.nn.Module: ...
    def distributed_optimizer(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module, *,
                              backward_passes_per_step: int = 1, fp16_compression: bool = False) -> Any: ...
    def no_sync(self, model: torch.nn.Module) -> ContextManager[Any]:
        """Context for a backward pass whose gradients are accumulated, not yet averaged over ranks."""
    def synchronize(self, optimizer: Any) -> None:
        """Finish averaging gradients over ranks now (before clipping them)."""
    def skip_synchronize(self, optimizer: Any) -> ContextManager[Any]:
        """Context for the optimizer's step, which must not average the gradients a second time."""
    def barrier(self) -> None: ...
    def close(self) -> None:
        """Leave the world after a run that ended well (not after an error: a rank still waiting in a collective
        would then wait for this one's goodbye)."""


class SingleProcess:
    """World of one: what the loop sees under plain ``python jobs/train.py`` when Horovod is not installed."""

    name = "single"
    rank, size, local_rank, local_size, hosts = 0, 1, 0, 1, 1
    peer_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, device: str = "auto"):
        self.device = take_device(device, 0)

    def allreduce_sum(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        return tensor

    def allgather(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        return tensor

    def broadcast_object(self, obj, name: str):
        return obj

    def broadcast_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        pass

    def wrap_model(self, model: torch.nn.Module, *, fp16_compression: bool = False) -> torch.nn.Module:
        return model

    def distributed_optimizer(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module, *,
                              backward_passes_per_step: int = 1, fp16_compression: bool = False):
        return optimizer

    def no_sync(self, model: torch.nn.Module):
        return contextlib.nullcontext()

    def synchronize(self, optimizer) -> None:
        pass

    def skip_synchronize(self, optimizer):
        return contextlib.nullcontext()

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


class HorovodBackend:
    """Horovod over Gloo (CPU) or NCCL (GPU); ``hvd.init()`` also works as a world of one without horovodrun.

    rank and size are read from Horovod each time: under ``--elastic`` they change when workers leave or join."""

    name = "horovod"

    def __init__(self, device: str = "auto"):
        import horovod.torch as hvd

        hvd.init()  # Horovod: join the job started by horovodrun (or a world of one)
        self.hvd = hvd
        from horovod.common.exceptions import HorovodInternalError

        self.peer_errors = (HorovodInternalError,)
        # Horovod: one GPU per process, chosen by local rank; CUDA tensors go over NCCL (when Horovod was built
        # with it), the CPU tensors of metrics and barriers over Gloo.
        self.device = take_device(device, hvd.local_rank())
        if self.device.type == "cuda" and not hvd.nccl_built() and hvd.rank() == 0:
            log.warning("this Horovod was built without NCCL (hvd.nccl_built() is false), so it cannot all-reduce "
                        "CUDA tensors on the GPU: rebuild it with scripts/build_horovod.sh on a host with a CUDA "
                        "torch and nvcc")

    rank = property(lambda self: self.hvd.rank())
    size = property(lambda self: self.hvd.size())
    local_rank = property(lambda self: self.hvd.local_rank())
    local_size = property(lambda self: self.hvd.local_size())
    hosts = property(lambda self: self.hvd.cross_size())  # Horovod: ranks with the same local rank, one per host

    def allreduce_sum(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        return self.hvd.allreduce(tensor, op=self.hvd.Sum, name=name)  # Horovod: sum a metric over ranks

    def allgather(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        return self.hvd.allgather(tensor, name=name)  # Horovod: concatenate along dim 0 over ranks

    def broadcast_object(self, obj, name: str):
        return self.hvd.broadcast_object(obj, root_rank=0, name=name)  # Horovod: rank 0's copy everywhere

    def broadcast_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        # Horovod: every rank starts from rank 0's weights and optimizer state.
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def wrap_model(self, model: torch.nn.Module, *, fp16_compression: bool = False) -> torch.nn.Module:
        return model  # Horovod: the optimizer averages the gradients, the model stays as it is

    def distributed_optimizer(self, optimizer, model, *, backward_passes_per_step=1, fp16_compression=False):
        # Horovod: average gradients over ranks with allreduce, once every backward_passes_per_step backward passes.
        compression = self.hvd.Compression.fp16 if fp16_compression else self.hvd.Compression.none
        return self.hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                             compression=compression,
                                             backward_passes_per_step=backward_passes_per_step)

    def synchronize(self, optimizer) -> None:
        optimizer.synchronize()  # Horovod: wait for the gradient allreduce so clipping sees averaged gradients

    def skip_synchronize(self, optimizer):
        return optimizer.skip_synchronize()  # Horovod: step() must not allreduce a second time

    def no_sync(self, model: torch.nn.Module):
        return contextlib.nullcontext()  # Horovod: the optimizer counts backward_passes_per_step itself

    def barrier(self) -> None:
        self.hvd.allreduce(torch.zeros(1), name="barrier")  # Horovod: wait for every rank

    def close(self) -> None:
        pass


class TorchBackend:
    """PyTorch DistributedDataParallel in a world set up by ``torchrun`` (which sets RANK, WORLD_SIZE, LOCAL_RANK,
    LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT): one process per GPU, NCCL for CUDA tensors and Gloo for CPU
    tensors (``process_group_backend``); Gloo alone on CPU hosts."""

    name = "torch"

    def __init__(self, device: str = "auto"):
        import torch.distributed as tdist

        missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise LaunchError(f"--backend torch needs the environment torchrun sets ({', '.join(missing)} missing): "
                              "launch with `torchrun --nproc_per_node N jobs/train.py --backend torch ...`")
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.device = take_device(device, self.local_rank)  # DDP: this rank's GPU, before the process group starts
        if not tdist.is_initialized():
            tdist.init_process_group(process_group_backend(self.device))  # DDP: join the world torchrun started
        self.tdist = tdist
        self.peer_errors = (tdist.DistBackendError,)
        self.rank, self.size = tdist.get_rank(), tdist.get_world_size()
        names: list = [None] * self.size
        tdist.all_gather_object(names, socket.gethostname())  # DDP: count the hosts taking part
        self.hosts = len(set(names))
        # Ranks sharing this host: torchrun's LOCAL_WORLD_SIZE counts only its own processes, and Spark's
        # TorchDistributor starts one torchrun per task, several of which may share a host.
        self.local_size = max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), names.count(socket.gethostname()))

    def allreduce_sum(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        out = tensor.clone()
        self.tdist.all_reduce(out)  # DDP: sum a metric over ranks
        return out

    def allgather(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        # DDP: all_gather needs equal shapes, so gather the lengths, pad to the longest, trim after.
        count = torch.tensor([tensor.shape[0]], dtype=torch.int64)
        counts = [torch.zeros_like(count) for _ in range(self.size)]
        self.tdist.all_gather(counts, count)
        longest = int(max(c.item() for c in counts))
        padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype)
        padded[:tensor.shape[0]] = tensor
        parts = [torch.zeros_like(padded) for _ in range(self.size)]
        self.tdist.all_gather(parts, padded)
        return torch.cat([p[:int(c.item())] for p, c in zip(parts, counts)])

    def broadcast_object(self, obj, name: str):
        holder = [obj]
        self.tdist.broadcast_object_list(holder, src=0)  # DDP: rank 0's copy everywhere
        return holder[0]

    def broadcast_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        # DDP: the DistributedDataParallel wrapper broadcasts rank 0's weights; optimizer state is sent here.
        for tensor in model.state_dict().values():
            self.tdist.broadcast(tensor, src=0)
        state = self.broadcast_object(optimizer.state_dict(), "optimizer")
        if self.rank != 0:
            optimizer.load_state_dict(state)

    def wrap_model(self, model: torch.nn.Module, *, fp16_compression: bool = False) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        # DDP: gradients averaged over ranks during backward; on GPU, each process drives its own device.
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=device_ids)
        if fp16_compression:
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            wrapped.register_comm_hook(None, default_hooks.fp16_compress_hook)  # DDP: allreduce in float16
        return wrapped

    def distributed_optimizer(self, optimizer, model, *, backward_passes_per_step=1, fp16_compression=False):
        return optimizer  # DDP: the wrapped model averages the gradients in backward

    def no_sync(self, model: torch.nn.Module):
        return model.no_sync()  # DDP: accumulate locally, allreduce on the last backward pass of the group

    def synchronize(self, optimizer) -> None:
        pass  # DDP: backward has averaged the gradients already

    def skip_synchronize(self, optimizer):
        return contextlib.nullcontext()

    def barrier(self) -> None:
        self.tdist.barrier()

    def close(self) -> None:
        # DDP: without it Gloo's threads outlive the interpreter and a rank can die at exit ("terminate called
        # without an active exception", SIGABRT: pytorch/pytorch#190489), failing a run that trained well. The
        # barrier first: every rank (rank 0 has just written the outputs) leaves the group at the same moment.
        if self.tdist.is_initialized():
            self.tdist.barrier()
            self.tdist.destroy_process_group()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (what checkpoints hold)."""
    return getattr(model, "module", model)


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("LOCAL_RANK" in os.environ and "HOROVOD_RANK" not in os.environ
                                                    and "MASTER_ADDR" in os.environ)


def init_distributed(backend: str = "auto", device: str = "auto") -> Backend:
    """``auto``: DDP under torchrun, else Horovod when installed, else a single process. ``horovod`` and ``torch``:
    that backend or an error. ``device`` (auto, cpu, cuda): where this process trains; the backend pins it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "single":
        return SingleProcess(device)
    if backend == "torch" or (backend == "auto" and launched_by_torchrun()):
        return TorchBackend(device)
    if launched_by_torchrun():  # each process would train alone, all into the same --output
        raise LaunchError("--backend horovod under torchrun: torchrun does not start Horovod ranks; launch with "
                          "horovodrun, or use --backend torch")
    try:
        return HorovodBackend(device)
    except ImportError as exc:
        if backend == "horovod":
            raise LaunchError(f"Horovod is not importable ({exc}); run `make setup`, or use --backend torch "
                              "under torchrun") from exc
        log.warning("Horovod is not installed: training in a single process")
        return SingleProcess(device)


def set_threads(dist, threads: int | str = "auto", environ=os.environ) -> int:
    """torch's compute threads in this rank: ``threads`` (``train.threads``) when it is a number; else
    ``OMP_NUM_THREADS`` where it is set (torchrun sets it to 1); else one on a GPU (the GPU computes, and the host's
    cores are the loader workers': idle compute threads spinning after each small host-side op would take them);
    else the rank's share of the cores, so N ranks on one host don't oversubscribe it."""
    if threads != "auto":
        threads = int(threads)
    elif environ.get("OMP_NUM_THREADS", "").strip().isdigit() and int(environ["OMP_NUM_THREADS"]) > 0:
        threads = int(environ["OMP_NUM_THREADS"])
    elif dist.device.type == "cuda":
        threads = 1
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // max(1, dist.local_size))
    torch.set_num_threads(threads)
    return threads
