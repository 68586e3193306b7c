"""core.errors: each error a command reports carries the exit code of the documented rule, and run_main turns it
into one line on stderr and that code; anything else keeps its traceback."""
from __future__ import annotations

import pytest

from core import errors
from jobs.common import run_main


@pytest.mark.parametrize("error, code", [
    (errors.UsageError("--epochs must be positive"), 2), (errors.ConfigError("config key train.lr: ..."), 2),
    (errors.LaunchError("--backend torch needs torchrun"), 2), (errors.DatasetError("ds/metadata.json not found"), 1),
    (errors.CheckpointError("checkpoint.pt altered"), 1), (errors.PeerLostError("rank 1 vanished"), 1),
    (errors.RejectBudgetError("40% rejected"), 3), (errors.LockHeld("already running"), 75),
])
def test_each_error_ends_the_job_in_one_line_with_its_exit_code(error, code, capsys):
    def body() -> int:
        raise error

    assert run_main(body) == code == error.exit_code
    assert capsys.readouterr().err == f"error: {error}\n"


def test_other_exceptions_keep_their_traceback():
    def body() -> int:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_main(body)


def test_the_codes_are_the_documented_ones():
    assert (errors.EXIT_OK, errors.EXIT_FAILED, errors.EXIT_USAGE, errors.EXIT_REJECTS, errors.EXIT_LOCKED) == (
        0, 1, 2, 3, 75)


def test_counts_and_articles_read_as_english():
    from core.logs import counted, with_article

    assert [counted(n, "rank") for n in (0, 1, 2)] == ["0 ranks", "1 rank", "2 ranks"]
    assert counted(1, "class", "classes") == "1 class" and counted(3, "class", "classes") == "3 classes"
    assert with_article("image") == "an image" and with_article("sequence") == "a sequence"
