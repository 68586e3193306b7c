"""The learning-rate schedule as a pure function of training progress in (fractional) epochs.

A function of progress rather than a stateful torch scheduler, so that a resumed run, or an elastic run whose
world size (and so steps per epoch) changed, lands on the same learning rate for the same point of training.
"""
from __future__ import annotations

import math

from training.config import TrainConfig


def lr_factor(config: TrainConfig, progress: float) -> float:
    """Multiplier of the peak learning rate at ``progress`` epochs into training (0 = first step).

    Warmup ramps linearly over ``warmup_epochs`` (reaching the peak at its end); then ``constant`` holds it,
    ``step`` multiplies by ``lr_gamma`` every ``lr_step_epochs`` whole epochs, ``cosine`` anneals to 0 at the last
    epoch's end.
    """
    warmup = config.warmup_epochs
    if warmup > 0 and progress < warmup:
        return max(progress, 1e-3 * warmup) / warmup
    if config.lr_schedule == "step":
        return config.lr_gamma ** (int(progress) // config.lr_step_epochs)
    if config.lr_schedule == "cosine":
        span = config.epochs - warmup
        done = min(max(progress - warmup, 0.0) / span, 1.0) if span > 0 else 1.0
        return 0.5 * (1.0 + math.cos(math.pi * done))
    return 1.0
