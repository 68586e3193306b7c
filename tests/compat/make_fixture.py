"""Writes ``tests/compat/fixtures/spark35/``: a tiny image and a tiny text dataset written by the previous stack,
and ``expected.json``, what that stack reads back from them (``tests.compat.stack_reads``).

Run it on the previous stack, from the repository root:

    make setup STACK=spark35
    .venv-spark35/bin/python -m tests.compat.make_fixture

It runs the real preprocessing jobs in a local Spark 3.5 (sample data of ``pipelines.samples``, fixed seeds) and
copies each committed snapshot folder into the fixture. ``tests/compat/test_legacy_fixture.py`` reads them on the
stack under test and compares with ``expected.json``.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from tests.compat import stack_reads

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "spark35"


def main() -> None:
    import pyarrow
    import pyspark

    from core.config import load_section
    from core.paths import to_url
    from pipelines.image_dataset import PreprocessImagesConfig, preprocess_images
    from pipelines.sequence_dataset import PreprocessSequencesConfig, preprocess_sequences
    from pipelines.samples import BAD_LINES, generate_images, generate_texts
    from pipelines.session import build_spark

    if not pyspark.__version__.startswith("3.5") or int(pyarrow.__version__.split(".")[0]) >= 15:
        sys.exit(f"run this on the previous stack (pyspark 3.5, pyarrow 14): found pyspark {pyspark.__version__}, "
                 f"pyarrow {pyarrow.__version__}")
    spark = build_spark(app_name="bigtrain-fixture", master="local[1]",
                        conf={"spark.sql.shuffle.partitions": "2", "spark.ui.enabled": "false"})
    work = Path(tempfile.mkdtemp())
    try:
        generate_images(work / "images", per_class=5, seed=3, bad_files=2, classes=("circle", "square", "triangle"))
        images = preprocess_images(spark, input_url=to_url(str(work / "images")),
                                   output_url=to_url(str(work / "image-ds")),
                                   config=load_section("preprocess_images", PreprocessImagesConfig,
                                                       flags={"image_size": 8, "ranks": 2, "codec": "png",
                                                              "max_reject_fraction": 0.5}))
        generate_texts(work / "texts", records=40, files=1, bad_lines=len(BAD_LINES), seed=5)
        texts = preprocess_sequences(spark, input_url=to_url(str(work / "texts")),
                                     output_url=to_url(str(work / "text-ds")), fmt="jsonl",
                                     config=load_section("preprocess_sequences", PreprocessSequencesConfig,
                                                         flags={"ranks": 2, "max_length": 12,
                                                                "max_reject_fraction": 0.5}))
        shutil.rmtree(FIXTURE, ignore_errors=True)
        FIXTURE.mkdir(parents=True)
        for name, summary in (("images", images), ("texts", texts)):
            shutil.copytree(summary["output"][len("file://"):], FIXTURE / name)
        expected = {name: stack_reads.reads(str(FIXTURE / name)) for name in ("images", "texts")}
        expected["written_by"] = {"pyspark": pyspark.__version__, "pyarrow": pyarrow.__version__,
                                  "python": sys.version.split()[0]}
        (FIXTURE / "expected.json").write_text(json.dumps(expected, sort_keys=True, indent=1) + "\n")
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
