"""A user's own model, defined outside bigtrain: tests train it with ``--model tests.training.custom_model:build``
(and ``train.model_config``), and its loss with ``train.loss``."""
from __future__ import annotations

import torch
from torch import nn

from dataset.manifest import DatasetSpec


class MeanOfTokens(nn.Module):
    """Token embeddings averaged over the real tokens, one hidden layer: what a user might write first."""

    def __init__(self, vocab_size: int, classes: int, width: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, width, padding_idx=0)
        self.head = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, classes))

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        real = (torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths.to(tokens.device)[:, None])
        total = (self.embedding(tokens.long()) * real[..., None]).sum(1)
        return self.head(total / real.sum(1, keepdim=True).clamp(min=1))


class TinyImages(nn.Module):
    def __init__(self, channels: int, size: int, classes: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(width, classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)  # float32 in [0, 1]: bigtrain scales a user's images


def build(dataset: DatasetSpec, config: dict) -> nn.Module:
    """The factory: the dataset's description and train.model_config in, a module out."""
    width = int(config.get("width", 16))
    if dataset.kind == "sequence":
        return MeanOfTokens(dataset.sequence.vocab_size, len(dataset.classes), width)
    return TinyImages(dataset.image.channels, dataset.image.size, len(dataset.classes), width)


def linear(dataset: DatasetSpec, config: dict) -> nn.Module:
    """The first model a new user writes for images: flatten, one linear layer, no scaling code."""
    image = dataset.image
    return nn.Sequential(nn.Flatten(), nn.Linear(image.channels * image.size * image.size, len(dataset.classes)))


class Bytes(nn.Module):
    """A model that asks for uint8 images (``wants_uint8``) and scales them itself."""
    wants_uint8 = True

    def __init__(self, pixels: int, classes: int):
        super().__init__()
        self.linear = nn.Linear(pixels, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"expected uint8 images, got {images.dtype}")
        return self.linear(images.flatten(1).float() / 255.0)


def uint8_model(dataset: DatasetSpec, config: dict) -> nn.Module:
    image = dataset.image
    return Bytes(image.channels * image.size * image.size, len(dataset.classes))


class Fails(nn.Module):
    """A model whose forward raises on call ``at`` (1-based), as a model written for other inputs would."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls = at, 0
        self.linear = nn.Linear(1, 2)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("mat1 and mat2 must have the same dtype, but got Byte and Float")
        return self.linear(inputs[0].float().flatten(1).mean(1, keepdim=True))


def failing_model(dataset: DatasetSpec, config: dict) -> nn.Module:
    return Fails(int(config.get("at", 1)))


def failing_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    raise ValueError("labels must be float")


def failing_collate(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    raise IndexError("tuple index out of range")


def not_a_module(dataset: DatasetSpec, config: dict):
    return "a string, not a model"


def smoothed(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A loss of the user's: cross entropy with label smoothing, one value per row."""
    return nn.functional.cross_entropy(logits, labels, reduction="none", label_smoothing=0.1)


def averaged(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A wrong loss: one number for the batch, where bigtrain needs one per row."""
    return nn.functional.cross_entropy(logits, labels)


def counts(inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor]:
    """A collate function of the user's: token ids and lengths -> one row of token counts per sequence (the
    vocabulary's width is the largest id seen + 1, padded to ``COUNTS_WIDTH``)."""
    tokens, lengths = inputs
    real = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    bags = torch.zeros(len(tokens), COUNTS_WIDTH)
    bags.scatter_add_(1, (tokens.long() * real).clamp(max=COUNTS_WIDTH - 1), real.float())
    bags[:, 0] = 0  # padding
    return (bags,)


COUNTS_WIDTH = 4096


def bag_model(dataset: DatasetSpec, config: dict) -> nn.Module:
    """A linear model over the token counts ``counts`` makes."""
    return nn.Linear(COUNTS_WIDTH, len(dataset.classes))
