"""Batches on their way to the step.

On a GPU, ``feed`` runs the batch source in a background thread, ``depth`` batches ahead: receiving the loader's
chunks, putting their batches in order and counting them happen there, not between two steps, while the GPU
computes. Without a ``train.collate`` hook the thread also starts each batch's copy to the GPU on a side stream, so
the copy of batch ``i + 1`` overlaps the step on batch ``i``; the step makes the GPU wait for its own batch's copy
(an event), never the host. A collate hook runs on the training thread, in order, as it always did: a hook that
draws random numbers (augmentation) then draws them in the same order every run, and one that is not thread-safe
stays safe.

On a CPU the source is read on the training thread: the step's own compute uses the cores, the loader's workers
are processes of their own, and a thread in between would only add a hand-over per batch (measured: a model whose
step costs nothing trained at 0.75 of the loader's rate through a thread, at 0.9 to 1.0 without, on 2 cores).

``prefetched`` is the thread itself: any iterator, run ahead, with its errors raised in the caller, in order.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from training.device import to_device
from training.ledger import LoaderTimes

DEPTH = 2  # batches on the device ahead of the step: one being copied while the step runs, one ready


class Fed:
    """One batch on its way to the step: ``ready()`` makes it the step's (model inputs and labels where the model
    runs, sample ids on the host). On a GPU without a collate hook the copy is under way already, and ``ready``
    makes the step's stream wait for it (an event), never the host; with a hook, ``ready`` runs the hook and starts
    the copy, on the training thread."""
    __slots__ = ("inputs", "labels", "ids", "_event", "_place")

    def __init__(self, inputs: tuple, labels: torch.Tensor, ids: torch.Tensor, event=None, place=None):
        self.inputs, self.labels, self.ids, self._event, self._place = inputs, labels, ids, event, place

    def ready(self) -> "Fed":
        if self._place is not None:
            self.inputs, self.labels = self._place(self.inputs, self.labels)
            self._place = None
        if self._event is not None:
            stream = torch.cuda.current_stream(self.labels.device)
            stream.wait_event(self._event)
            for tensor in (*self.inputs, self.labels):
                if tensor.is_cuda:  # the caching allocator must not reuse its memory before this stream is done
                    tensor.record_stream(stream)
            self._event = None
        return self


@dataclass(frozen=True)
class Placement:
    """How a batch's inputs become the model's, on ``device``: through the user's ``collate`` hook when there is
    one (all of its outputs moved), else as collated, the inputs at ``host_inputs`` left on the host (sequence
    lengths) and the uint8 ones at ``scaled`` made float32 in [0, 1] on the device (images,
    ``training.model_inputs``)."""
    device: torch.device
    host_inputs: tuple[int, ...] = ()
    collate: Callable | None = None
    scaled: tuple[int, ...] = ()

    def inputs(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        if self.collate is not None:
            return to_device(self.collate(inputs), self.device)
        return to_device(inputs, self.device, self.host_inputs, self.scaled)

    def feed(self, batches: Iterator[Any], *, times: LoaderTimes | None = None) -> Iterator[Fed]:
        return feed(batches, device=self.device, host_inputs=self.host_inputs, collate=self.collate, times=times,
                    scaled=self.scaled)


def feed(batches: Iterator[Any], *, device: torch.device, host_inputs: tuple[int, ...] = (),
         collate: Callable | None = None, times: LoaderTimes | None = None, depth: int = DEPTH,
         threaded: bool | None = None, scaled: tuple[int, ...] = ()) -> Iterator[Fed]:
    """``batches`` (batch inputs, labels, ids) as ``Fed`` batches, their inputs placed as ``Placement`` says;
    ``threaded`` (default: on a GPU) ``depth`` ahead in a background thread. The work done on each batch before
    ``ready`` is added to ``times`` as hand-over."""
    placement = Placement(device, host_inputs, collate, scaled)
    side = torch.cuda.Stream(device) if device.type == "cuda" and collate is None else None

    def place(inputs, labels):
        """The training thread's part: the hook (if any), then the copy to the device."""
        return placement.inputs(inputs), labels.to(device, non_blocking=True)

    def ahead(batch) -> Fed:
        began = time.monotonic()
        inputs, labels, ids = batch
        if side is None:
            fed = Fed(inputs, labels, ids, place=place)
        else:
            with torch.cuda.device(device), torch.cuda.stream(side):
                event = torch.cuda.Event()
                fed = Fed(*place(inputs, labels), ids, event)
                event.record(side)
        if times is not None:
            times.add("handover", time.monotonic() - began)
        return fed

    def run() -> Iterator[Fed]:
        try:
            for batch in batches:
                yield ahead(batch)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:  # the source's own readers stopped in the thread that ran them
                close()

    threaded = device.type == "cuda" if threaded is None else threaded
    return prefetched(run(), depth) if threaded else run()


def prefetched(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run ``items`` (reading, decoding, collating) in a background thread, ``depth`` items ahead, so the next
    batch is being prepared while the model trains on this one. Errors surface in the caller, in order."""
    if depth <= 0:
        yield from items
        return
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(entry) -> bool:
        """Hand ``entry`` over unless the consumer has gone (it stopped early or raised): a blocking put on a full
        queue nobody reads would leave the consumer's join waiting forever."""
        while not stop.is_set():
            try:
                buffer.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            put((done, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # generators: stop their readers in the thread that ran them
                close()

    thread = threading.Thread(target=work, name="bigtrain-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join()
