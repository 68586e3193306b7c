"""The names of what training and prediction leave in their output folders: the one place they are spelled.

No import beyond the standard library: jobs (``jobs.common``'s output markers, before torch is loaded),
orchestration and inference read these names too.

    <output>/checkpoint.pt + checkpoint.json       the final model and its sidecar (training.checkpoint)
    <output>/checkpoints/step-*.pt + .json, best.pt resume points; the best epoch's weights (train.keep_best)
    <output>/metrics.json                          test metrics, per-epoch history, the run's config
    <output>/metrics.jsonl, tensorboard/           per epoch, as it trains (training.reports)
    <output>/evaluation.json, *.png                the evaluation report and its figures (training.reports)
    <output>/hang.json, hang-stacks/rank<N>.txt    the watchdog's verdict and every rank's stacks
    <output>/first-batch-error/rank<N>.txt         the traceback of a user's code failing on the first batch
    <output>/digests/rank<N>.tsv                   each step's digest of its batch's sample ids (training.digests)
    <output>/read_errors.jsonl                     stored rows that did not read in training, and their stand-ins
    <prediction output>/_predict.json              predict's summary beside its Parquet files
"""
from __future__ import annotations

CHECKPOINT_FILE = "checkpoint.pt"
RESUME_DIR = "checkpoints"
BEST_FILE = "best.pt"  # in RESUME_DIR: the weights of the best validation epoch so far
METRICS_FILE = "metrics.json"
METRICS_LOG_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
EVALUATION_FILE = "evaluation.json"
CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "training_curves.png"
STAGES_PNG = "stages.png"
LOCK_FILE = ".bigtrain-train.lock"  # rank 0 holds it for the whole run; removed at its end (a killed run leaves it)
HANG_FILE = "hang.json"
STACKS_DIR = "hang-stacks"
FIRST_BATCH_ERRORS_DIR = "first-batch-error"
DIGESTS_DIR = "digests"
READ_ERRORS_FILE = "read_errors.jsonl"  # every stored row that failed to read, and the row that stood in for it
PREDICT_SUMMARY_FILE = "_predict.json"  # a leading "_": Spark, pyarrow and pandas readers of the Parquet skip it


def rank_file(rank: int) -> str:
    """``rank<N>.txt``: one rank's text in STACKS_DIR or FIRST_BATCH_ERRORS_DIR."""
    return f"rank{rank}.txt"
