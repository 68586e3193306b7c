"""Shared fixtures: one SparkSession for the whole test session, small sample data built here (never committed)."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from pipelines.storage import build_spark

    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    session = build_spark(app_name="bigtrain-tests", master="local[2]", conf={
        "spark.sql.shuffle.partitions": "4",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.warehouse.dir": str(warehouse),
        "spark.driver.memory": "2g",
    })
    yield session
    session.stop()


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory) -> Path:
    """10 classes x 12 images of the demo generator, plus 6 unusable files (5 in class folders, 1 in the root)."""
    from pipelines.samples import generate_images

    root = tmp_path_factory.mktemp("sample-images")
    generate_images(root, per_class=12, seed=3, bad_files=6)
    return root


@pytest.fixture(scope="session")
def image_dataset(spark, sample_images, tmp_path_factory) -> Path:
    """The sample images through the real preprocessing job (in this session's Spark), written as 3 row groups per
    split so that two ranks get uneven shards."""
    from jobs.config import load_section
    from jobs.preprocess_images import PreprocessImagesConfig, preprocess_images
    from pipelines.layout import to_url

    out = tmp_path_factory.mktemp("image-dataset") / "ds"
    config = load_section("preprocess_images", PreprocessImagesConfig, flags={"image_size": 16, "ranks": 3})
    preprocess_images(spark, input_url=to_url(str(sample_images)), output_url=to_url(str(out)), config=config)
    return out


def tool(name: str) -> str:
    """A console script of this virtual environment (horovodrun, spark-submit, bigtrain)."""
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found next to {sys.executable} or on PATH: run `make setup`")
    return found


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env.pop("PYSPARK_GATEWAY_PORT", None)
    return env


@pytest.fixture(scope="session")
def sample_texts(tmp_path_factory) -> Path:
    """800 sample reviews over 3 JSON Lines files, plus one line of each unusable kind."""
    from pipelines.samples import BAD_LINES, generate_texts

    root = tmp_path_factory.mktemp("sample-texts")
    generate_texts(root, records=800, files=3, bad_lines=len(BAD_LINES), seed=5)
    return root


@pytest.fixture(scope="session")
def text_dataset(spark, sample_texts, tmp_path_factory) -> Path:
    """The sample texts through the real sequence job (in this session's Spark), 3 row groups per split."""
    from jobs.config import load_section
    from jobs.preprocess_sequences import PreprocessSequencesConfig, preprocess_sequences
    from pipelines.layout import to_url

    out = tmp_path_factory.mktemp("text-dataset") / "ds"
    config = load_section("preprocess_sequences", PreprocessSequencesConfig, flags={"ranks": 3, "max_length": 24})
    preprocess_sequences(spark, input_url=to_url(str(sample_texts)), output_url=to_url(str(out)), fmt="jsonl",
                         config=config)
    return out
