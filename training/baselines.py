"""The baselines every report shows beside the model's test accuracy, on the same splits: the majority class of the
train split, and for a sequence dataset a multinomial naive Bayes over token counts (Laplace smoothing), fitted on
the train split and scored on the test split. A network that does not beat the second has learned nothing beyond
word counts.

Both run on every rank over the rank's shards, through the same batch source as the model, and are summed over the
ranks: every train row counted once, every test row scored once.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from training.models import real_tokens
from training.shards import plan_shard

BAG_OF_WORDS = "multinomial naive Bayes over token counts (Laplace smoothing)"


def majority_class(classes: Sequence[str], train_rows: Sequence[int], test_rows: Sequence[int]) -> dict[str, Any]:
    """The class with most train rows (the first of a tie), and the share of test rows that are of it."""
    best = max(range(len(classes)), key=lambda i: (train_rows[i], -i))
    total = sum(test_rows)
    return {"class": classes[best], "accuracy": test_rows[best] / total if total else None}


class NaiveBayes:
    """Token counts per class (padding excluded), then log P(class) + sum over tokens of log P(token | class)."""

    def __init__(self, num_classes: int, vocab_size: int, *, alpha: float = 1.0):
        self.num_classes, self.vocab_size, self.alpha = num_classes, vocab_size, alpha
        self.counts = torch.zeros(num_classes * vocab_size + num_classes, dtype=torch.float64)  # tokens, then rows

    def add(self, tokens: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> None:
        tokens, labels = tokens.long().cpu(), labels.long().cpu()
        real = real_tokens(tokens, lengths)
        flat = (labels[:, None] * self.vocab_size + tokens)[real]
        self.counts.index_add_(0, flat, torch.ones(len(flat), dtype=torch.float64))
        self.counts.index_add_(0, self.num_classes * self.vocab_size + labels,
                               torch.ones(len(labels), dtype=torch.float64))

    def fitted(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(log prior (C,), log likelihood (V, C)) from the counts."""
        tokens = self.counts[:-self.num_classes].reshape(self.num_classes, self.vocab_size) + self.alpha
        rows = self.counts[-self.num_classes:]
        log_prior = torch.log((rows + self.alpha) / (rows.sum() + self.alpha * self.num_classes))
        return log_prior, torch.log(tokens / tokens.sum(1, keepdim=True)).T.contiguous()

    @staticmethod
    def predict(fitted: tuple[torch.Tensor, torch.Tensor], tokens: torch.Tensor,
                lengths: torch.Tensor) -> torch.Tensor:
        log_prior, log_likelihood = fitted
        tokens = tokens.long().cpu()
        real = real_tokens(tokens, lengths)
        scores = (log_likelihood[tokens] * real[..., None]).sum(1) + log_prior
        return scores.argmax(1)


def bag_of_words(batches, dist, *, batch_size: int) -> dict[str, Any]:
    """Naive Bayes fitted on the train split and its accuracy on the test split, over every rank's shards."""
    spec = batches.spec
    model = NaiveBayes(len(spec.classes), spec.sequence.vocab_size)
    train, test = batches.splits["train"], batches.splits["test"]
    for (tokens, lengths), labels, _ in batches.evaluation_batches(
            "train", plan_shard(train.row_group_sizes, dist.rank, dist.size), batch_size=batch_size):
        model.add(tokens, lengths, labels)
    model.counts = dist.allreduce_sum(model.counts, name="baseline_counts")
    fitted = model.fitted()
    scored = torch.zeros(2, dtype=torch.float64)  # right, rows
    for (tokens, lengths), labels, _ in batches.evaluation_batches(
            "test", plan_shard(test.row_group_sizes, dist.rank, dist.size), batch_size=batch_size):
        scored += torch.tensor([float((NaiveBayes.predict(fitted, tokens, lengths) == labels.cpu()).sum()),
                                float(len(labels))], dtype=torch.float64)
    right, rows = dist.allreduce_sum(scored, name="baseline_scores").tolist()
    return {"method": BAG_OF_WORDS, "accuracy": right / rows if rows else None}


def baselines(batches, dist, *, test_rows: Sequence[int], batch_size: int) -> dict[str, Any]:
    """``{"majority_class": {class, accuracy}, "bag_of_words": {method, accuracy} or None}`` (None: an image
    dataset has no words). ``test_rows``: the test split's rows per class, from the model's evaluation."""
    spec = batches.spec
    return {"majority_class": majority_class(spec.classes, batches.class_rows("train"), test_rows),
            "bag_of_words": bag_of_words(batches, dist, batch_size=batch_size) if spec.kind == "sequence" else None}
