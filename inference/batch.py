"""The batch-prediction recipe: a verified checkpoint and a dataset split or raw inputs -> Parquet predictions, one
row per input, with Spark.

Extract (a dataset split, or raw inputs through the preprocessing the checkpoint records), transform (score on the
executors, ``inference.predict``), load (Parquet beside the output, checked to hold one row per input, then swapped
in for an earlier prediction output). ``jobs/predict.py`` parses the command line, checks the flags and calls
``load_checkpoint`` and ``predict``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Literal

from core import atomic
from core.config import require
from core.errors import CheckpointError, DatasetError, RejectBudgetError, UsageError
from core.locking import hold
from core.logs import with_article
from core.paths import join, local_path
from dataset import layout
from inference import columns, raw_inputs
from training import outputs

if TYPE_CHECKING:
    from training.checkpoint import Checkpoint

log = logging.getLogger("bigtrain.predict")
SUMMARY_FILE = outputs.PREDICT_SUMMARY_FILE
STAGING, ASIDE = "predict-tmp", "predict-old"  # the siblings .NAME.predict-tmp (new output), .NAME.predict-old


class PredictionCountError(DatasetError):
    """The predictions written are not one per input."""


@dataclass(frozen=True)
class PredictConfig:
    master: str
    split: Literal["test", "validation", "train", "all"]
    format: Literal["auto", "jsonl", "csv", "parquet"]
    batch_size: int
    threads_per_task: int
    text_field: str = ""          # raw texts: "" = the checkpoint's preprocessing text_field
    label_field: str = ""         # raw texts: "" = the checkpoint's preprocessing label_field (optional per record)
    keep_columns: list[str] = field(default_factory=list)  # raw texts: input columns copied to the output
    spark_conf: dict[str, str] = field(default_factory=dict)

    def validate(self, prefix: str) -> None:
        require(self.batch_size >= 1, f"{prefix}.batch_size", f"must be at least 1, got {self.batch_size}")
        require(self.threads_per_task >= 1, f"{prefix}.threads_per_task",
                f"must be at least 1, got {self.threads_per_task}")



def load_checkpoint(path_text: str, trusted: Collection[str] = ()):
    """The checkpoint file (``PATH`` or ``PATH/checkpoint.pt``) read once and verified (``checkpoint.Verified``:
    path, bytes, sidecar bytes, and the typed ``checkpoint``); a UsageError (exit 2) with the CheckpointError's message, which names the
    file, when it cannot be used, and naming the import paths it holds that are not ``trusted`` (--trust-import)."""
    from training import checkpoint

    path = Path(path_text)
    if path.is_dir():
        path = path / outputs.CHECKPOINT_FILE
    try:
        verified = checkpoint.read(path)
        check_trusted(verified.checkpoint.import_paths(), trusted, path)
        # built once here: a model whose code cannot be imported fails now, in one line, not in every Spark task
        checkpoint.build_model(verified.checkpoint, where=f"checkpoint {path}")
        return verified
    except CheckpointError as exc:
        raise UsageError(f"--checkpoint: {exc}") from None


def check_trusted(import_paths: dict[str, str], trusted: Collection[str], path: Path) -> None:
    """A UsageError naming each import path of a checkpoint (config key -> path) that the user did not give with
    --trust-import: a checkpoint is data, and importing a path it names runs code that whoever wrote it chose."""
    untrusted = {key: name for key, name in import_paths.items() if name not in trusted}
    if untrusted:
        raise UsageError(f"--checkpoint {path} names code to import ("
                         + ", ".join(f"{key} {name}" for key, name in untrusted.items())
                         + "); predict imports only bigtrain's built-in models and the paths given with "
                           "--trust-import: if you trust that code, add "
                         + " ".join(f"--trust-import {name}" for name in untrusted.values()))


def check_dataset(trained: Checkpoint, info, checkpoint_path: Path) -> None:
    """The dataset must encode rows as the checkpoint's training data did: same kind, classes, image shape or
    vocabulary. Otherwise the predictions would be confidently wrong, so refuse, naming both."""
    where = f"--data {info.url} does not match checkpoint {checkpoint_path} (trained on {trained.dataset_url})"
    if info.kind != trained.kind:
        raise UsageError(f"{where}: {with_article(info.kind)} dataset, the model is for {trained.kind} data")
    if info.classes != list(trained.classes):
        raise UsageError(f"{where}: classes {info.classes} differ from the model's {list(trained.classes)}")
    if info.kind == "image":
        have, want = info.manifest.image, trained.dataset_spec().image
        if (have.size, have.channels) != (want.size, want.channels):
            raise UsageError(f"{where}: images are {have.size}px x {have.channels} channels, the model takes "
                             f"{want.size}px x {want.channels}")
    elif trained.vocabulary is not None and layout.read_vocabulary(info.url) != trained.vocabulary:
        raise UsageError(f"{where}: its vocabulary differs from the model's, so its token ids mean other words")



@contextlib.contextmanager
def output_lock(output_url: str, flag_value: str):
    """A local --output is held for the whole run (``.NAME.predict.lock`` beside it, removed at the end; a second
    predict into it exits 75 at once), and the staging folders that runs which died there left behind are removed. Object stores
    have no lock: there each run stages apart and the last to finish publishes."""
    local = local_path(output_url)
    if local is None:
        yield
        return
    folder, name = os.path.split(os.path.abspath(local).rstrip("/"))
    with hold(os.path.join(folder, f".{name}.predict.lock"), what=f"a prediction into --output {flag_value}",
              remove=True):
        for leftover in Path(folder).glob(f".{name}.{STAGING}*"):
            log.info("removing %s, left by a prediction that did not finish", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
        yield


def check_output(output_url: str, flag_value: str) -> None:
    """Predictions replace an earlier prediction output only: a model, a dataset, a file or any other folder at
    --output is refused rather than overwritten."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(output_url)
    if not fs.exists(path):
        return
    if fs.isfile(path):
        raise UsageError(f"--output {flag_value} is a file; predictions are written as a folder of Parquet files")
    found = [e for e in fs.ls(path, detail=False) if not _lock_file(e.rstrip("/").rsplit("/", 1)[-1])]
    if found and not fs.exists(path.rstrip("/") + "/" + SUMMARY_FILE):
        raise UsageError(f"--output {flag_value} holds files that are not an earlier prediction output (no "
                         f"{SUMMARY_FILE}): refusing to replace them; give a new or empty folder")


def _lock_file(name: str) -> bool:
    """A lock bigtrain leaves behind only when its holder was killed (``.bigtrain.lock``, ``.bigtrain-train.lock``):
    a folder holding nothing else is as good as empty."""
    return name.startswith(".bigtrain") and name.endswith(".lock")


def scoring_rows(spark, *, checkpoint_path: Path, trained: Checkpoint, data, input_url: str | None,
                 config: PredictConfig, keep: tuple[str, ...] = ()):
    """(rows to score, inputs read, the codec or token dtype the rows are in); raw texts with the ``keep``
    columns."""
    from inference import predict
    from pipelines import reading

    kind = trained.kind
    if data is not None:
        if config.split not in data.splits and config.split != "all":
            raise UsageError(f"--split {config.split}: {data.url} has splits {', '.join(data.splits)}")
        names = list(data.splits) if config.split == "all" else [config.split]
        parts = [predict.dataset_rows(spark.read.parquet(reading.spark_path(data.splits[n].url)), split=n, kind=kind, classes=data.classes)
                 for n in names if data.splits[n].rows]
        rows = parts[0] if parts else spark.createDataFrame([], predict.SCORING_SCHEMA)
        for part in parts[1:]:
            rows = rows.unionByName(part)
        encoding = data.manifest.image.codec if kind == "image" else data.manifest.sequence.token_dtype
        return rows, sum(data.splits[n].rows for n in names), encoding
    if kind == "image":
        return raw_inputs.image_rows(spark, checkpoint_path=checkpoint_path, trained=trained, input_url=input_url)
    return raw_inputs.text_rows(spark, checkpoint_path=checkpoint_path, trained=trained, input_url=input_url,
                                config=config, keep=keep)


def predict(spark, *, model, output_url: str, data=None, input_url: str | None = None,
            config: PredictConfig) -> dict[str, Any]:
    """Extract (dataset split or raw inputs), transform (prepare, score on the executors with ``model``, a
    ``checkpoint.Verified``), load (Parquet beside ``output_url``, checked to hold one row per input, then swapped
    in); returns the summary."""
    from inference import predict as transforms
    from pipelines import session  # pyspark

    trained = model.checkpoint
    kind = trained.kind
    keep = columns.check_text_options(config, kind=kind, dataset=data is not None)
    rows, inputs_read, encoding = scoring_rows(spark, checkpoint_path=model.path, trained=trained, data=data,
                                               input_url=input_url, config=config, keep=keep)
    source = transforms.ModelSource(
        checkpoint=session.share(spark, (model.data, model.sidecar)),  # the bytes verified, not a re-read
        sha256=transforms.checkpoint_digest(model.data), kind=kind, classes=tuple(trained.classes),
        codec=encoding if kind == "image" else None, token_dtype=encoding if kind == "sequence" else None)
    log.info("scoring %s with %s (%s, %d classes) -> %s", data.url if data else input_url, model.path,
             trained.model, len(trained.classes), output_url)
    scored = transforms.score(rows, source=source, batch_size=config.batch_size, threads=config.threads_per_task,
                              keep=keep)
    about = {"checkpoint": str(model.path), "checkpoint_sha256": source.sha256, "classes": list(trained.classes),
             "class_type": "integer" if columns.integer_classes(source.classes) else "string",
             "input": data.url if data else input_url, "split": config.split if data else None,
             "keep_columns": list(keep)}
    return publish(spark, scored, output_url=output_url, inputs_read=inputs_read, about=about)


def publish(spark, scored, *, output_url: str, inputs_read: int, about: dict[str, Any]) -> dict[str, Any]:
    """Write ``scored`` to the staging sibling of ``output_url``, check it (rows written = inputs read, at least
    one scored), then swap it in for the earlier output; on any failure the staging copy is removed and the
    earlier output is left as it was."""
    import fsspec
    from pyspark.sql import functions as F

    fs, target = fsspec.core.url_to_fs(output_url)
    own = f"{STAGING}-{os.getpid()}-{secrets.token_hex(4)}"  # this run's own: never another run's folder
    staging_url, staging = atomic.sibling(output_url, own), atomic.sibling(target, own)
    atomic.recover_folder(fs, target, aside=ASIDE)
    try:
        scored.write.mode("overwrite").parquet(staging_url)
        # The part files by name: Spark ignores (with a warning) a folder whose own name is hidden, as the staging
        # folder's is, so that no reader of the output's parent ever takes it for data.
        parts = [join(staging_url, p.rsplit("/", 1)[-1]) for p in fs.ls(staging, detail=False) if p.endswith(".parquet")]
        stats = (spark.read.schema(scored.schema).parquet(*parts)
                 .groupBy(F.substring_index("reason", ":", 1).alias("category"), "predicted_class")
                 .agg(F.count(F.lit(1)).alias("count"), F.min("reason").alias("example")).collect()
                 if parts else [])
        summary = {**summarise(stats, inputs_read=inputs_read, output_url=output_url), **about}
        if summary["inputs_read"] and not summary["scored"]:
            raise RejectBudgetError(f"none of the {summary['inputs_read']} inputs could be scored "
                                    f"({_reasons(summary)}): wrong --input for this model{_field_hint(summary)}? "
                                    f"Nothing written to {output_url}")
        _write_summary(staging_url, summary)
        atomic.replace_folder(fs, staging, target, aside=ASIDE)
    finally:
        if fs.exists(staging):
            fs.rm(staging, recursive=True)
    return summary


def _reasons(summary: dict[str, Any]) -> str:
    """The unusable inputs by category, each with one full reason, which names the field, file or limit."""
    examples = summary["unusable_examples"]
    return ", ".join(f"{r} ({n}, e.g. {examples[r][:200]!r})" for r, n in summary["unusable_by_reason"].items())


def _field_hint(summary: dict[str, Any]) -> str:
    return (", or are its fields named otherwise (--text-field, --label-field)"
            if "missing field" in summary["unusable_by_reason"] else "")


def summarise(stats: list, *, inputs_read: int, output_url: str) -> dict[str, Any]:
    """Counts by outcome, and the smallest reason of each unusable category (``unusable_examples``); inputs read
    must equal rows written (scored + unusable), or the job fails."""
    scored = sum(r["count"] for r in stats if r["category"] is None)
    unusable: dict[str, int] = {}
    examples: dict[str, str] = {}
    predicted: dict[str, int] = {}
    for r in stats:
        if r["category"] is not None:
            unusable[r["category"]] = unusable.get(r["category"], 0) + r["count"]
            examples[r["category"]] = min(examples.get(r["category"], r["example"]), r["example"])
        else:
            predicted[r["predicted_class"]] = predicted.get(r["predicted_class"], 0) + r["count"]
    written = scored + sum(unusable.values())
    if written != inputs_read:
        raise PredictionCountError(f"{output_url}: {inputs_read} inputs read but {written} predictions written")
    return {"inputs_read": inputs_read, "scored": scored, "unusable": sum(unusable.values()),
            "unusable_by_reason": dict(sorted(unusable.items(), key=lambda kv: (-kv[1], kv[0]))),
            "unusable_examples": dict(sorted(examples.items())),
            "predicted": dict(sorted(predicted.items(), key=lambda kv: (-kv[1], str(kv[0])))), "output": output_url}


def _write_summary(output_url: str, summary: dict[str, Any]) -> None:
    import fsspec

    with fsspec.open(join(output_url, SUMMARY_FILE), "w") as fh:
        json.dump(summary, fh, indent=2)
