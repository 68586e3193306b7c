"""A ``train.collate`` hook that stops a run on purpose: at its ``STOP_AT``-th call (unset: never), every rank exits
at once with code ``STOP_CODE`` (default 3), as a run killed mid-epoch would, after the steps before that batch.
The resume tests train with ``train.collate=tests.training.stop_hooks:stop_at`` (a resumed run must name the same
hook, and leaves ``STOP_AT`` unset)."""
from __future__ import annotations

import os

_calls = 0


def stop_at(inputs):
    global _calls
    _calls += 1
    if _calls == int(os.environ.get("STOP_AT", "0")):
        os._exit(int(os.environ.get("STOP_CODE", "3")))
    return inputs
