"""How every command ends (jobs.common.run_main): one line and an exit code, never a traceback for the usual cases."""
from __future__ import annotations

import subprocess
import sys

import pytest

from core.errors import EXIT_INTERRUPTED, ConfigError, DatasetError
from jobs.common import launcher_rank, run_main
from tests.conftest import REPO, subprocess_env


def test_a_bigtrain_error_is_one_line_and_its_exit_code(capsys):
    def body() -> int:
        raise ConfigError("config key train.lr: must be positive")

    assert run_main(body) == 2
    assert capsys.readouterr().err == "error: config key train.lr: must be positive\n"


def test_ctrl_c_is_one_line_saying_what_to_do_next(capsys):
    def body() -> int:
        raise KeyboardInterrupt

    assert run_main(body, on_interrupt="the same command resumes it") == EXIT_INTERRUPTED == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted: the same command resumes it" and "Traceback" not in err


def test_output_piped_into_head_ends_quietly():
    code = ("import sys; from jobs.common import run_main\n"
            "def body():\n    for _ in range(10000):\n        print('x' * 1000)\n    return 0\n"
            "sys.exit(run_main(body))")
    job = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    assert len(job.stdout.read(10)) == 10
    job.stdout.close()  # what `| head` does after its lines
    err = job.stderr.read().decode()
    assert job.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipeError" not in err, err


@pytest.mark.parametrize("rank", ["0", "1"])
def test_under_a_launcher_a_config_error_and_the_interrupt_line_come_from_rank_0_only(rank, monkeypatch, capsys):
    monkeypatch.setenv("HOROVOD_RANK", rank)

    def config_error() -> int:
        raise ConfigError("config key train.lr: must be positive")

    def data_error() -> int:
        raise DatasetError("rank 1: shard 3 of file://ds/train is empty")

    def interrupted() -> int:
        raise KeyboardInterrupt

    assert run_main(config_error) == 2 and run_main(interrupted, on_interrupt="resumable") == 130
    printed = capsys.readouterr().err
    assert printed == ("error: config key train.lr: must be positive\n\ninterrupted: resumable\n" if rank == "0" else "")
    assert run_main(data_error) == 1  # met by one rank: that rank says it, whichever it is
    assert capsys.readouterr().err == "error: rank 1: shard 3 of file://ds/train is empty\n"


def test_the_launchers_rank_variables():
    assert launcher_rank({}) is None and launcher_rank({"RANK": "3"}) is None  # RANK alone: not a launcher of ours
    assert launcher_rank({"RANK": "3", "TORCHELASTIC_RUN_ID": "x"}) == 3  # torchrun
    assert launcher_rank({"HOROVOD_RANK": "1"}) == 1 and launcher_rank({"OMPI_COMM_WORLD_RANK": "2"}) == 2


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_train_ctrl_c_or_a_launchers_sigterm_says_the_run_is_resumable(tmp_path, signum):
    """A real SIGINT (Ctrl-C) or SIGTERM (what horovodrun and torchrun send their ranks on Ctrl-C, and what a
    scheduler sends to stop a job) to `bigtrain train` while it waits: one line naming the output folder, exit 130."""
    import signal
    import time

    code = ("import sys, time\nimport jobs.train as t\n"
            "t.run = lambda args: (print('ready', flush=True), time.sleep(60))[1]\n"
            f"sys.exit(t.main(['--data', 'd', '--output', {str(tmp_path / 'm')!r}]))")
    # The child starts as from a terminal: SIGINT at its default, whatever this test process inherited or was left
    # with (under Python 3.12 the fast suite leaves SIGINT ignored or blocked here, and a child inherits both), but
    # blocked, which run_main undoes (a job started with SIGINT blocked never saw Ctrl-C).
    def as_from_a_terminal():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    job = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_terminal)
    assert job.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    job.send_signal(getattr(signal, signum))
    err = job.stderr.read()
    assert job.wait(timeout=60) == 130
    assert "Traceback" not in err and f"the run is resumable: the same command resumes it from the last checkpoint " \
           f"in {tmp_path / 'm'}" in err, err
