"""Every error a bigtrain command reports in one line, with the exit code it ends the process with.

The rule (docs/operations.md, "Exit codes"): 0 done, or nothing to do; 1 the data, a checkpoint or a stage failed (the
message names the file); 2 the command line, a config key, a pipeline file or the launch is wrong (the message
names the flag or key; a flag naming a file or folder that is not there is one); 3 more input rejected than
max_reject_fraction allows (nothing committed); 4 training waited for its data longer than
``train.max_data_stall`` allows (with ``train.stall_budget_action: fail``); 5 the training watchdog found no rank
making progress for ``train.watchdog_seconds`` (``<output>/hang.json`` names the stuck rank); 6 a preprocessing run
would commit a snapshot that lost input files (more than max_removed_fraction, every file of a class; rerun with
--allow-removals), or one of no input, no row or a single class (nothing committed); 7 a snapshot drifted from the
one it is compared with beyond a limit ``bigtrain verify`` was given (label shift, reject fraction, rows; the
pipeline stops before training); 8 training met more unreadable stored rows than ``train.max_read_errors``
(``<output>/read_errors.jsonl``); 75 another run holds the lock
(EX_TEMPFAIL: try again later); 130 interrupted (Ctrl-C). ``jobs.common.run_main`` turns a BigtrainError into its
message and ``exit_code``; anything else keeps its traceback.
"""
from __future__ import annotations

EXIT_OK = 0            # done, or nothing to do
EXIT_FAILED = 1        # a dataset is missing, damaged or refused; a checkpoint is refused; a stage failed
EXIT_USAGE = 2         # a flag, config key, pipeline file or launch is wrong
EXIT_REJECTS = 3       # more input rejected than max_reject_fraction (or copied than duplicates_budget) allows
EXIT_STALL = 4         # a training epoch waited for data beyond train.max_data_stall (stall_budget_action: fail)
EXIT_HUNG = 5          # the training watchdog saw no rank progress for train.watchdog_seconds (<output>/hang.json)
EXIT_REMOVALS = 6      # not committed: inputs vanished (max_removed_fraction, a whole class), no row, one class
EXIT_DRIFT = 7         # verify: the snapshot drifted from its parent (or --against) beyond a --max-* limit
EXIT_READ_ERRORS = 8   # training met more unreadable stored rows than train.max_read_errors (read_errors.jsonl)
EXIT_LOCKED = 75       # another run holds the lock (EX_TEMPFAIL: try again later)
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C (SIGINT), as shells report it
EXIT_TERMINATED = 143  # stopped by SIGTERM (a scheduler's stop), as shells report it


class BigtrainError(Exception):
    """An error a job ends with in one line; ``exit_code`` is the process's exit status."""
    exit_code = EXIT_FAILED


class UsageError(BigtrainError, ValueError):
    """A command-line value is wrong; the message names the flag."""
    exit_code = EXIT_USAGE


class ConfigError(BigtrainError, ValueError):
    """A configuration key is unknown, missing, or has a value of the wrong type; the message names the key."""
    exit_code = EXIT_USAGE


class LaunchError(BigtrainError, RuntimeError):
    """The process was launched in a way the chosen backend cannot use (e.g. --backend torch without torchrun)."""
    exit_code = EXIT_USAGE


class DatasetError(BigtrainError, RuntimeError):
    """A dataset is missing, incomplete or does not match what its metadata says."""


class RejectBudgetError(DatasetError):
    """More of a run's input was rejected than its error budget allows; the snapshot was not committed."""
    exit_code = EXIT_REJECTS


class RemovalsError(DatasetError):
    """A preprocessing run would commit a snapshot that lost input: more of the previous snapshot's files removed
    than ``max_removed_fraction`` allows, every file of a class, or every file (an unmounted volume); or a snapshot
    of no input, no accepted row, or rows of a single class. Nothing was committed; the message says what vanished
    and the way past it (``--allow-removals``, ``allow_single_class``) where there is one."""
    exit_code = EXIT_REMOVALS


class DriftError(DatasetError):
    """A snapshot differs from the one it is compared with by more than a limit allows (``bigtrain verify
    --max-label-shift`` ...): the message says what shifted and by how much."""
    exit_code = EXIT_DRIFT


class ReadErrorBudgetError(DatasetError):
    """Training met more stored rows that do not read (each replaced by a stand-in of its window) than
    ``train.max_read_errors`` allows: the message names ``read_errors.jsonl`` and the data files."""
    exit_code = EXIT_READ_ERRORS


class StallBudgetError(BigtrainError, RuntimeError):
    """A training epoch's data stall exceeded ``train.max_data_stall``; the message names the rank and the stage.
    The epoch's resume point is saved first: the run resumes after the loader is fixed."""
    exit_code = EXIT_STALL


class CheckpointError(BigtrainError, RuntimeError):
    """A checkpoint is missing, incomplete, altered, foreign, or belongs to another dataset or model."""


class PeerLostError(BigtrainError, RuntimeError):
    """Another rank of the job failed or vanished during a collective; the run can be resumed from its last
    resume point."""


class LockFileError(BigtrainError, RuntimeError):
    """A lock file that bigtrain refuses to open: a symbolic link, a hard link, or anything but a regular file (one
    planted there would have bigtrain truncate another file); the message names the path."""


class UnsafeFileError(BigtrainError, RuntimeError):
    """A file bigtrain appends to (a history, a metrics log) that is a symbolic link, a hard link or not a regular
    file: writing through it could change another file (one planted there); the message names the path."""


class LockHeld(BigtrainError, RuntimeError):
    """Another process holds the lock; the message names the lock file and its holder."""
    exit_code = EXIT_LOCKED

    def __init__(self, message: str, *, path: str = "", holder: dict | None = None):
        super().__init__(message)
        self.path, self.holder = path, holder or {}
