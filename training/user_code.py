"""The user's code on the first batch: an exception that a user's model, loss or collate function raises before one
batch has gone through them is a mistake in how that code meets bigtrain's batches (a dtype, a shape, an argument
count), not a failure of the run. It ends the run in one line (``UserCodeError``, exit 2) naming the function, the
shapes and dtypes it was called with and what bigtrain passes; the traceback goes to
``<output>/first-batch-error/rank<N>.txt``, not to the console, where every rank would print its own 40 lines.
After the first batch, exceptions pass as they are.
"""
from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from core.errors import EXIT_USAGE, BigtrainError
from training.models import is_import_path
from training.outputs import FIRST_BATCH_ERRORS_DIR, rank_file

log = logging.getLogger("bigtrain.train")
MODEL, LOSS, COLLATE = "train.model", "train.loss", "train.collate"
BUILT_IN_MODELS = "training.models"  # bigtrain's own models: an exception there is bigtrain's bug, traceback kept
RECEIVES = {
    "image": "images float32 (B, C, H, W) in [0, 1] (uint8 0..255 where the model sets wants_uint8 = True)",
    "sequence": "token ids int64 (B, T) padded with 0 and lengths int64 (B,), on the host",
    "collated": "what train.collate returns",
}
COLLATE_RECEIVES = {"image": "images uint8 (B, C, H, W)", "sequence": "token ids int64 (B, T) and lengths int64 (B,)"}


class UserCodeError(BigtrainError, RuntimeError):
    """A user's model, loss or collate function raised on the first batch; the message names the function, its
    inputs' shapes and dtypes, and where its traceback is."""
    exit_code = EXIT_USAGE


def describe_tensors(values: tuple[Any, ...] | list[Any]) -> str:
    """``uint8 (16, 1, 8, 8), int64 (16,)``: what a function was called with (a tuple of tensors in brackets)."""
    return ", ".join(_describe(v) for v in values) or "nothing"


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"({describe_tensors(value)})"
    return type(value).__name__


def model_path(model: torch.nn.Module, name: str) -> str:
    """How the message names a model: its import path (``--model``) and its class."""
    inner = type(getattr(model, "module", model))
    return f"{name} ({inner.__qualname__})" if is_import_path(name) else f"{inner.__module__}:{inner.__qualname__}"


class FirstBatchGuard:
    """Turns an exception of the user's code into a ``UserCodeError`` until ``passed`` is called, once a batch
    has gone through model and loss. ``users``: the roles (``MODEL``, ``LOSS``, ``COLLATE``) that are the user's
    code, each with its name; ``kind``: what the model receives (``RECEIVES``)."""

    def __init__(self, users: dict[str, str], *, kind: str, output_dir: str | Path, rank: int):
        self.users, self.kind, self.output_dir, self.rank = users, kind, Path(output_dir), rank
        self.armed = bool(users)

    def call(self, role: str, function: Callable, *args: Any) -> Any:
        if not self.armed or role not in self.users:
            return function(*args)
        try:
            return function(*args)
        except BigtrainError:
            raise  # already one line naming the key (a loss of the wrong shape, a collate returning a list)
        except Exception as exc:  # noqa: BLE001 - whatever the user's code raises, reported in one line
            raise UserCodeError(self.describe(role, exc, args)) from exc

    def wrap(self, role: str, function: Callable | None) -> Callable | None:
        """``function`` called through the guard (the collate function, which runs where the batch is placed)."""
        return None if function is None else lambda *args: self.call(role, function, *args)

    def passed(self) -> None:
        self.armed = False

    def describe(self, role: str, exc: Exception, args: tuple[Any, ...]) -> str:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        return (f"{role} {self.users[role]} raised {type(exc).__name__} on the first batch"
                f"{': ' + first if first else ''}; it was called with {describe_tensors(args)}; "
                f"{self.hint(role)}; {self.write_traceback(exc)}")

    def hint(self, role: str) -> str:
        if role == LOSS:
            return ("train.loss receives (logits float (B, classes), labels int64 (B,)) and returns one loss per row "
                    "(B,)")
        if role == COLLATE:
            return (f"train.collate receives the batch's inputs as a tuple of host tensors "
                    f"({COLLATE_RECEIVES[self.kind]}) and returns the model's inputs, a tensor or a tuple of tensors")
        receives = RECEIVES["collated" if COLLATE in self.users else self.kind]
        return f"a model receives {receives} and returns logits (B, classes)"

    def write_traceback(self, exc: Exception) -> str:
        """Writes the traceback under the output folder; says where, or why it could not."""
        path = self.output_dir / FIRST_BATCH_ERRORS_DIR / rank_file(self.rank)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(traceback.format_exception(exc)))
        except OSError as error:
            log.debug("the first batch's traceback", exc_info=exc)
            return f"its traceback could not be written to {path} ({error})"
        return f"traceback in {path}"


def guard_for(model: torch.nn.Module, model_name: str, config, *, kind: str, output_dir: str | Path,
              rank: int) -> FirstBatchGuard:
    """The guard of a run: the model is the user's unless it is one of bigtrain's own; the loss unless it is
    cross entropy; the collate function always."""
    users = {}
    if type(getattr(model, "module", model)).__module__ != BUILT_IN_MODELS:
        users[MODEL] = model_path(model, model_name)
    if config.loss != "cross_entropy":
        users[LOSS] = config.loss
    if config.collate is not None:
        users[COLLATE] = config.collate
    return FirstBatchGuard(users, kind=kind, output_dir=output_dir, rank=rank)
