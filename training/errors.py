"""Errors of training runs that the job entry points turn into one line and an exit code (no torch import here,
so ``jobs.common.run_main`` stays light)."""
from __future__ import annotations


class LaunchError(RuntimeError):
    """The process was launched in a way the chosen backend cannot use (e.g. --backend torch without torchrun)."""


class PeerLostError(RuntimeError):
    """Another rank of the job failed or vanished during a collective; the run can be resumed from its last
    resume point."""
