"""One command's output is never written into another's: each refuses a folder holding another kind of output,
naming the flag and what is there (jobs.common.check_output_kind)."""
from __future__ import annotations

import pytest

from core.errors import UsageError
from core.paths import to_url
from dataset import layout
from jobs import common, train


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


@pytest.mark.spark
@pytest.mark.parametrize("mode", ["incremental", "overwrite"])
def test_an_image_job_refuses_a_sequence_dataset_as_its_output(spark, text_dataset, sample_images, tmp_path, mode):
    import shutil

    from core.config import load_section
    from pipelines.image_dataset import PreprocessImagesConfig, preprocess_images

    out = tmp_path / "texts_ds"
    shutil.copytree(text_dataset.parent.parent, out)  # the fixture is a snapshot folder: its dataset
    before = layout.snapshot_ids(to_url(str(out)))
    config = load_section("preprocess_images", PreprocessImagesConfig, flags={"image_size": 16, "mode": mode})
    with pytest.raises(UsageError, match=r"holds a sequence dataset \(snapshot \d{6}-.*\); this job writes an image "
                                         r"dataset: give another folder"):
        preprocess_images(spark, input_url=to_url(str(sample_images)), output_url=to_url(str(out)), config=config)
    assert layout.snapshot_ids(to_url(str(out))) == before  # nothing staged, nothing committed


def test_preprocessing_refuses_a_snapshot_folder_as_its_output(tmp_path):
    snapshot = tmp_path / "ds" / "snapshots" / "000001-20261201T000000Z"
    snapshot.mkdir(parents=True)
    (snapshot / "metadata.json").write_text("{}")
    with pytest.raises(UsageError, match=r"is a snapshot of a dataset \(it holds metadata\.json\); give the dataset "
                                         r"folder \(file://.*/ds\) or another folder"):
        common.check_output_kind(to_url(str(snapshot)), writes="bigtrain dataset")
