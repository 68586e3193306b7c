"""Small in-memory datasets for trainer tests (no Spark): easy, separable problems a small model learns in a few
epochs, and wrappers around a source that misbehave on purpose."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from core.config import load_section
from training.config import TrainConfig
from training.sources import InMemorySource

# Small models: the tests check what the loop does, not what a big model can learn.
SMALL_MODELS = ("train.cnn.conv_channels=[4,8]", "train.cnn.hidden=16", "train.rnn.embed_dim=8", "train.rnn.hidden=16")


def config(*overrides: str) -> TrainConfig:
    return load_section("train", TrainConfig, overrides=["train.epochs=1", "train.batch_size=16",
                                                        "train.progress_bar=never", "train.loader_workers=1",
                                                        *SMALL_MODELS, *overrides])


def image_arrays(rows: int, *, rng: np.random.Generator, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Grayscale images, uint8 (N, 1, size, size): class 0 dark (0..105), class 1 bright (150..255)."""
    labels = rng.integers(0, 2, rows)
    dark, bright = rng.integers(0, 106, (rows, 1, size, size)), rng.integers(150, 256, (rows, 1, size, size))
    return np.where(labels[:, None, None, None] == 1, bright, dark).astype(np.uint8), labels


def image_source(rows: tuple[int, int, int] = (96, 32, 32), *, data_seed: int = 0, **options) -> InMemorySource:
    """Train, validation and test images (a split of 0 rows left out), in row groups of 16 rows by default."""
    rng = np.random.default_rng(data_seed)
    splits = {name: image_arrays(n, rng=rng) for name, n in zip(("train", "validation", "test"), rows) if n}
    if not rows[0]:
        splits["train"] = image_arrays(0, rng=rng)
    return InMemorySource.images(splits, classes=["dark", "bright"], **{"row_group_rows": 16, **options})


def sequence_arrays(rows: int, *, rng: np.random.Generator, longest: int = 12):
    """Token ids (N, longest) padded with 0 and lengths 3..longest: class 0 uses tokens 2..9, class 1 10..17."""
    labels = rng.integers(0, 2, rows)
    lengths = rng.integers(3, longest + 1, rows)
    tokens = rng.integers(2, 10, (rows, longest)) + 8 * labels[:, None]
    tokens[np.arange(longest)[None, :] >= lengths[:, None]] = 0
    return tokens, lengths, labels


def sequence_source(rows: tuple[int, int, int] = (96, 32, 32), *, data_seed: int = 0, **options) -> InMemorySource:
    rng = np.random.default_rng(data_seed)
    splits = {name: sequence_arrays(n, rng=rng) for name, n in zip(("train", "validation", "test"), rows) if n}
    return InMemorySource.sequences(splits, classes=["low", "high"], vocab_size=20,
                                    **{"row_group_rows": 16, **options})


class Wrapped:
    """A source that behaves as ``inner`` except where a test overrides it."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)


class InterruptedAt(Wrapped):
    """Raises after ``after`` batches of epoch ``epoch`` (0-based): a run cut off mid-epoch."""

    def __init__(self, inner, *, epoch: int, after: int):
        super().__init__(inner)
        self.epoch, self.after = epoch, after

    def training_batches(self, plan, *, batch_size, epoch, counter, start=0):
        for index, batch in enumerate(self.inner.training_batches(plan, batch_size=batch_size, epoch=epoch,
                                                                  counter=counter, start=start), start=start):
            if epoch == self.epoch and index == self.after:
                raise RuntimeError(f"interrupted in epoch {epoch + 1} after {index} batches")
            yield batch


class Claiming(Wrapped):
    """Claims ``extra`` more rows in ``split`` than it holds (metadata that disagrees with the data); with
    ``row_groups`` the extra rows are in its row groups too (so in the shard plans)."""

    def __init__(self, inner, split: str, extra: int, *, row_groups: bool = False):
        super().__init__(inner)
        info = inner.splits[split]
        sizes = (*info.row_group_sizes[:-1], info.row_group_sizes[-1] + extra) if row_groups else info.row_group_sizes
        self.splits = {**inner.splits, split: dataclasses.replace(info, rows=info.rows + extra,
                                                                  row_group_sizes=sizes)}


class Pixels(torch.nn.Module):
    """Not a bigtrain model: a trainer takes any module and optimizer (and gives it images as float32 in [0, 1])."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 2)

    def forward(self, images):
        return self.linear(images.flatten(1))
