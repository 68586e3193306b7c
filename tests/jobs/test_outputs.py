"""One command's output is never written into another's: each refuses a folder holding another kind of output,
naming the flag and what is there (jobs.common.check_output_kind)."""
from __future__ import annotations

import pytest

from core.errors import UsageError
from core.paths import to_url
from dataset import layout
from jobs import common, predict, train
from training import checkpoint, trainer


def test_the_markers_are_the_names_the_writers_use():
    assert common.OUTPUT_MARKERS["bigtrain dataset"] == (layout.SNAPSHOTS_DIR, layout.METADATA_FILE)
    assert common.OUTPUT_MARKERS["training output"] == (checkpoint.FINAL_FILE, trainer.METRICS_FILE,
                                                        checkpoint.RESUME_DIR)
    assert common.OUTPUT_MARKERS["prediction output"] == (predict.SUMMARY_FILE,)


@pytest.mark.parametrize("marker, kind", [("snapshots", "bigtrain dataset"), ("_predict.json", "prediction output")])
def test_training_refuses_a_dataset_or_predictions_as_its_output(tmp_path, capsys, marker, kind):
    out = tmp_path / "out"
    out.mkdir()
    (out / marker).mkdir() if marker == "snapshots" else (out / marker).write_text("{}")
    assert train.main(["--data", str(tmp_path / "ds"), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--output {to_url(str(out))} holds a {kind} ({marker} is there); this command writes a training " \
           "output" in err
    assert sorted(p.name for p in out.iterdir()) == [marker]  # nothing written beside it


def test_preprocessing_refuses_a_model_folder_as_its_output(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(UsageError, match=r"holds a training output \(checkpoint\.pt is there\); this command writes "
                                         r"a bigtrain dataset"):
        common.check_output_kind(to_url(str(out)), writes="bigtrain dataset")


def test_an_empty_new_or_same_kind_folder_is_fine(tmp_path):
    common.check_output_kind(to_url(str(tmp_path / "new")), writes="training output")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "metrics.json").write_text("{}")
    common.check_output_kind(to_url(str(tmp_path / "model")), writes="training output")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README").write_text("mine")
    common.check_output_kind(to_url(str(tmp_path / "notes")), writes="bigtrain dataset")


def test_preprocess_images_refuses_a_model_folder_before_starting_spark(tmp_path, capsys):
    from jobs import preprocess_images

    (tmp_path / "raw" / "cat").mkdir(parents=True)
    out = tmp_path / "model"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    assert preprocess_images.main(["--input", str(tmp_path / "raw"), "--output", str(out), "--quiet"]) == 2
    assert "holds a training output (metrics.json is there)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
