"""A ``train.collate`` hook that hangs on purpose: from its ``HANG_FROM``-th call on (default 5), on the rank
``HANG_RANK`` names (default 0), it sleeps for an hour, as a rank stuck on a read or a lock would. The watchdog
tests train with ``train.collate=tests.training.hang_hooks:sleepy``."""
from __future__ import annotations

import os
import time

_calls = 0


def _rank() -> int:
    for name in ("HOROVOD_RANK", "RANK"):  # horovodrun, torchrun
        if name in os.environ:
            return int(os.environ[name])
    return 0


def sleepy(inputs):
    global _calls
    _calls += 1
    if _calls >= int(os.environ.get("HANG_FROM", "5")) and _rank() == int(os.environ.get("HANG_RANK", "0")):
        pause()
    return inputs


def pause() -> None:
    time.sleep(3600)
