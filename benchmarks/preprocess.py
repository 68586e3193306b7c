"""Preprocessing throughput: the Spark jobs in local[2] against a plain single-process Python loop doing the same
work, and (images) against the same job with the decode step written as a row-at-a-time Python UDF; and how many
Spark jobs one preprocessing run launches, per kind (Spark's status tracker, ``pipelines.session.jobs_by_kind``).
Every timed figure is the median of 3 runs after a warm-up, with its min-max spread (``benchmarks.common.rate``)."""
from __future__ import annotations

import glob
import os
import shutil
import time

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import Result, Timing, check, rate
from core.config import load_section
from core.paths import to_url
from pipelines.image_dataset import PreprocessImagesConfig, preprocess_images
from pipelines.sequence_dataset import PreprocessSequencesConfig, preprocess_sequences
from pipelines import images
from pipelines.session import jobs_by_kind

JOBS_TARGET = 5  # Spark jobs per preprocessing run (issue 15)


def image_config(**flags) -> PreprocessImagesConfig:
    return load_section("preprocess_images", PreprocessImagesConfig, flags={"ranks": 2, **flags})


def run_image_job(spark, raw: str, out: str, **flags) -> tuple[float, dict]:
    """(seconds, summary) of one full run of the image job, into a fresh ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = preprocess_images(spark, input_url=to_url(raw), output_url=to_url(out), config=image_config(**flags))
    return time.perf_counter() - start, summary


def plain_python_images(raw: str, out: str) -> tuple[float, int]:
    """The same decode, colour conversion, resize and PNG encoding, and one Parquet file, in one process."""
    from pipelines.schemas import image_unischema

    config = image_config()
    params = images.DecodeParams(image_size=config.image_size, channels=config.channels, codec=config.storage_codec,
                                 max_pixels=config.max_pixels, min_side=config.min_side,
                                 max_aspect_ratio=config.max_aspect_ratio)
    field = image_unischema(config.image_size, config.channels, config.storage_codec).fields["image"]
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
    """The read-and-decode step as a row-at-a-time Python UDF (what mapInPandas replaces), same output schema."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from pipelines.schemas import DECODED_SCHEMA

    result = T.StructType([f for f in DECODED_SCHEMA.fields if f.name != "path"])

    @F.udf(returnType=result)
    def decode_one(path, size, problem):
        import pandas as pd

        batch = pd.DataFrame({"path": [path], "size": [size], "problem": [problem]})
        row = next(images.decode_file_batch(batch, root_url=root_url, params=params)).iloc[0]
        return (row["relpath"], row["class_name"], row["image"], row["reason"])

    decoded = files.select("path", decode_one("path", "size", "problem").alias("d"))
    return decoded.select("path", "d.relpath", "d.class_name", "d.image", "d.reason")


def jobs_launched(spark, run) -> tuple[object, dict[str, int]]:
    """(what ``run()`` returned, the Spark jobs it launched per kind; "other" those outside bigtrain's kinds)."""
    before = jobs_by_kind(spark)
    result = run()
    after = jobs_by_kind(spark)
    return result, {kind: len(after[kind] - before[kind]) for kind in after if after[kind] - before[kind]}


def jobs_row(group: str, jobs: dict[str, int]) -> Result:
    total = sum(jobs.values())
    return Result(group, "Spark jobs per run", total, "", ", ".join(f"{kind} {n}" for kind, n in jobs.items()),
                  f"<= {JOBS_TARGET}", check(total, "<=", JOBS_TARGET))


def per_core_row(group: str, job: Timing, python: Timing, cores: int, unit: str, target: float) -> Result:
    """The job's rate per core over the plain loop's (medians), with the spread the runs' extremes allow."""
    ratio = job.median / cores / python.median
    low, high = job.low / cores / python.high, job.high / cores / python.low
    return Result(group, "Spark job per core / plain Python loop", ratio, "",
                  f"{low:.3g}-{high:.3g}; job {job.text(unit=f' {unit}/s')} on {cores} cores; "
                  f"plain Python {python.text(unit=f' {unit}/s')}", f">= {target}", check(ratio, ">=", target))


def image_results(spark, raw: str, work: str, n_images: int) -> list[Result]:
    group = "preprocess/images"
    seen: dict = {}

    def job() -> int:
        (_, seen["summary"]), seen["jobs"] = jobs_launched(
            spark, lambda: run_image_job(spark, raw, os.path.join(work, "job")))
        return n_images

    job_rate = rate(job)
    jobs = seen["jobs"]
    python_rate = rate(lambda: plain_python_images(raw, os.path.join(work, "plain"))[1])
    original = images.decode_images
    images.decode_images = row_udf_decode
    try:
        udf_rate = rate(lambda: n_images if run_image_job(spark, raw, os.path.join(work, "udf"))[1]["rows_written"]
                        == seen["summary"]["rows_written"] else 0)
    finally:
        images.decode_images = original
    spark_cores = spark.sparkContext.defaultParallelism
    speedup = job_rate.median / udf_rate.median
    return [
        jobs_row(group, jobs),
        per_core_row(group, job_rate, python_rate, spark_cores, "images", 0.5),
        Result(group, "Spark job / same job with a row UDF", speedup, "x",
               f"row UDF {udf_rate.text(unit=' images/s')}", ">= 3", check(speedup, ">=", 3)),
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
    group = "preprocess/texts"
    out = os.path.join(work, "job")
    config = load_section("preprocess_sequences", PreprocessSequencesConfig, flags={"ranks": 2})
    seen: dict = {}

    def job() -> int:
        shutil.rmtree(out, ignore_errors=True)
        _, seen["jobs"] = jobs_launched(spark, lambda: preprocess_sequences(
            spark, input_url=to_url(raw), output_url=to_url(out), fmt="jsonl", config=config))
        return n_lines

    job_rate = rate(job)
    python_rate = rate(lambda: plain_python_texts(raw, os.path.join(work, "plain"))[1])
    spark_cores = spark.sparkContext.defaultParallelism
    return [jobs_row(group, seen["jobs"]), per_core_row(group, job_rate, python_rate, spark_cores, "lines", 0.3)]
