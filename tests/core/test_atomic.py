"""core.atomic: a file is replaced whole or not at all, and no temporary file is left behind."""
from __future__ import annotations

import json
import os

import pytest

from core import atomic


def test_write_json_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    atomic.write_json(target, {"b": 1, "a": "é"})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": "é", "b": 1}
    assert target.read_text(encoding="utf-8").index('"a"') < target.read_text(encoding="utf-8").index('"b"')
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")

    def no_rename(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert (tmp_path / atomic.tmp_name("checkpoint.pt")).read_bytes() == b"new"  # what a later prune removes


def test_file_urls_and_paths_are_the_same_target(tmp_path):
    atomic.write_text("file://" + str(tmp_path / "a.txt"), "one")
    atomic.write_text(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two" and os.listdir(tmp_path) == ["a.txt"]
