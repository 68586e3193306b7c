import pytest
import torch

from training.models import CNN, build_model


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32), (3, 17), (1, 64)])
def test_cnn_derives_its_flattened_size_from_the_input(channels, size):
    model = CNN(in_channels=channels, image_size=size, num_classes=7)
    assert model(torch.zeros(5, channels, size, size)).shape == (5, 7)
    expected_flat = 64 * (size // 2 // 2) ** 2
    assert model.classifier[1].in_features == expected_flat


def test_build_model_follows_the_dataset_kind():
    from jobs.config import load_section
    from training.config import TrainConfig

    config = load_section("train", TrainConfig)
    meta = {"kind": "image", "classes": ["a", "b"], "image": {"channels": 1, "size": 12}}
    assert isinstance(build_model("auto", metadata=meta, config=config), CNN)
    with pytest.raises(ValueError, match="kind 'text'"):
        build_model("auto", metadata={**meta, "kind": "text"}, config=config)
