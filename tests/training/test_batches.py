"""bigtrain batches: a step's rows rebuilt from a finished run's recorded settings and dataset snapshot equal the
rows the run trained at that step (their digest is the logged one), for every step of the run."""
from __future__ import annotations

import json

import pytest

from training import digests

pytestmark = pytest.mark.spark  # the session's image dataset


@pytest.fixture(scope="module")
def run(image_dataset, tmp_path_factory):
    from jobs.train import main

    out = tmp_path_factory.mktemp("batches") / "run"
    assert main(["--data", str(image_dataset), "--output", str(out), "--epochs", "2", "--batch-size", "16",
                 "--backend", "single", "--no-progress", "--set", "train.early_stopping_patience=0"]) == 0
    return out


def test_every_step_rebuilt_has_the_digest_the_run_logged(run, cli):
    logged = digests.read(run)
    assert {epoch for (_, epoch, _) in logged} == {1, 2} and len(logged) >= 8
    for (rank, epoch, step), (world, value) in logged.items():
        code, out, err = cli("batches", "--run", str(run), "--epoch", str(epoch), "--step", str(step), "--check",
                             "--json")
        assert code == 0, err
        found = json.loads(out.split("\nbatches: check ok")[0])
        assert (found["digest"], found["logged"], found["world"]) == (value, value, world) and world == 1
        assert len(found["rows"]) == 16 and all(row["source"].count("/") == 1 for row in found["rows"])
        assert all(row["source"].split("/")[0] == row["label"] for row in found["rows"])  # class folder = label


def test_a_batch_that_is_not_the_logged_one_fails_the_check(run, cli, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    log = copy / "digests" / "rank0.tsv"
    lines = log.read_text().splitlines()
    lines[2] = "\t".join(lines[2].split("\t")[:3] + ["0" * 16])
    log.write_text("\n".join(lines) + "\n")
    epoch, step = lines[2].split("\t")[:2]
    code, _, err = cli("batches", "--run", str(copy), "--epoch", epoch, "--step", step, "--check")
    assert code == 1 and "is not the logged 0000000000000000" in err
    code, _, err = cli("batches", "--run", str(copy), "--epoch", "1", "--step", "999")
    assert code == 2 and "--step 999: epoch 1 has" in err and "steps per rank at world size 1" in err
