"""benchmarks.run --work: only a folder the benchmarks created (or a new or empty one) is deleted and made again;
a folder of the user's is refused before anything is touched."""
from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks import common
from tests.conftest import REPO, subprocess_env


def test_a_folder_holding_a_user_file_is_refused_and_left_untouched(tmp_path):
    work = tmp_path / "thesis"
    work.mkdir()
    (work / "chapter1.tex").write_text("mine")
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--size", "smoke", "--work", str(work),
                           "--output", str(tmp_path / "results.json")], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"--work {work}: {work} holds files and was not created by benchmarks.run" in done.stderr
    assert (work / "chapter1.tex").read_text() == "mine"
    assert sorted(p.name for p in work.iterdir()) == ["chapter1.tex"]


def test_a_file_or_a_link_at_the_work_path_is_refused(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    for path in (notes, link):
        with pytest.raises(ValueError, match=f"--work {path}: {path} is not a folder"):
            common.fresh_work_folder(str(path))
    assert notes.read_text() == "mine"


def test_a_new_an_empty_or_an_earlier_work_folder_is_made_fresh_and_marked(tmp_path):
    new, empty, earlier = tmp_path / "new" / "work", tmp_path / "empty", tmp_path / "earlier"
    empty.mkdir()
    common.fresh_work_folder(str(earlier))
    (earlier / "raw-images").mkdir()
    (earlier / "raw-images" / "a.png").write_bytes(b"x")
    for work in (new, empty, earlier):
        assert common.fresh_work_folder(str(work)) == str(work)
        assert sorted(p.name for p in work.iterdir()) == [common.WORK_MARKER]
