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
    short = torch.tensor([[5, 9, 2]])
    alone = model(short, torch.tensor([3]))
    batch = torch.zeros(3, 11, dtype=torch.long)
    batch[0, :11] = torch.arange(1, 12)
    batch[1, :3] = short[0]  # the same sequence, padded to 11 inside the batch
    batch[2, :7] = torch.arange(20, 27)
    together = model(batch, torch.tensor([11, 3, 7]))
    torch.testing.assert_close(together[1:2], alone, rtol=1e-5, atol=1e-6)
    # ... and the prediction comes from the last real step, not from position max_length - 1:
    other_tail = batch.clone()
    other_tail[1, 3:] = 42  # garbage after the true end
    torch.testing.assert_close(model(other_tail, torch.tensor([11, 3, 7]))[1:2], alone, rtol=1e-5, atol=1e-6)


def test_sequence_collate_pads_to_the_longest_in_the_batch():
    import collections

    import numpy as np

    from training.collation import sequence_collate

    Row = collections.namedtuple("Row", "tokens length label sample_id")
    rows = [Row(np.array([4, 5], "<u2").tobytes(), 2, 1, 10), Row(np.array([7, 8, 9, 3], "<u2").tobytes(), 4, 0, 11)]
    (tokens, lengths), y, ids = sequence_collate(rows, dtype="<u2")
    assert tokens.tolist() == [[4, 5, 0, 0], [7, 8, 9, 3]] and lengths.tolist() == [2, 4]
    assert y.tolist() == [1, 0] and ids.tolist() == [10, 11]
