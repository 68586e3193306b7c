"""Reports: metrics.jsonl and TensorBoard events per epoch, the classification report's numbers, the PNG plots."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from training import reports

CLASSES = ["cat", "dog", "fox"]
# rows = true, columns = predicted. cat: 5 right, 1 taken for dog; dog: 2 as cat, 3 right, 1 as fox;
# fox: 2 as dog, never right.
CONFUSION = [[5, 1, 0],
             [2, 3, 1],
             [0, 2, 0]]


def test_classification_report_matches_hand_computed_numbers():
    report = reports.classification_report(np.array(CONFUSION), CLASSES)
    assert report["rows"] == 14 and report["classes"] == CLASSES
    assert report["accuracy"] == pytest.approx(8 / 14)
    assert report["confusion_matrix"] == CONFUSION
    cat, dog, fox = (report["per_class"][n] for n in CLASSES)
    # cat: precision 5/7 (column 5+2+0), recall 5/6, F1 = 2pr/(p+r) = 10/13
    assert (cat["precision"], cat["recall"], cat["support"]) == (pytest.approx(5 / 7), pytest.approx(5 / 6), 6)
    assert cat["f1"] == pytest.approx(10 / 13)
    # dog: precision 3/6, recall 3/6, F1 1/2
    assert (dog["precision"], dog["recall"], dog["f1"], dog["support"]) == (0.5, 0.5, 0.5, 6)
    # fox: predicted once (wrongly), so precision 0/1 = 0; recall 0/2 = 0; F1 is 0, not undefined
    assert (fox["precision"], fox["recall"], fox["f1"], fox["support"]) == (0.0, 0.0, 0.0, 2)
    macro = report["macro_avg"]
    assert macro["precision"] == pytest.approx((5 / 7 + 0.5 + 0) / 3)
    assert macro["recall"] == pytest.approx((5 / 6 + 0.5 + 0) / 3)
    assert macro["f1"] == pytest.approx((10 / 13 + 0.5 + 0) / 3)
    assert macro["support"] == 14
    weighted = report["weighted_avg"]
    assert weighted["recall"] == pytest.approx((6 * 5 / 6 + 6 * 0.5 + 2 * 0) / 14)  # = accuracy
    assert weighted["recall"] == pytest.approx(report["accuracy"])
    assert weighted["precision"] == pytest.approx((6 * 5 / 7 + 6 * 0.5) / 14)


def test_undefined_values_are_none_and_averages_skip_them():
    # fox is never predicted (precision undefined); eel is absent from the data (recall undefined) but predicted once.
    matrix = torch.tensor([[4, 0, 0, 0],
                           [0, 2, 0, 1],
                           [1, 1, 0, 0],
                           [0, 0, 0, 0]])
    report = reports.classification_report(matrix, ["cat", "dog", "fox", "eel"])
    fox, eel = report["per_class"]["fox"], report["per_class"]["eel"]
    assert (fox["precision"], fox["recall"], fox["f1"]) == (None, 0.0, None)
    assert (eel["precision"], eel["recall"], eel["f1"], eel["support"]) == (0.0, None, None, 0)
    macro = report["macro_avg"]
    assert macro["precision"] == pytest.approx((4 / 5 + 2 / 3 + 0.0) / 3)       # cat, dog, eel
    assert macro["recall"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)            # cat, dog, fox
    assert macro["f1"] == pytest.approx((8 / 9 + 2 / 3) / 2)                    # cat, dog
    assert reports.classification_report(np.zeros((2, 2)), ["a", "b"])["accuracy"] is None


@pytest.mark.parametrize("matrix, message", [
    (np.zeros((2, 3)), "square"),
    (np.zeros((2, 2)), "3 classes"),
    (np.array([[1, -1, 0], [0, 0, 0], [0, 0, 0]]), "non-negative"),
])
def test_bad_confusion_matrices_are_refused_with_the_reason(matrix, message):
    with pytest.raises(ValueError, match=message):
        reports.classification_report(matrix, CLASSES)


def test_confusion_matrix_from_labels():
    matrix = reports.confusion_matrix([0, 0, 1, 2, 2], [0, 1, 1, 2, 0], 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _record(epoch, **extra):
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "train_accuracy": 0.5 + 0.1 * epoch, "val_loss": None,
            "lr": np.float32(0.01), "seconds": 1.5, "early_stop": False, "model": "cnn", **extra}


def test_metrics_log_writes_json_lines_and_tensorboard_scalars(tmp_path):
    with reports.MetricsLog(tmp_path / "run") as metrics:
        metrics.log_epoch(_record(1, data_stall=0.25))
        metrics.log_epoch(_record(2, data_stall=float("nan")))
        # the line is on disk as soon as the epoch is logged, before close
        assert len(reports.read_metrics(tmp_path / "run")) == 2
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first == {"epoch": 1, "train_loss": 1.0, "train_accuracy": pytest.approx(0.6), "val_loss": None,
                     "lr": pytest.approx(0.01), "seconds": 1.5, "early_stop": False, "model": "cnn",
                     "data_stall": 0.25}
    assert second["data_stall"] is None  # NaN is written as null: strict JSON
    scalars = _scalars(tmp_path / "run" / "tensorboard")
    assert set(scalars) == {"epoch/train_loss", "epoch/train_accuracy", "epoch/lr", "epoch/seconds",
                            "epoch/data_stall"}  # None, booleans and text are not drawn
    assert scalars["epoch/train_loss"] == [(1, 1.0), (2, 0.5)]
    assert scalars["epoch/data_stall"][0] == (1, 0.25) and math.isnan(scalars["epoch/data_stall"][1][1])


def test_a_metrics_line_torn_by_a_crash_is_skipped_not_raised(tmp_path, caplog):
    with reports.MetricsLog(tmp_path / "run") as metrics:
        metrics.log_epoch(_record(1))
    with open(tmp_path / "run" / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "train_lo')  # power lost while epoch 2 was appended
    assert [r["epoch"] for r in reports.read_metrics(tmp_path / "run")] == [1]
    assert f"{tmp_path / 'run' / 'metrics.jsonl'}:2 is not a metrics record" in caplog.text


def test_resumed_metrics_log_keeps_its_history_and_drops_what_came_after(tmp_path):
    out = tmp_path / "run"
    with reports.MetricsLog(out) as metrics:
        for epoch in (1, 2, 3):
            metrics.log_epoch(_record(epoch))
    # the run was killed during epoch 3, after logging it but before its resume point: it resumes from epoch 2
    history = reports.read_metrics(out)[:2]
    with reports.MetricsLog(out, history=history) as metrics:
        metrics.log_epoch(_record(3, train_loss=0.3))
    records = reports.read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[2]["train_loss"] == 0.3
    assert _scalars(out / "tensorboard")["epoch/train_loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(0.3))]


def test_a_record_without_an_epoch_is_refused(tmp_path):
    with reports.MetricsLog(tmp_path) as metrics, pytest.raises(ValueError, match="epoch.*train_loss"):
        metrics.log_epoch({"train_loss": 0.1})


def test_evaluation_report_files(tmp_path):
    from PIL import Image

    report = reports.classification_report(np.array(CONFUSION), CLASSES)
    history = [_record(1, val_loss=0.9, val_accuracy=0.55, data_stall=0.3),
               _record(2, val_loss=0.7, val_accuracy=0.6, data_stall=0.1)]
    paths = reports.write_evaluation_report(tmp_path / "out", report, history)
    assert [p.name for p in paths] == ["evaluation.json", "confusion_matrix.png", "training_curves.png"]
    saved = json.loads(paths[0].read_text())
    assert saved["accuracy"] == pytest.approx(8 / 14)
    assert saved["per_class"]["cat"]["f1"] == pytest.approx(10 / 13)
    assert saved["confusion_matrix"] == CONFUSION
    for path, min_width in ((paths[1], 300), (paths[2], 1000)):  # the curves have three panels with data stall
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= min_width and image.height >= 250
    assert not list((tmp_path / "out").glob(".*tmp*"))


def test_curves_without_epochs_or_data_stall_still_draw(tmp_path):
    from PIL import Image

    report = reports.classification_report(np.zeros((2, 2)), ["a", "b"])
    paths = reports.write_evaluation_report(tmp_path, report, [])
    with Image.open(paths[2]) as image:
        assert image.width < 1000  # two panels: no data-stall panel without data-stall values


def test_curve_panels_mark_the_kept_epoch_in_every_panel():
    history = [_record(1, val_loss=0.0009, val_accuracy=0.9, data_stall=0.2),
               _record(2, val_loss=0.0001, val_accuracy=0.95, data_stall=0.1), _record(3, val_loss=0.0004)]
    panels = reports.curve_panels(history, kept_epoch=2)
    assert [p.title for p in panels] == ["loss", "accuracy", "data stall (share of step time waiting for data)"]
    assert [p.kept_epoch for p in panels] == [2, 2, 2]
    loss = panels[0]
    assert [label for label, _, _ in loss.lines] == ["train loss", "validation loss"]
    assert loss.lines[1][1:] == ([1.0, 2.0, 3.0], [0.0009, 0.0001, 0.0004])
    assert [p.share for p in panels] == [False, True, True]
    assert [p.kept_epoch for p in reports.curve_panels(history, kept_epoch=None)] == [None, None, None]
    assert [p.kept_epoch for p in reports.curve_panels(history, kept_epoch=7)] == [None, None, None]  # not recorded


def test_the_evaluation_report_hands_the_kept_epoch_to_the_curves(tmp_path, monkeypatch):
    asked = []
    panels = reports.curve_panels
    monkeypatch.setattr(reports, "curve_panels", lambda history, kept_epoch=None: asked.append(kept_epoch) or
                        panels(history, kept_epoch))
    report = {**reports.classification_report(np.array(CONFUSION), CLASSES), "weights_epoch": 1}
    reports.write_evaluation_report(tmp_path, report, [_record(1, val_loss=0.5), _record(2, val_loss=0.6)])
    assert asked == [1]


def test_val_loss_summary_names_the_kept_loss_and_the_lowest_one_apart():
    history = [_record(1, val_loss=0.002), _record(2, val_loss=0.0009), _record(3, val_loss=float("nan")),
               _record(4, val_loss=0.000899), _record(5, val_loss=0.000899), _record(6)]
    assert reports.val_loss_summary(history, 2) == {"kept_val_loss": 0.0009, "lowest_val_loss": 0.000899,
                                                    "lowest_val_loss_epoch": 4}
    assert reports.val_loss_summary(history, 6)["kept_val_loss"] is None  # an epoch without validation
    assert reports.val_loss_summary([_record(1)], 1) == {"kept_val_loss": None, "lowest_val_loss": None,
                                                         "lowest_val_loss_epoch": None}
