"""Preprocessing throughput: the Spark jobs in local[2] against a plain single-process Python loop doing the same
work, and (images) against the same job with the decode step written as a row-at-a-time Python UDF."""
from __future__ import annotations

import glob
import os
import shutil
import time

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import Result, check
from core.config import load_section
from core.paths import to_url
from jobs.preprocess_images import PreprocessImagesConfig, preprocess_images
from jobs.preprocess_sequences import PreprocessSequencesConfig, preprocess_sequences
from pipelines import images


def image_config(**flags) -> PreprocessImagesConfig:
    return load_section("preprocess_images", PreprocessImagesConfig, flags={"ranks": 2, **flags})


def run_image_job(spark, raw: str, out: str, **flags) -> tuple[float, dict]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = preprocess_images(spark, input_url=to_url(raw), output_url=to_url(out), config=image_config(**flags))
    return time.perf_counter() - start, summary


def plain_python_images(raw: str, out: str) -> tuple[float, int]:
    """The same decode, colour conversion, resize and PNG encoding, and one Parquet file, in one process."""
    from pipelines.schemas import image_unischema

    config = image_config()
    params = images.DecodeParams(image_size=config.image_size, channels=config.channels, codec=config.codec,
                                 max_pixels=config.max_pixels, min_side=config.min_side,
                                 max_aspect_ratio=config.max_aspect_ratio)
    field = image_unischema(config.image_size, config.channels, config.codec).fields["image"]
    start = time.perf_counter()
    paths, encoded = [], []
    for path in sorted(glob.glob(os.path.join(raw, "*", "*"))):
        with open(path, "rb") as fh:
            content = fh.read()
        try:
            encoded.append(bytes(field.codec.encode(field, images.to_array(content, params))))
            paths.append(os.path.relpath(path, raw))
        except Exception:  # noqa: BLE001 - the job rejects these too
            pass
    os.makedirs(out, exist_ok=True)
    pq.write_table(pa.table({"relpath": paths, "image": encoded}), os.path.join(out, "part-0.parquet"))
    return time.perf_counter() - start, len(paths)


def row_udf_decode(files, *, root_url, params):
    """The decode step as a row-at-a-time Python UDF (what mapInPandas replaces), same output schema."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from pipelines.schemas import DECODED_SCHEMA

    result = T.StructType([f for f in DECODED_SCHEMA.fields if f.name != "path"])

    @F.udf(returnType=result)
    def decode_one(path, content):
        import pandas as pd

        row = images.decode_image_batch(pd.DataFrame({"path": [path], "content": [content]}),
                                        root_url=root_url, params=params).iloc[0]
        return (row["relpath"], row["class_name"], row["image"], row["reason"])

    decoded = files.select("path", decode_one("path", "content").alias("d"))
    return decoded.select("path", "d.relpath", "d.class_name", "d.image", "d.reason")


def image_results(spark, raw: str, work: str, n_images: int) -> list[Result]:
    group = "preprocess/images"
    job_s, summary = run_image_job(spark, raw, os.path.join(work, "job"))
    python_s, python_n = plain_python_images(raw, os.path.join(work, "plain"))
    original = images.decode_images
    images.decode_images = row_udf_decode
    try:
        udf_s, udf_summary = run_image_job(spark, raw, os.path.join(work, "udf"))
    finally:
        images.decode_images = original
    assert udf_summary["rows_written"] == summary["rows_written"]
    spark_cores = spark.sparkContext.defaultParallelism
    job_rate, python_rate, udf_rate = n_images / job_s, python_n / python_s, n_images / udf_s
    per_core = job_rate / spark_cores / python_rate
    return [
        Result(group, "Spark job per core / plain Python loop", per_core, "",
               f"job {job_rate:,.0f} images/s on {spark_cores} cores; plain Python {python_rate:,.0f}/s",
               ">= 0.5", check(per_core, ">=", 0.5)),
        Result(group, "Spark job / same job with a row UDF", job_rate / udf_rate, "x",
               f"row UDF {udf_rate:,.0f} images/s", ">= 3", check(job_rate / udf_rate, ">=", 3)),
    ]


def plain_python_texts(raw: str, out: str) -> tuple[float, int]:
    """Parse, normalise, tokenise, count the vocabulary, map to ids and write, in one process."""
    from pipelines.text import (
        ParseParams,
        RejectedRecord,
        encode_ids,
        make_vocabulary,
        parse_record,
        token_dtype,
    )

    params = ParseParams(fmt="jsonl", text_field="text", label_field="label", tokens_field=None, tokenizer="word",
                         lowercase=True)
    start = time.perf_counter()
    parsed = []
    for path in sorted(glob.glob(os.path.join(raw, "*.jsonl"))):
        with open(path, "rb") as fh:
            for raw_line in fh.read().split(b"\n")[:-1]:
                try:
                    parsed.append(parse_record(raw_line, params))
                except RejectedRecord:
                    pass
    counts: dict[str, int] = {}
    for tokens in (p.tokens for p in parsed):
        for t in tokens:
            counts[t] = counts.get(t, 0) + 1
    vocab = make_vocabulary(sorted(counts, key=lambda t: (-counts[t], t))[:19998])
    index, dtype = {t: i for i, t in enumerate(vocab)}, token_dtype(len(vocab))
    encoded = [encode_ids(p.tokens, index, 64, dtype) for p in parsed]
    os.makedirs(out, exist_ok=True)
    pq.write_table(pa.table({"tokens": [e[0] for e in encoded], "length": [e[1] for e in encoded],
                             "label": [p.label for p in parsed]}), os.path.join(out, "part-0.parquet"))
    return time.perf_counter() - start, len(parsed)


def text_results(spark, raw: str, work: str, n_lines: int) -> list[Result]:
    out = os.path.join(work, "job")
    shutil.rmtree(out, ignore_errors=True)
    config = load_section("preprocess_sequences", PreprocessSequencesConfig, flags={"ranks": 2})
    start = time.perf_counter()
    preprocess_sequences(spark, input_url=to_url(raw), output_url=to_url(out), fmt="jsonl", config=config)
    job_s = time.perf_counter() - start
    python_s, python_n = plain_python_texts(raw, os.path.join(work, "plain"))
    spark_cores = spark.sparkContext.defaultParallelism
    job_rate, python_rate = n_lines / job_s, python_n / python_s
    per_core = job_rate / spark_cores / python_rate
    return [Result("preprocess/texts", "Spark job per core / plain Python loop", per_core, "",
                   f"job {job_rate:,.0f} lines/s on {spark_cores} cores; plain Python {python_rate:,.0f}/s",
                   ">= 0.5", check(per_core, ">=", 0.5))]
