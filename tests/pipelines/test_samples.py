"""The sample data carries the signals the demo relies on."""
from __future__ import annotations

import numpy as np
import torch

from pipelines.samples import generate_texts, render_review
from pipelines.text import normalise, tokenise


def test_generated_texts_are_balanced_and_deterministic(tmp_path):
    a = generate_texts(tmp_path / "a", records=400, files=2, seed=1)
    b = generate_texts(tmp_path / "b", records=400, files=2, seed=1)
    assert a == b and abs(a["positive"] - a["negative"]) < 80
    assert (tmp_path / "a" / "part-00000.jsonl").read_bytes() == (tmp_path / "b" / "part-00000.jsonl").read_bytes()


def bag_of_words(texts, vocab):
    x = torch.zeros(len(texts), len(vocab))
    for i, text in enumerate(texts):
        for token in tokenise(normalise(text, lowercase=True), "word"):
            if token in vocab:
                x[i, vocab[token]] += 1
    return x


def test_word_order_matters_a_bag_of_words_cannot_reach_full_accuracy():
    """A neural network on word counts (fit to convergence) stays well below the 85% the sequence demo must reach:
    the same words ('not', 'good') mean different things in different orders."""
    rng = np.random.default_rng(0)
    pairs = [render_review(rng) for _ in range(4000)]
    texts, labels = [t for t, _ in pairs], torch.tensor([1.0 if y == "positive" else 0.0 for _, y in pairs])
    vocab = {t: i for i, t in enumerate(sorted({t for s in texts for t in tokenise(normalise(s, lowercase=True), "word")}))}
    x = bag_of_words(texts, vocab)
    x = torch.cat([x, (x > 0).float()], dim=1)  # counts and presence
    train, test = slice(0, 3000), slice(3000, 4000)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(400):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[train]).squeeze(1), labels[train])
        loss.backward()
        optimizer.step()
    accuracy = ((model(x[test]).squeeze(1) > 0).float() == labels[test]).float().mean().item()
    train_accuracy = ((model(x[train]).squeeze(1) > 0).float() == labels[train]).float().mean().item()
    print(f"bag of words: train accuracy {train_accuracy:.3f}, test accuracy {accuracy:.3f}")
    assert train_accuracy > 0.7  # it learned the adjectives and the negator counts ...
    assert accuracy < 0.82, accuracy  # ... but cannot tell which adjective a negator belongs to
