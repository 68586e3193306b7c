"""A stage's command line is logged with its secrets hidden; the stage itself gets them as given."""
from __future__ import annotations

import logging
import sys

import yaml

from jobs.cli import SUBCOMMANDS
from orchestration import runner, runs

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def test_the_stage_log_line_hides_secrets_and_the_stage_gets_them(tmp_path, caplog):
    seen = tmp_path / "seen.txt"
    code = f"import sys; open({str(seen)!r}, 'w').write(sys.argv[-1])"
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "state": str(tmp_path / "state"), "stages": [
        {"name": "s", "command": [sys.executable, "-c", code, "--set", f"x.spark_conf.fs.s3a.secret.key={SECRET}"]}]}))
    with caplog.at_level(logging.INFO, logger="orchestration"):
        assert runs.run(runner.load(str(path), None, subcommands=SUBCOMMANDS)) == 0
    assert seen.read_text() == f"x.spark_conf.fs.s3a.secret.key={SECRET}"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "x.spark_conf.fs.s3a.secret.key=<redacted>" in logged and SECRET not in logged
    assert SECRET not in (tmp_path / "state" / "history.jsonl").read_text()
