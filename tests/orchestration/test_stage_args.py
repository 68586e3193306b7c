"""A pipeline checks every stage's arguments against its subcommand's parser before the first stage runs: a
misspelt flag refuses the whole pipeline with exit 2 and one line naming the file, the stage and the flag, nothing
runs and no run is recorded."""
from __future__ import annotations

import subprocess
import sys

import pytest

from jobs import pipeline as pipeline_job
from jobs.cli import SUBCOMMANDS, argument_problem
from orchestration import runner
from tests.conftest import REPO, subprocess_env
from tests.orchestration.test_runner import write_pipeline


def two_stages(tmp_path, **sequence_args):
    raw = tmp_path / "raw"
    return raw, write_pipeline(tmp_path, [
        {"name": "sample", "run": "generate-texts", "args": {"output": str(raw), "records": 20, "files": 1}},
        {"name": "tokenise", "run": "preprocess-sequences",
         "args": {"input": str(raw), "output": str(tmp_path / "ds"), **sequence_args}}])


def test_a_misspelt_stage_argument_refuses_the_pipeline_before_any_stage_runs(tmp_path, capsys):
    raw, file = two_stages(tmp_path, **{"max-lenght": 32})
    assert pipeline_job.main(["run", file]) == 2
    out, err = capsys.readouterr()
    assert err == (f"error: {file}: stage tokenise (preprocess-sequences): unrecognized arguments: --max-lenght 32 "
                   "(did you mean --max-length?)\n")
    assert out == "" and "usage:" not in err  # argparse's own usage and exit stay inside the check
    assert not raw.exists()  # the first stage never ran
    assert not (tmp_path / "state").exists()  # no lock taken, no history record of a run that never started


def test_a_bad_stage_value_is_refused_with_argparses_message(tmp_path, capsys):
    _, file = two_stages(tmp_path, **{"max-length": "many"})
    assert pipeline_job.main(["run", file]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {file}: stage tokenise (preprocess-sequences): argument --max-length: ")
    assert "--max-length must be a whole number, got 'many'" in err and err.count("\n") == 1


@pytest.mark.parametrize("subcommand, argv, problem", [
    ("train", ["--data", "d", "--output", "m", "--max-epochs=3"],
     "unrecognized arguments: --max-epochs=3 (did you mean --epochs?)"),
    ("train", ["--data", "d", "--output", "m", "--epoch", "3"],  # no abbreviations: the job refuses it too
     "unrecognized arguments: --epoch 3 (did you mean --epochs?)"),
    ("train", ["--data", "d"], "the following arguments are required: --output"),
    ("verify", ["d", "--jsn"], "unrecognized arguments: --jsn (did you mean --json?)"),
    ("predict", ["--checkpoint", "c", "--data", "d", "--output", "o", "--zzzz"],
     "unrecognized arguments: --zzzz"),  # no flag is close: no suggestion
    ("generate-images", ["--output", "o", "--per-class", "0"],
     "argument --per-class: --per-class must be positive, got 0"),
    ("datasets", ["gc", "d"], "the following arguments are required: --keep"),  # a sub-parser's own error
    ("train", ["--data", "d", "--output", "m", "--help"], None),  # help prints (captured) and exits 0
    ("preprocess-images", ["--input", "i", "--output", "o", "--image-size", "32", "--quiet"], None),
])
def test_argument_problem_is_argparses_message_without_running_or_printing(subcommand, argv, problem, capsys):
    assert argument_problem(subcommand, argv) == problem
    assert capsys.readouterr() == ("", "")


def test_every_subcommand_parser_builds_without_spark_or_torch():
    code = ("import sys\nfrom jobs.cli import SUBCOMMANDS, argument_problem\n"
            "for name in SUBCOMMANDS: argument_problem(name, ['--help'])\n"
            "print(sorted(m for m in ('pyspark', 'torch', 'horovod', 'petastorm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, "[]\n", "")


def test_the_example_pipelines_pass_the_check():
    for file in sorted((REPO / "conf" / "pipelines").glob("*.yaml")):
        runner.check_arguments(runner.load(str(file), subcommands=SUBCOMMANDS), argument_problem)


def test_command_stages_are_not_checked_and_history_still_reads(tmp_path, capsys):
    _, file = two_stages(tmp_path, **{"max-lenght": 32})
    assert pipeline_job.main(["history", file]) == 0  # the file's history is readable while its args are wrong
    assert "no runs recorded" in capsys.readouterr().out
    free = write_pipeline(tmp_path, [{"name": "any", "command": [sys.executable, "-c", "pass", "--whatever"]}])
    runner.check_arguments(runner.load(free, subcommands=SUBCOMMANDS), argument_problem)
