from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from core.config import from_dict, load_section, parse_overrides
from core.errors import ConfigError
from pipelines.image_dataset import PreprocessImagesConfig
from training.config import TrainConfig


@dataclass(frozen=True)
class Inner:
    size: int


@dataclass(frozen=True)
class Outer:
    name: str
    ratio: float
    flag: bool
    mode: Literal["a", "b"]
    inner: Inner
    weights: dict[str, float]


GOOD = {"name": "x", "ratio": 1, "flag": True, "mode": "a", "inner": {"size": 3}, "weights": {"w": 0.5}}


def test_from_dict_builds_nested_dataclasses_and_widens_int_to_float():
    obj = from_dict(Outer, GOOD, prefix="s")
    assert obj == Outer("x", 1.0, True, "a", Inner(3), {"w": 0.5})
    assert isinstance(obj.ratio, float)


@pytest.mark.parametrize("patch, key", [
    ({"ratio": "fast"}, "s.ratio"),
    ({"flag": "yes"}, "s.flag"),
    ({"mode": "c"}, "s.mode"),
    ({"inner": {"size": 2.5}}, "s.inner.size"),
    ({"inner": {"size": True}}, "s.inner.size"),
    ({"weights": {"w": "heavy"}}, "s.weights.w"),
])
def test_wrong_types_name_the_key(patch, key):
    with pytest.raises(ConfigError, match=rf"{key}\b"):
        from_dict(Outer, {**GOOD, **patch}, prefix="s")


def test_unknown_and_missing_keys_are_named():
    with pytest.raises(ConfigError, match=r"unknown config key s\.colour"):
        from_dict(Outer, {**GOOD, "colour": 1}, prefix="s")
    incomplete = dict(GOOD)
    del incomplete["ratio"]
    with pytest.raises(ConfigError, match=r"s\.ratio is missing"):
        from_dict(Outer, incomplete, prefix="s")


def test_parse_overrides_nests_keys_and_parses_yaml_scalars():
    assert parse_overrides(["train.lr=0.5", "train.cnn.hidden=64", "a.b=true", "a.c=text"]) == {
        "train": {"lr": 0.5, "cnn": {"hidden": 64}}, "a": {"b": True, "c": "text"}}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["train.lr"])


def test_committed_defaults_load_for_every_section():
    train = load_section("train", TrainConfig)
    assert train.epochs >= 1 and train.cnn.conv_channels == [32, 64]
    images = load_section("preprocess_images", PreprocessImagesConfig)
    assert images.splits == {"train": 0.8, "validation": 0.1, "test": 0.1}


def test_layers_apply_in_order_flags_last(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("train:\n  epochs: 3\n  lr: 0.2\n")
    config = load_section("train", TrainConfig, config_file=str(user), overrides=["train.lr=0.3", "train.seed=7"],
                          flags={"seed": 9, "batch_size": None})
    assert (config.epochs, config.lr, config.seed) == (3, 0.3, 9)
    assert config.batch_size == load_section("train", TrainConfig).batch_size


def test_validation_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_section("train", TrainConfig, overrides=["train.batch_size=0"])
    with pytest.raises(ConfigError, match=r"preprocess_images\.splits"):
        load_section("preprocess_images", PreprocessImagesConfig, overrides=["preprocess_images.splits.test=0.5"])
    with pytest.raises(ConfigError, match=r"train\.cnn\.dropout"):
        load_section("train", TrainConfig, overrides=["train.cnn.dropout=1.5"])
    with pytest.raises(ConfigError, match=r"unknown config key train\.learning_rate"):
        load_section("train", TrainConfig, overrides=["train.learning_rate=0.1"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_section("train", TrainConfig, config_file=str(tmp_path / "nope.yaml"))


def test_train_job_names_a_missing_dataset(tmp_path, capsys):
    from jobs.train import main

    assert main(["--data", str(tmp_path / "nothing"), "--output", str(tmp_path / "o"), "--backend", "single"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"--data file://{tmp_path}/nothing: no such dataset folder" in err
    assert not (tmp_path / "o").exists()  # a refused run leaves no output folder behind
    (tmp_path / "raw").mkdir()  # there, but not a dataset: the data's failure, named
    assert main(["--data", str(tmp_path / "raw"), "--output", str(tmp_path / "o"), "--backend", "single"]) == 1
    assert "raw/metadata.json not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text, number", [("1e-9", 1e-9), ("2E3", 2000.0), ("-1.5e-2", -0.015), (".5e1", 5.0)])
def test_exponent_numbers_that_yaml_reads_as_strings_are_numbers(text, number):
    parsed = parse_overrides([f"ratio={text}"])["ratio"]
    assert from_dict(Outer, {**GOOD, "ratio": parsed}, prefix="s").ratio == number


def test_a_set_without_a_section_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"--set 'epochs=1': keys are SECTION\.KEY.*--set train\.epochs"):
        load_section("train", TrainConfig, overrides=["epochs=1"])


def test_a_set_for_a_section_the_command_does_not_read_is_an_error():
    with pytest.raises(ConfigError, match=r"reads only section preprocess_images; train\.\* is not used here"):
        load_section("preprocess_images", PreprocessImagesConfig, overrides=["train.momentum=0.8"])
    with pytest.raises(ConfigError, match=r"unknown config section 'trian' \(did you mean 'train'\?\)"):
        load_section("train", TrainConfig, overrides=["trian.epochs=1"])


def test_a_config_file_with_a_misspelt_section_or_key_is_an_error(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("trian:\n  epochs: 1\n")
    with pytest.raises(ConfigError, match=r"user\.yaml: unknown config section 'trian' \(did you mean 'train'\?\)"):
        load_section("train", TrainConfig, config_file=str(user))
    user.write_text("train:\n  epochs: 1\npreprocess_images:\n  image_sise: 8\n")  # another command's section
    with pytest.raises(ConfigError, match=r"unknown config key preprocess_images\.image_sise .*'image_size'"):
        load_section("train", TrainConfig, config_file=str(user))
    user.write_text("train:\n  epochs: 1\npreprocess_images:\n  image_size: 8\n")  # a shared file is fine
    assert load_section("train", TrainConfig, config_file=str(user)).epochs == 1


def test_broken_yaml_is_one_line_naming_file_and_line(tmp_path):
    user = tmp_path / "broken.yaml"
    user.write_text("train:\n  epochs: 1\n   lr: [0.1\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml is not valid YAML at line 3"):
        load_section("train", TrainConfig, config_file=str(user))


def test_the_train_job_refuses_a_set_without_section_with_exit_2(tmp_path, capsys):
    from jobs.train import main

    assert main(["--data", str(tmp_path), "--output", str(tmp_path / "m"), "--set", "epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "--set 'epochs=1'" in err and "train.epochs" in err and "Traceback" not in err


def test_a_key_of_two_types_takes_either_and_names_both_when_neither_fits():
    from training.config import TrainConfig

    assert load_section("train", TrainConfig, overrides=["train.loader_workers=auto"]).loader_workers == "auto"
    assert load_section("train", TrainConfig, overrides=["train.loader_workers=3"]).loader_workers == 3
    with pytest.raises(ConfigError, match=r"train.loader_workers: expected an integer or 'auto', got 'many'"):
        load_section("train", TrainConfig, overrides=["train.loader_workers=many"])
