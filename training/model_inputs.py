"""What a model receives: images as float32 in [0, 1], scaled on the model's device after a uint8 copy, unless the
model asks for uint8 with a class or instance attribute ``wants_uint8 = True`` (the built-in CNN does, and scales
them itself); token ids int64 ``(B, T)`` and lengths int64 ``(B,)`` as they are. With a ``train.collate`` function
the model receives what that function returns, unscaled: the function itself receives bigtrain's uint8 images.

A model trained on float images is loaded (``training.checkpoint.load_model``, predict) inside ``ScaledImages``, so
that it is called with bigtrain's batch inputs, uint8 images, as in training.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from training.device import unit_float

UINT8_ATTRIBUTE = "wants_uint8"  # on a model: True to receive images as uint8 (0..255), not float32 in [0, 1]
IMAGE_INPUT = 0  # where the images are in an image dataset's batch inputs: (images,)


def wants_uint8(model: nn.Module) -> bool:
    """Whether ``model`` (or the model inside a DDP wrapper) asks for uint8 images."""
    return bool(getattr(getattr(model, "module", model), UINT8_ATTRIBUTE, False))


def scaled_inputs(kind: str, model: nn.Module, collate: Callable | None) -> tuple[int, ...]:
    """The batch inputs scaled to float32 in [0, 1] on the device for ``model``: an image dataset's images, unless
    the model asks for uint8 or a ``train.collate`` function makes the model's inputs."""
    return (IMAGE_INPUT,) if kind == "image" and collate is None and not wants_uint8(model) else ()


class ScaledImages(nn.Module):
    """A trained model that takes float images, called with bigtrain's batch inputs (uint8 images) as in training;
    float images pass as they are. The model itself is ``.model``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(*unit_float(inputs, (IMAGE_INPUT,)))


def as_trained(model: nn.Module, kind: str) -> nn.Module:
    """``model`` wrapped to take bigtrain's batch inputs as training gave them to it (no collate function)."""
    return ScaledImages(model) if scaled_inputs(kind, model, None) else model
