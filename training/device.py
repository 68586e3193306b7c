"""Where a training process computes, and how batches get there.

One process per GPU: the process with local rank ``i`` on a host trains on ``cuda:i`` (``select_device``), made
its current device before any process group or CUDA tensor exists (``pin_process``). Batches are collated on the
host as compact tensors (images uint8, token ids int64), pinned in the loader's thread when the device is a GPU,
and copied with ``non_blocking=True`` (``to_device``), so the copy overlaps the previous step; images are scaled
to float32 in [0, 1] there, on the device (``to_device``'s ``scaled``), unless the model asks for uint8
(``training.model_inputs``). Mixed precision is bfloat16 where the GPU has it (no loss scaling needed) and
float16 with a GradScaler elsewhere (``precision_for``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from core.errors import LaunchError

DEVICES = ("auto", "cpu", "cuda")


def select_device(requested: str, local_rank: int, *, cuda_available: bool, device_count: int) -> torch.device:
    """The device of the process with ``local_rank`` on its host: its own GPU where there are GPUs and
    ``requested`` is auto or cuda, else the CPU. Under Spark's TorchDistributor each task sees only its own GPUs
    (CUDA_VISIBLE_DEVICES) and runs as local rank 0, so the index is right there too."""
    if requested not in DEVICES:
        raise LaunchError(f"config key train.device: {requested!r} is not one of {', '.join(DEVICES)}")
    if requested == "cpu" or (requested == "auto" and not cuda_available):
        return torch.device("cpu")
    if not cuda_available or device_count == 0:
        raise LaunchError("train.device is cuda (--device cuda) but torch sees no GPU here "
                          f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
                          "use --device auto or cpu")
    if local_rank >= device_count:
        raise LaunchError(f"local rank {local_rank} has no GPU of its own: this host shows {device_count} GPU(s); "
                          f"start at most {device_count} training processes per host (torchrun --nproc_per_node, "
                          "horovodrun -H host:N)")
    return torch.device("cuda", local_rank)


def take_device(requested: str, local_rank: int) -> torch.device:
    """``select_device`` for the GPUs torch sees here, made the process's current device (``pin_process``)."""
    device = select_device(requested, local_rank, cuda_available=torch.cuda.is_available(),
                           device_count=torch.cuda.device_count())
    pin_process(device)
    return device


def process_group_backend(device: torch.device) -> str:
    """DDP's backend: NCCL for CUDA tensors (gradients, weights) and Gloo for the CPU tensors that bookkeeping
    collectives carry (metric sums, row counts, test ids, pickled objects); Gloo alone on CPU hosts. An NCCL-only
    group fails on the first CPU tensor ("No backend type associated with device type cpu")."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def pin_process(device: torch.device) -> None:
    """Make ``device`` the process's current GPU: NCCL binds each rank to the current device, and a rank left on
    cuda:0 would share that GPU with rank 0."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def describe(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H200)`` or ``cpu``: for logs and metrics.json."""
    if device.type != "cuda":
        return str(device)
    return f"{device} ({torch.cuda.get_device_name(device)})"


@dataclass(frozen=True)
class Precision:
    """How the forward pass computes: ``autocast`` dtype (None: float32 throughout) and whether the loss needs
    scaling (float16 gradients underflow without it; bfloat16 has float32's range)."""
    autocast: torch.dtype | None
    scaled: bool

    @property
    def name(self) -> str:
        return "float32" if self.autocast is None else str(self.autocast).removeprefix("torch.")

    def context(self, device: torch.device):
        """The forward pass's autocast block (a no-op for float32)."""
        return torch.autocast(device.type, dtype=self.autocast, enabled=self.autocast is not None)


def precision_for(mixed_precision: bool, device: torch.device, *, bf16_supported: bool | None = None) -> Precision:
    """float32 unless mixed precision was asked for on a GPU; then bfloat16 where the GPU supports it, else
    float16 with loss scaling."""
    if not mixed_precision or device.type != "cuda":
        return Precision(None, False)
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return Precision(torch.bfloat16, False) if bf16_supported else Precision(torch.float16, True)


def to_device(inputs: tuple[torch.Tensor, ...], device: torch.device, host_inputs: tuple[int, ...] = (),
              scaled: tuple[int, ...] = ()) -> tuple[torch.Tensor, ...]:
    """The model inputs on ``device``, asynchronously (the source is pinned when the device is a GPU); the inputs
    at ``host_inputs`` stay where they are (sequence lengths: packing reads them on the host, and a copy to the
    GPU and back would wait for the GPU at every step). The uint8 inputs at ``scaled`` (images) become float32 in
    [0, 1] once on the device: the copy moves a quarter of the bytes float32 would."""
    moved = tuple(t if i in host_inputs else t.to(device, non_blocking=True) for i, t in enumerate(inputs))
    return unit_float(moved, scaled) if scaled else moved


def unit_float(inputs: tuple[torch.Tensor, ...], scaled: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """The uint8 tensors at ``scaled`` as float32 in [0, 1]; every other input as it is."""
    return tuple(t.float().div_(255.0) if i in scaled and t.dtype == torch.uint8 else t for i, t in enumerate(inputs))


class DeviceBusy:
    """The GPU's seconds of the training steps, from a pair of CUDA events around each step's work on the compute
    stream, read once the events have completed (``query``: never a wait); on a CPU, nothing (``total`` is None).
    The host-side stages of the ledger say where the host waited; this says how long the GPU computed."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[Any, Any]] = []
        self.seconds = 0.0
        self._begun = None

    def begin(self) -> None:
        if self.cuda:
            self._begun = torch.cuda.Event(enable_timing=True)
            self._begun.record()

    def end(self) -> None:
        if not self.cuda or self._begun is None:
            return
        ended = torch.cuda.Event(enable_timing=True)
        ended.record()
        self.pending.append((self._begun, ended))
        self._begun = None
        while self.pending and self.pending[0][1].query():  # the finished steps, oldest first
            began, done = self.pending.pop(0)
            self.seconds += began.elapsed_time(done) / 1000

    def total(self) -> float | None:
        """All steps' GPU seconds; waits for the last step (call it where the epoch waits anyway)."""
        if not self.cuda:
            return None
        for began, done in self.pending:
            done.synchronize()
            self.seconds += began.elapsed_time(done) / 1000
        self.pending.clear()
        return self.seconds
