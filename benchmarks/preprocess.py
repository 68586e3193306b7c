"""Preprocessing throughput: the Spark jobs in local[2] against a plain single-process Python loop doing the same
work, and (images) against the same job with the decode step written as a row-at-a-time Python UDF; and how many
Spark jobs one preprocessing run launches, per kind (Spark's status tracker, ``pipelines.session.jobs_by_kind``).
Every timed figure is the median of 3 runs after a warm-up, with its min-max spread (``benchmarks.common.rate``).
Of the same timed runs of each job: the driver's seconds (the run's wall time less the time its Spark jobs ran,
submission to completion, as Spark's status store has them: listing, planning, the metadata, the commit) and the
seconds per 1,000 input files."""
from __future__ import annotations

import glob
import os
import shutil
import time

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import Result, Timing, check, rate, rates_alternated, timing
from core.config import load_section
from core.paths import to_url
from pipelines.image_dataset import PreprocessImagesConfig, preprocess_images
from pipelines.sequence_dataset import PreprocessSequencesConfig, preprocess_sequences
from pipelines import images
from pipelines.session import jobs_by_kind

JOBS_TARGET = 5  # Spark jobs per preprocessing run (issue 15)
FULL_SIZE = 16  # --size at and above which the full-size targets apply (issue 30)
SEARCH_SHARE_TARGET = 0.1  # the copies search's share of an image run at FULL_SIZE
DRIVER_SHARE_TARGET = 0.10  # the driver's share of an image run at --size 16


def per_core_target(kind: str, scale: float) -> float:
    """The per-core target over the plain loop: images 0.5 at --size 16, 0.35 below; texts 0.5 at --size 16, 0.3
    below."""
    if scale >= FULL_SIZE:
        return 0.5
    return 0.35 if kind == "images" else 0.3


def spark_job_seconds(spark, job_ids) -> float:
    """Seconds during which the Spark jobs ``job_ids`` ran (the union of their submission-to-completion spans, as
    Spark's status store keeps them; a job it no longer keeps counts as none). Classic sessions only."""
    store = spark.sparkContext._jsc.sc().statusStore()
    spans = []
    for job_id in job_ids:
        try:
            job = store.job(int(job_id))
        except Exception:  # noqa: BLE001 - evicted (spark.ui.retainedJobs): nothing to count
            continue
        if job.submissionTime().isDefined() and job.completionTime().isDefined():
            spans.append((job.submissionTime().get().getTime(), job.completionTime().get().getTime()))
    total, end = 0, None
    for start, stop in sorted(spans):
        if end is None or start > end:
            total, end = total + stop - start, stop
        elif stop > end:
            total, end = total + stop - end, stop
    return total / 1000


def image_config(**flags) -> PreprocessImagesConfig:
    return load_section("preprocess_images", PreprocessImagesConfig, flags={"ranks": 2, **flags})


def run_text_job(spark, raw: str, out: str, config: PreprocessSequencesConfig) -> dict:
    """The summary of one full run of the text job on the JSON Lines of ``raw``, into a fresh ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    return preprocess_sequences(spark, input_url=to_url(raw), output_url=to_url(out), fmt="jsonl", config=config)


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
    """The read-and-decode step as a row-at-a-time Python UDF (what mapInArrow replaces), same output schema."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from pipelines.schemas import DECODED_SCHEMA

    result = T.StructType([f for f in DECODED_SCHEMA.fields if f.name != "path"])

    @F.udf(returnType=result)
    def decode_one(path, size, problem):
        import pandas as pd

        batch = pd.DataFrame({"path": [path], "size": [size], "problem": [problem]})
        row = next(images.decode_file_batch(batch, root_url=root_url, params=params)).iloc[0]
        return tuple(row[f.name] for f in result.fields)

    decoded = files.select("path", decode_one("path", "size", "problem").alias("d"))
    return decoded.select("path", *[f"d.{f.name}" for f in result.fields])


def jobs_launched(spark, run, timed: list | None = None) -> tuple[object, dict[str, int]]:
    """(what ``run()`` returned, the Spark jobs it launched per kind; "other" those outside bigtrain's kinds).
    ``timed``: (wall seconds, driver seconds) of the run is appended to it (``spark_job_seconds``)."""
    before = jobs_by_kind(spark)
    start = time.perf_counter()
    result = run()
    wall = time.perf_counter() - start
    after = jobs_by_kind(spark)
    if timed is not None:
        launched = set().union(*(after[kind] - before[kind] for kind in after))
        timed.append((wall, max(0.0, wall - spark_job_seconds(spark, launched))))
    return result, {kind: len(after[kind] - before[kind]) for kind in after if after[kind] - before[kind]}


def driver_rows(group: str, timed: list[tuple[float, float]], files: int, *, share_target: float | None) -> list[Result]:
    """The driver's seconds and share of the run, and the seconds per 1,000 input files, of the timed runs
    ``timed`` ((wall, driver) each; the warm-up left out by the caller)."""
    wall, driver = timing([w for w, _ in timed]), timing([d for _, d in timed])
    share = timing([d / w for w, d in timed])
    per_1000 = timing([w / files * 1000 for w, _ in timed])
    return [
        Result(group, "driver seconds per run (outside Spark jobs)", driver.median, "s",
               f"{driver.text(fmt='.2f', unit=' s')} of a run of {wall.text(fmt='.2f', unit=' s')}"),
        Result(group, "driver share of a run", share.median, "",
               f"{share.low:.3g}-{share.high:.3g}", f"<= {share_target}" if share_target is not None else "",
               check(share.median, "<=", share_target) if share_target is not None else None),
        Result(group, "seconds per 1,000 input files", per_1000.median, "s",
               f"{per_1000.text(fmt='.3g', unit=' s')}; {files:,} input files"),
    ]


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


SMALL_RUN = 8  # files per class folder (images) or lines per file (texts) of the fixed-cost run


def small_input(raw: str, dst: str, *, lines: bool) -> int:
    """A copy of the first ``SMALL_RUN`` files of each class folder of ``raw`` (``lines``: the first ``SMALL_RUN``
    lines of each of its files) in ``dst``; the records it holds."""
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    count = 0
    for name in sorted(os.listdir(raw)):
        source = os.path.join(raw, name)
        if lines:
            with open(source, "rb") as fh, open(os.path.join(dst, name), "wb") as out:
                head = [fh.readline() for _ in range(SMALL_RUN)]
                out.writelines(head)
            count += sum(1 for line in head if line)
        elif os.path.isdir(source):
            os.makedirs(os.path.join(dst, name))
            for file in sorted(os.listdir(source))[:SMALL_RUN]:
                shutil.copyfile(os.path.join(source, file), os.path.join(dst, name, file))
                count += 1
    return count


def fixed_cost_row(group: str, run_small, records: int, *, total: int, unit: str, target_rate: float) -> Result:
    """Seconds of a run of a handful of records (``run_small``, ``records`` of them): what a run costs whatever its
    size (the listing, planning, the Spark jobs' own start and end, the commit), set beside the seconds a run of
    ``total`` records may take at ``target_rate`` (records a second at the per-core target)."""
    def once() -> int:
        run_small()
        return 1

    runs = rate(once)  # runs a second
    seconds = Timing(1 / runs.median, 1 / runs.high, 1 / runs.low, runs.runs)
    return Result(group, f"fixed cost: a run of {records} {unit}", seconds.median, "s",
                  f"{seconds.text(fmt='.2f', unit=' s')}; at the per-core target a run of all {total:,} {unit} "
                  f"has {total / target_rate:.2f} s")


def image_results(spark, raw: str, work: str, n_images: int, scale: float = 1.0) -> list[Result]:
    group = "preprocess/images"
    seen: dict = {}
    timed: list[tuple[float, float]] = []

    def job() -> int:
        (_, seen["summary"]), seen["jobs"] = jobs_launched(
            spark, lambda: run_image_job(spark, raw, os.path.join(work, "job")), timed)
        return n_images

    def without() -> int:
        summary = run_image_job(spark, raw, os.path.join(work, "off"), duplicates="ignore")[1]
        return n_images if summary["rows_written"] == seen["summary"]["rows_written"] else 0

    # in turns: the copies search's share is a difference of two run times, which drift would swamp
    measured = rates_alternated({"job": job, "without": without})
    job_rate, without_search = measured["job"], measured["without"]
    timed = timed[1:]  # the warm-up
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
    search = 1 - job_rate.median / without_search.median  # its share of a run's time
    full = scale >= FULL_SIZE
    target = per_core_target("images", scale)
    small = small_input(raw, os.path.join(work, "small-raw"), lines=False)
    fixed = fixed_cost_row(group, lambda: run_image_job(spark, os.path.join(work, "small-raw"),
                                                        os.path.join(work, "small")), small, total=n_images,
                           unit="images", target_rate=target * spark_cores * python_rate.median)
    return [
        jobs_row(group, jobs),
        per_core_row(group, job_rate, python_rate, spark_cores, "images", target),
        fixed,
        Result(group, "Spark job / same job with a row UDF", speedup, "x",
               f"row UDF {udf_rate.text(unit=' images/s')}", ">= 3", check(speedup, ">=", 3)),
        *driver_rows(group, timed, n_images, share_target=DRIVER_SHARE_TARGET if scale >= FULL_SIZE else None),
        Result(group, "copies search (thumbnails + duplicates job): share of a run", search, "",
               f"same job with duplicates: ignore (no thumbnails, no search) {without_search.text(unit=' images/s')}; "
               "the fingerprint (BLAKE2b of the pixels, in the decode worker) is made either way",
               f"<= {SEARCH_SHARE_TARGET}" if full else "",
               check(search, "<=", SEARCH_SHARE_TARGET) if full else None),
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


def text_results(spark, raw: str, work: str, n_lines: int, scale: float = 1.0) -> list[Result]:
    group = "preprocess/texts"
    out = os.path.join(work, "job")
    config = load_section("preprocess_sequences", PreprocessSequencesConfig, flags={"ranks": 2})
    seen: dict = {}
    timed: list[tuple[float, float]] = []

    def job() -> int:
        _, seen["jobs"] = jobs_launched(spark, lambda: run_text_job(spark, raw, out, config), timed)
        return n_lines

    job_rate = rate(job)
    timed = timed[1:]  # the warm-up
    python_rate = rate(lambda: plain_python_texts(raw, os.path.join(work, "plain"))[1])
    spark_cores = spark.sparkContext.defaultParallelism
    files = sum(1 for name in os.listdir(raw) if not name.startswith((".", "_")))
    target = per_core_target("texts", scale)
    small_raw = os.path.join(work, "small-raw")
    small = small_input(raw, small_raw, lines=True)
    fixed = fixed_cost_row(group, lambda: run_text_job(spark, small_raw, os.path.join(work, "small"), config), small,
                           total=n_lines, unit="lines", target_rate=target * spark_cores * python_rate.median)
    return [jobs_row(group, seen["jobs"]),
            per_core_row(group, job_rate, python_rate, spark_cores, "lines", target), fixed,
            *driver_rows(group, timed, files, share_target=None)]
