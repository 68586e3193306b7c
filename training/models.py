"""Models. The CNN is the classic conv-pool-conv-pool-fc-fc network with its flattened size derived from the input."""
from __future__ import annotations

import torch
from torch import nn


class CNN(nn.Module):
    def __init__(self, *, in_channels: int, image_size: int, num_classes: int,
                 conv_channels: tuple[int, int] = (32, 64), hidden: int = 128, dropout: float = 0.25):
        super().__init__()
        c1, c2 = conv_channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        with torch.no_grad():  # the flattened size follows from the input shape, whatever image_size is
            flat = self.features(torch.zeros(1, in_channels, image_size, image_size)).numel()
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_model(name: str, *, metadata: dict, config) -> nn.Module:
    """The model ``name`` (or the one the dataset's ``kind`` calls for when ``auto``) for a dataset."""
    kind = metadata["kind"]
    if name == "auto":
        name = {"image": "cnn"}.get(kind, "")
    if name == "cnn":
        if kind != "image":
            raise ValueError(f"model cnn needs an image dataset, this one is {kind!r}")
        image = metadata["image"]
        return CNN(in_channels=image["channels"], image_size=image["size"], num_classes=len(metadata["classes"]),
                   conv_channels=tuple(config.cnn.conv_channels), hidden=config.cnn.hidden, dropout=config.cnn.dropout)
    raise ValueError(f"no model {name!r} for a dataset of kind {kind!r}")
