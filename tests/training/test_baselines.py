"""The baselines beside every model: the train split's majority class and a bag-of-words naive Bayes, checked
against a plain re-implementation on the same rows, and found in metrics.json, evaluation.json and the log line."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tests.training.inmemory import config, image_source
from training.baselines import NaiveBayes, majority_class
from training.distributed import SingleProcess
from training.wiring import build_trainer


def reference_naive_bayes(train, test, classes: int, vocab: int) -> float:
    """Multinomial naive Bayes with add-one smoothing, written out loop by loop."""
    (tokens, lengths), labels = train.inputs, train.labels
    counts = np.ones((classes, vocab))
    rows = np.zeros(classes)
    for row, n, y in zip(tokens.tolist(), lengths.tolist(), labels.tolist()):
        rows[y] += 1
        for token in row[:n]:
            counts[y, token] += 1
    right = 0
    for row, n, y in zip(test.inputs[0].tolist(), test.inputs[1].tolist(), test.labels.tolist()):
        scores = [math.log((rows[c] + 1) / (rows.sum() + classes))
                  + sum(math.log(counts[c, t] / counts[c].sum()) for t in row[:n]) for c in range(classes)]
        right += int(np.argmax(scores) == y)
    return right / len(test)


def noisy_sequences(seed: int = 3):
    """Overlapping token ranges, so that naive Bayes is right often but not always."""
    from training.sources import InMemorySource

    rng = np.random.default_rng(seed)
    splits = {}
    for name, n in (("train", 120), ("validation", 30), ("test", 60)):
        labels = rng.integers(0, 3, n)
        lengths = rng.integers(2, 9, n)
        tokens = rng.integers(2, 14, (n, 8)) + 2 * labels[:, None]
        tokens[np.arange(8)[None, :] >= lengths[:, None]] = 0
        splits[name] = (tokens, lengths, labels)
    return InMemorySource.sequences(splits, classes=["x", "y", "z"], vocab_size=20, row_group_rows=16)


def test_naive_bayes_scores_as_the_textbook_formula_does():
    source = noisy_sequences()
    model = NaiveBayes(3, 20)
    train, test = source.examples["train"], source.examples["test"]
    model.add(*train.inputs, train.labels)
    predicted = NaiveBayes.predict(model.fitted(), *test.inputs)
    accuracy = float((predicted == test.labels).float().mean())
    assert accuracy == pytest.approx(reference_naive_bayes(train, test, 3, 20))
    assert 0.4 < accuracy < 1.0  # informative, not perfect: the comparison above means something


def test_the_majority_class_is_the_train_splits_and_is_scored_on_test():
    assert majority_class(["a", "b", "c"], [5, 9, 9], [10, 20, 30]) == {"class": "b", "accuracy": 20 / 60}
    assert majority_class(["a", "b"], [1, 0], [0, 0]) == {"class": "a", "accuracy": None}


def test_every_report_shows_both_baselines_on_the_same_splits(tmp_path, caplog):
    source = noisy_sequences()
    with caplog.at_level("INFO", logger="bigtrain.train"):
        metrics = build_trainer(config("train.epochs=2", "train.model=fasttext"), source, tmp_path,
                                SingleProcess()).fit().metrics
    train, test = source.examples["train"], source.examples["test"]
    top = int(torch.bincount(train.labels, minlength=3).argmax())
    expected = {"majority_class": {"class": "xyz"[top], "accuracy": pytest.approx(float((test.labels == top).sum()) / 60)},
                "bag_of_words": {"method": "multinomial naive Bayes over token counts (Laplace smoothing)",
                                 "accuracy": pytest.approx(reference_naive_bayes(train, test, 3, 20))}}
    assert metrics["baselines"] == expected
    assert json.loads((tmp_path / "metrics.json").read_text())["baselines"] == expected
    assert json.loads((tmp_path / "evaluation.json").read_text())["baselines"] == expected
    words = expected["bag_of_words"]["accuracy"].expected
    assert f"majority class {(test.labels == top).sum() / 60:.4f}, bag-of-words naive Bayes {words:.4f}" \
        in caplog.text


def test_an_image_dataset_has_a_majority_class_and_no_bag_of_words(tmp_path):
    source = image_source()
    metrics = build_trainer(config(), source, tmp_path, SingleProcess()).fit().metrics
    assert metrics["baselines"]["bag_of_words"] is None
    test = source.examples["test"].labels
    top = int(torch.bincount(source.examples["train"].labels, minlength=2).argmax())
    assert metrics["baselines"]["majority_class"]["accuracy"] == pytest.approx(float((test == top).float().mean()))
