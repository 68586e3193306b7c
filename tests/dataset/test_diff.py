"""Two snapshots compared (``bigtrain datasets diff``) and the drift gate (``bigtrain verify --max-*``, exit 7): an
incremental run that added, changed and removed known files is reported exactly, from the data, not the manifests."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from core.errors import EXIT_DRIFT
from dataset import diff
from pipelines.samples import encode, render_shape
from tests.conftest import current_snapshot


def test_psi_is_zero_for_equal_shares_and_grows_with_the_shift():
    assert diff.psi({"a": 10, "b": 10}, {"a": 50, "b": 50}) == 0.0
    small = diff.psi({"a": 50, "b": 50}, {"a": 55, "b": 45})
    large = diff.psi({"a": 50, "b": 50}, {"a": 90, "b": 10})
    assert 0 < small < 0.1 < 0.25 < large
    assert diff.psi({"a": 10}, {"a": 10, "new": 10}) > 1  # a class that appears is a large shift, finite


def test_over_limits_names_what_moved_and_by_how_much():
    found = {"label_shift_psi": 0.4, "classes": {"before": {"cat": 50, "dog": 50}, "after": {"cat": 90, "dog": 10}},
             "reject_fraction": {"before": 0.01, "after": 0.05, "change": 0.04},
             "before": {"rows": 100}, "after": {"rows": 100}}
    over = diff.over_limits(found, {"label_shift": 0.25, "reject_fraction_change": 0.02, "rows_change": 0.5})
    assert over == ["label shift (PSI) 0.4000 > 0.25 (cat 50.0% -> 90.0%, dog 50.0% -> 10.0%)",
                    "reject fraction 0.0100 -> 0.0500 (+0.0400, limit 0.02)"]
    assert diff.over_limits(found, {"label_shift": None, "reject_fraction_change": None, "rows_change": None}) == []


@pytest.fixture(scope="module")
def two_snapshots(spark, sample_images, tmp_path_factory):
    """A dataset of the sample images, then an incremental run after 3 files were added, 2 changed (other pixels,
    same class) and 1 removed; yields (first snapshot, second snapshot, what was done)."""
    from core.config import load_section
    from core.paths import to_url
    from pipelines.image_dataset import PreprocessImagesConfig, preprocess_images

    raw = tmp_path_factory.mktemp("diff") / "raw"
    shutil.copytree(sample_images, raw)
    out = raw.parent / "ds"
    config = load_section("preprocess_images", PreprocessImagesConfig, flags={"image_size": 16, "ranks": 2})
    preprocess_images(spark, input_url=to_url(str(raw)), output_url=to_url(str(out)), config=config)
    first = current_snapshot(out)
    rng = np.random.default_rng(99)  # new pictures: a copy of a committed one would be rejected as a duplicate
    circles = sorted(p for p in (raw / "circle").iterdir() if not p.name.startswith("bad"))
    for i in range(3):
        (raw / "square" / f"new_{i}.png").write_bytes(encode(render_shape("square", rng), "RGB", "PNG"))
    for a in circles[:2]:  # other pixels under its name, in its format
        a.write_bytes(encode(render_shape("circle", rng), "RGB", "JPEG" if a.suffix == ".jpg" else "PNG"))
    circles[4].unlink()
    preprocess_images(spark, input_url=to_url(str(raw)), output_url=to_url(str(out)), config=config)
    return first, current_snapshot(out)


def totals(found: dict) -> dict[str, int]:
    return {what: sum(split[what] for split in found["splits"].values())
            for what in ("added", "removed", "changed", "moved_in", "moved_out")}


@pytest.mark.spark
def test_diff_of_two_incremental_snapshots_reports_exactly_the_added_changed_and_removed_files(two_snapshots, cli):
    first, second = two_snapshots
    code, out, _ = cli("datasets", "diff", str(first), str(second), "--json")
    assert code == 0
    found = json.loads(out)
    counted = totals(found)
    # A changed file's split is drawn from its new content: it is changed where it was, or moved to another split.
    assert counted["changed"] + counted["moved_out"] == 2 and counted["moved_in"] == counted["moved_out"]
    assert (counted["added"], counted["removed"]) == (3, 1)
    per_class = {}
    for split in found["splits"].values():
        for name, counts in split["per_class"].items():
            for what, n in counts.items():
                per_class[(name, what)] = per_class.get((name, what), 0) + n
    moved = per_class.get(("circle", "moved_out"), 0)
    assert {k: v for k, v in per_class.items() if v} == {
        ("square", "added"): 3, ("circle", "removed"): 1,
        **({("circle", "changed"): 2 - moved} if moved < 2 else {}),
        **({("circle", "moved_out"): moved, ("circle", "moved_in"): moved} if moved else {})}
    assert found["after"]["rows"] == found["before"]["rows"] + 2
    assert 0 < found["label_shift_psi"] < 0.01
    assert found["input_file_bytes"]["after"]["count"] == found["input_file_bytes"]["before"]["count"] + 2
    code, text, _ = cli("datasets", "diff", str(first), str(second))
    assert code == 0
    assert f"diff {first.name} -> {second.name} (image rows)" in text
    assert f"rows {found['before']['rows']} -> {found['after']['rows']};" in text
    assert "    square: added " in text and "    circle: " in text and "dog" not in text
    code, same, _ = cli("datasets", "diff", str(second), str(second), "--json")
    assert totals(json.loads(same)) == dict.fromkeys(("added", "removed", "changed", "moved_in", "moved_out"), 0)


@pytest.mark.spark
def test_verify_gates_drift_from_the_parent_snapshot_with_exit_7(two_snapshots, cli):
    first, second = two_snapshots
    code, out, _ = cli("verify", str(second), "--quick", "--max-label-shift", "0.25", "--max-rows-change", "0.5")
    assert code == 0 and "verify: drift from " + first.name in out and "label shift (PSI) 0.00" in out
    code, out, err = cli("verify", str(second), "--quick", "--max-rows-change", "0.001")
    assert code == EXIT_DRIFT == 7
    assert f"drifted from {first.name} beyond the limits: rows " in err and "limit 0.1%" in err
    code, out, _ = cli("verify", str(first), "--quick", "--max-label-shift", "0")
    assert code == 0 and "is the dataset's first: nothing to compare with" in out
    code, _, err = cli("verify", str(first), "--quick", "--against", str(second), "--max-label-shift", "0")
    assert code == EXIT_DRIFT and "label shift (PSI)" in err and "square" in err
