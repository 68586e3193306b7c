"""jobs/train.py's closing lines."""
from __future__ import annotations

import pytest

from jobs.train import weak_model


def test_a_model_no_better_than_a_baseline_is_flagged():
    def metrics(accuracy, bag_of_words=None):
        compared = {"majority_class": {"accuracy": 0.40},
                    "bag_of_words": {"accuracy": bag_of_words} if bag_of_words is not None else None}
        return {"test_accuracy": accuracy, "baselines": compared}

    assert weak_model(metrics(0.88, bag_of_words=0.70)) is None
    assert "no better than a bag-of-words model (0.7000)" in weak_model(metrics(0.56, bag_of_words=0.70))
    assert "no better than the majority class (0.4000)" in weak_model(metrics(0.40))
    assert weak_model(metrics(None)) is None
    assert weak_model(metrics(1.0, bag_of_words=1.0)) is None  # a perfect model is not told to train longer


@pytest.mark.spark  # the session's image dataset
def test_an_output_inside_the_dataset_is_refused_before_training(image_dataset, capsys):
    from jobs.train import main

    dataset = image_dataset.parent.parent  # <dataset>/snapshots/<id> -> <dataset>
    for data, output in ((dataset, dataset / "model"), (image_dataset, dataset / "snapshots" / "model")):
        assert main(["--data", str(data), "--output", str(output), "--epochs", "1"]) == 2
        assert "is inside --data" in capsys.readouterr().err and not output.exists()
