"""bigtrain's benchmarks: every figure measured side by side in one run and reported as a ratio.

Usage:
    make bench                                   # quick size
    .venv/bin/python -m benchmarks.run --size 4  # 4x the quick size
    .venv/bin/python -m benchmarks.run --size smoke --only loader,codecs --repeats 1   # checks the harness only

Writes the table to stdout and JSON to --output (default runs/bench/results.json).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time

from benchmarks import common

SIZES = {"smoke": 0.05, "quick": 1.0}
GROUPS = ("loader", "feeding", "codecs", "preprocess", "stall", "resilience", "distributed", "growth")
BASE_PER_CLASS, BASE_TEXTS, GROWTH_PER_CLASS = 400, 20000, 100  # quick: 4,000 images, 20,000 texts; growth 1x = 1,000


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="quick", help="smoke | quick | a multiple of quick (e.g. 4)")
    parser.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated subset of {', '.join(GROUPS)}")
    parser.add_argument("--repeats", type=int, default=common.REPEATS,
                        help="timed runs per figure after a warm-up, median printed (default %(default)s, the "
                             "fewest worth reading; 1 only checks that the harness runs, as its smoke test does)")
    parser.add_argument("--output", default="runs/bench/results.json")
    parser.add_argument("--work", default="runs/bench/work",
                        help="scratch folder for generated data: new, empty, or one an earlier run created (it is "
                             "deleted and made again)")
    args = parser.parse_args(argv)
    try:
        args.scale = SIZES[args.size] if args.size in SIZES else float(args.size)
    except ValueError:
        parser.error(f"--size {args.size!r}: expected smoke, quick or a number")
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: expected 1 or more")
    args.groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = sorted(set(args.groups) - set(GROUPS))
    if unknown:
        parser.error(f"--only: unknown group {unknown[0]!r} (groups: {', '.join(GROUPS)})")
    try:
        common.check_work_folder(args.work)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from benchmarks import feeding, growth, loader, preprocess, train_bench
    from core.logs import setup_logging
    from pipelines.samples import generate_images, generate_texts
    from pipelines.session import build_spark

    setup_logging(quiet=True)
    common.set_repeats(args.repeats)
    work = common.fresh_work_folder(args.work)
    per_class, n_texts = max(2, int(BASE_PER_CLASS * args.scale)), max(200, int(BASE_TEXTS * args.scale))
    say = lambda text: print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)  # noqa: E731
    say(f"size {args.size}: {per_class * 10} images, {n_texts} texts; work folder {work}")
    raw_images, raw_texts = os.path.join(work, "raw-images"), os.path.join(work, "raw-texts")
    generate_images(raw_images, per_class=per_class, seed=1)
    generate_texts(raw_texts, records=n_texts, files=4, seed=1)
    from core.config import load_section
    from pipelines.image_dataset import PreprocessImagesConfig
    from pipelines.sequence_dataset import PreprocessSequencesConfig

    # The jobs' own Spark settings (conf/bigtrain.yaml), so the bench measures the jobs as a user runs them.
    job_conf = {**load_section("preprocess_sequences", PreprocessSequencesConfig).spark_conf,
                **load_section("preprocess_images", PreprocessImagesConfig).spark_conf}
    spark = build_spark(app_name="bigtrain-bench", master="local[2]", conf={**job_conf, "spark.ui.enabled": "false"})
    results: list[common.Result] = []
    try:
        image_ds, text_ds = os.path.join(work, "images-ds"), os.path.join(work, "texts-ds")
        # PNG, not the default codec (raw pixels at this size): the loader's targets are set for a decoded codec;
        # the codec rows compare raw, PNG and JPEG
        preprocess.run_image_job(spark, raw_images, image_ds, codec="png")
        from core.paths import to_url
        from pipelines.sequence_dataset import preprocess_sequences
        preprocess_sequences(spark, input_url=to_url(raw_texts), output_url=to_url(text_ds), fmt="jsonl",
                             config=load_section("preprocess_sequences", PreprocessSequencesConfig, flags={"ranks": 2}))
        if "loader" in args.groups:
            say("loader throughput")
            workers = common.cores()  # the loader's default: the cores of a rank alone on its host
            results += loader.loader_results("images", image_ds, workers=workers)
            results += loader.loader_results("texts", text_ds, workers=workers)
            results += loader.resume_results(image_ds, workers)
        if "codecs" in args.groups:
            say("image codecs")
            results += loader.codec_results(spark, raw_images, os.path.join(work, "codecs"), common.cores())
        if "feeding" in args.groups:
            say("feeding the step: null-model training against the loader, the ledger's cost, workers, first batch")
            results += feeding.feeding_results("images", image_ds, work, common.cores())
            results += feeding.feeding_results("texts", text_ds, work, common.cores(), target=None)
            results += feeding.ledger_cost_results(image_ds)
            raw_ds = os.path.join(work, "codecs", "codec-raw")  # the codecs group's, when it ran
            if not os.path.isdir(raw_ds):
                preprocess.run_image_job(spark, raw_images, raw_ds, codec="raw")
            results += feeding.scaling_results("png", image_ds)
            results += feeding.scaling_results("raw", raw_ds)
        if "preprocess" in args.groups:
            say("preprocessing throughput")
            results += preprocess.image_results(spark, raw_images, os.path.join(work, "pre-images"), per_class * 10,
                                                scale=args.scale)
            results += preprocess.text_results(spark, raw_texts, os.path.join(work, "pre-texts"), n_texts,
                                               scale=args.scale)
        if "stall" in args.groups:
            say("data stall")
            results += train_bench.stall_results("images", image_ds)
            results += train_bench.stall_results("texts", text_ds)
        if "resilience" in args.groups:
            say("resume points")
            results += train_bench.checkpoint_results("images", image_ds, work)
            results += train_bench.digest_cost_results("images", image_ds, work)
        if "distributed" in args.groups:
            say("distributed overhead")
            horovodrun = shutil.which("horovodrun") or os.path.join(os.path.dirname(sys.executable), "horovodrun")
            results += train_bench.distributed_results(horovodrun)
        if "growth" in args.groups:
            say("growth 1x / 4x / 16x")
            base = max(2, int(GROWTH_PER_CLASS * args.scale))
            raws, counts = {}, {}
            for factor in (1, 4, 16):
                raws[factor] = os.path.join(work, f"raw-images-x{factor}")
                generate_images(raws[factor], per_class=base * factor, seed=factor)
                counts[factor] = base * factor * 10
            results += growth.growth_results(spark, raws, os.path.join(work, "growth"), counts)
    finally:
        spark.stop()
    meta = {"size": args.size, "repeats": args.repeats, "images": per_class * 10, "texts": n_texts, "cores": common.cores(),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(common.table(results))
    common.write_json(args.output, results, meta)
    say(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
