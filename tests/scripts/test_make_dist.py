"""scripts/make_dist.py: --help explains and writes nothing; an output that is not a .zip is refused."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO, subprocess_env

SCRIPT = str(REPO / "scripts" / "make_dist.py")


def test_help_writes_nothing_and_a_name_that_is_not_a_zip_is_refused(tmp_path):
    done = subprocess.run([sys.executable, SCRIPT, "--help"], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "usage: scripts/make_dist.py" in done.stdout and "--py-files" in done.stdout
    done = subprocess.run([sys.executable, SCRIPT, "bundle"], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "OUTPUT_ZIP bundle must end in .zip" in done.stderr
    assert list(tmp_path.iterdir()) == []
