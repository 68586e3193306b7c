import dataclasses

import pytest
import torch

from dataset.manifest import DatasetSpec, ImageSpec
from training.models import CNN, build_model


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32), (3, 17), (1, 64)])
def test_cnn_derives_its_flattened_size_from_the_input(channels, size):
    model = CNN(in_channels=channels, image_size=size, num_classes=7)
    assert model(torch.zeros(5, channels, size, size)).shape == (5, 7)
    expected_flat = 64 * (size // 2 // 2) ** 2
    assert model.classifier[1].in_features == expected_flat


def test_build_model_follows_the_dataset_kind():
    from core.config import load_section
    from training.config import TrainConfig

    config = load_section("train", TrainConfig)
    spec = DatasetSpec("image", ["a", "b"], image=ImageSpec(size=12, channels=1, codec="png", shape=[12, 12]))
    assert isinstance(build_model("auto", dataset=spec, config=config), CNN)
    with pytest.raises(ValueError, match="kind 'text'"):
        build_model("auto", dataset=dataclasses.replace(spec, kind="text"), config=config)


def test_a_model_for_the_other_kind_of_dataset_is_a_config_error_naming_the_key():
    from core.config import load_section
    from core.errors import ConfigError
    from dataset.manifest import SequenceSpec
    from training.config import TrainConfig

    config = load_section("train", TrainConfig)
    images = DatasetSpec("image", ["a", "b"], image=ImageSpec(size=12, channels=1, codec="png", shape=[12, 12]))
    with pytest.raises(ConfigError, match=r"train\.model \(--model\): lstm needs a sequence dataset, this one is an "
                                          r"image dataset \(use cnn, or auto\)"):
        build_model("lstm", dataset=images, config=config)
    texts = DatasetSpec("sequence", ["a", "b"], sequence=SequenceSpec(vocab_size=10, token_dtype="<u2", max_length=5,
                                                                      tokenizer="word"))
    with pytest.raises(ConfigError, match=r"cnn needs an image dataset, this one is a sequence dataset"):
        build_model("cnn", dataset=texts, config=config)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_does_not_change_a_prediction(cell, bidirectional):
    from training.models import RNNClassifier

    torch.manual_seed(0)
    model = RNNClassifier(cell=cell, vocab_size=50, num_classes=3, embed_dim=8, hidden=16, layers=2,
                          bidirectional=bidirectional, dropout=0.3).eval()
    check_padding_invariance(model, atol=1e-6)


SHORT = torch.tensor([[5, 9, 2]])


def check_padding_invariance(model, *, atol: float) -> None:
    """A 3-token sequence gets the same logits alone, padded to 11 inside a batch, and with garbage after its end
    (the prediction comes from its real tokens, not from position max_length - 1)."""
    alone = model(SHORT, torch.tensor([3]))
    batch = torch.zeros(3, 11, dtype=torch.long)
    batch[0, :11] = torch.arange(1, 12)
    batch[1, :3] = SHORT[0]  # the same sequence, padded to 11 inside the batch
    batch[2, :7] = torch.arange(20, 27)
    lengths = torch.tensor([11, 3, 7])
    torch.testing.assert_close(model(batch, lengths)[1:2], alone, rtol=1e-5, atol=atol)
    other_tail = batch.clone()
    other_tail[1, 3:] = 42  # garbage after the true end
    torch.testing.assert_close(model(other_tail, lengths)[1:2], alone, rtol=1e-5, atol=atol)


def test_sequence_collate_pads_to_the_longest_in_the_batch():
    import collections

    import numpy as np

    from training.collation import sequence_collate

    Row = collections.namedtuple("Row", "tokens length label sample_id")
    rows = [Row(np.array([4, 5], "<u2").tobytes(), 2, 1, 10), Row(np.array([7, 8, 9, 3], "<u2").tobytes(), 4, 0, 11)]
    (tokens, lengths), y, ids = sequence_collate(rows, dtype="<u2")
    assert tokens.tolist() == [[4, 5, 0, 0], [7, 8, 9, 3]] and lengths.tolist() == [2, 4]
    assert y.tolist() == [1, 0] and ids.tolist() == [10, 11]


def sequence_spec(vocab_size: int = 50, max_length: int = 11):
    from dataset.manifest import SequenceSpec

    return DatasetSpec("sequence", ["a", "b", "c"], sequence=SequenceSpec(vocab_size=vocab_size, token_dtype="<u2",
                                                                          max_length=max_length, tokenizer="word"))


def small_config(*overrides: str):
    from core.config import load_section
    from training.config import TrainConfig

    return load_section("train", TrainConfig, overrides=["train.fasttext.embed_dim=8",
                                                        "train.fasttext.bigram_buckets=97", "train.transformer.dim=16",
                                                        "train.transformer.heads=2", "train.transformer.ff_dim=32",
                                                        "train.transformer.dropout=0.3", *overrides])


@pytest.mark.parametrize("name, overrides", [("fasttext", ()), ("fasttext", ("train.fasttext.bigrams=false",)),
                                             ("transformer", ()), ("transformer", ("train.transformer.layers=1",))])
def test_the_bag_of_embeddings_and_the_transformer_ignore_padding(name, overrides):
    torch.manual_seed(0)
    model = build_model(name, dataset=sequence_spec(), config=small_config(*overrides)).eval()
    check_padding_invariance(model, atol=1e-5)
    alone, reordered = model(SHORT, torch.tensor([3])), SHORT[:, [2, 1, 0]]
    # ... while its tokens are read: a different sequence, different logits
    assert not torch.allclose(model(reordered, torch.tensor([3])), alone, atol=1e-4) or name == "fasttext" and \
        "train.fasttext.bigrams=false" in overrides  # without bigrams the bag of words is order-free by design


def test_the_transformer_refuses_sequences_longer_than_the_dataset_allows():
    model = build_model("transformer", dataset=sequence_spec(max_length=4), config=small_config())
    with pytest.raises(ValueError, match="sequences of 5 tokens; the model was built for at most 4"):
        model(torch.ones(1, 5, dtype=torch.long), torch.tensor([5]))


def test_a_model_from_an_import_path_gets_the_dataset_and_the_model_config():
    from tests.training.custom_model import MeanOfTokens

    config = small_config("train.model=tests.training.custom_model:build", "train.model_config.width=6")
    model = build_model(config.model, dataset=sequence_spec(), config=config)
    assert isinstance(model, MeanOfTokens) and model.embedding.weight.shape == (50, 6)
    assert model(torch.tensor([[3, 4, 0]]), torch.tensor([2])).shape == (1, 3)


@pytest.mark.parametrize("path, message", [
    ("tests.training.no_such_module:build", r"config key train\.model \(--model\): cannot import "
                                            r"tests\.training\.no_such_module for tests\.training\.no_such_module:build "
                                            r"\(ModuleNotFoundError: No module named 'tests\.training\.no_such_module'\)"),
    ("tests.training.custom_model:missing", r"module tests\.training\.custom_model has no missing"),
    ("tests.training.custom_model:not_a_module", r"not_a_module\(dataset, model_config\) returned str, not a "
                                                 r"torch\.nn\.Module"),
])
def test_a_model_path_that_cannot_be_used_is_a_config_error_naming_the_key(path, message):
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        build_model(path, dataset=sequence_spec(), config=small_config())


@pytest.mark.parametrize("value", ["mlp", "tests/custom.py", "pkg.mod:2factory", "pkg..mod:f"])
def test_train_model_must_be_a_built_in_name_or_an_import_path(value):
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"config key train\.model: '{value}' is neither a built-in model \(auto, "
                                          r"cnn, rnn, lstm, gru, fasttext, transformer\) nor an import path "
                                          r"package\.module:factory"):
        small_config(f"train.model={value}")


def test_a_loss_from_an_import_path_must_give_one_loss_per_row():
    from core.errors import ConfigError
    from training.models import loss_function

    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    assert loss_function("tests.training.custom_model:smoothed")(logits, labels).shape == (4,)
    torch.testing.assert_close(loss_function("cross_entropy")(logits, labels),
                               torch.nn.functional.cross_entropy(logits, labels, reduction="none"))
    with pytest.raises(ConfigError, match=r"train\.loss: tests\.training\.custom_model:averaged\(logits, labels\) "
                                          r"must return one loss per row, a tensor of shape \(4,\); got \(\)"):
        loss_function("tests.training.custom_model:averaged")(logits, labels)
