"""Pure transforms of batch inference: inputs -> rows to score -> predictions, on the executors.

Every input becomes one row of ``SCORING_SCHEMA`` (the features as the training loader sees them: an image encoded
with the dataset's codec, or token ids as bytes), usable or not; ``score`` turns each into one row of
``PREDICTION_SCHEMA``, a null prediction with the reason when it could not be used. Rows in = rows out.

Raw inputs go through the preprocessing jobs' own functions (``pipelines.images.image_encoder``, which decodes with
``to_array``; ``pipelines.text.parse_record``, the label optional, and ``encode_ids``) with the checkpoint's copy of
the preprocessing config and vocabulary, and through the training loader's collate functions, so a model sees at
prediction what it saw in training. Raw texts may carry columns of the input through to the output (``keep``, one
string column each, after the scoring columns), and the class columns are typed as the training labels were
(``inference.columns``).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from dataset.rows import LABEL, SAMPLE_ID, rows_of
from inference import columns, raw_inputs
from pipelines import images, text
from training import outputs
from training.collation import ImageDecoder, image_inputs, sequence_inputs

log = logging.getLogger(__name__)

SCORING_SCHEMA = T.StructType([
    T.StructField("id", T.LongType(), True),            # the dataset's sample_id; for raw inputs the same hash of source
    T.StructField("source", T.StringType(), False),     # relpath (images) or file:line (sequences)
    T.StructField("split", T.StringType(), True),       # the dataset split; null for raw inputs
    T.StructField("label", T.StringType(), True),       # the true class where known (dataset rows, labelled raw lines)
    T.StructField("features", T.BinaryType(), True),    # encoded image or token-id bytes; null when unusable
    T.StructField("length", T.IntegerType(), True),     # tokens in ``features`` (sequences)
    T.StructField("reason", T.StringType(), True),      # why the input cannot be scored; null when usable
])


def prediction_schema(classes: tuple[str, ...] | list[str], keep: tuple[str, ...] = ()) -> T.StructType:
    """The output: one row per input. ``label``, ``predicted_class`` and the keys of ``probability_by_class`` are
    of the checkpoint's class type (``columns.class_type``: integers when every class is one); the ``keep`` input
    columns come last, as strings."""
    typed = columns.class_type(classes)
    return T.StructType([
        *[f for f in SCORING_SCHEMA.fields if f.name in ("id", "source", "split")],
        T.StructField("label", typed, True),
        T.StructField("predicted_index", T.IntegerType(), True),
        T.StructField("predicted_class", typed, True),
        T.StructField("top_probability", T.DoubleType(), True),
        T.StructField("probabilities", T.ArrayType(T.FloatType()), True),  # in the order of the checkpoint's classes
        T.StructField("reason", T.StringType(), True),
        T.StructField("probability_by_class", T.MapType(typed, T.FloatType()), True),  # class -> probability
        *[T.StructField(name, T.StringType(), True) for name in keep],
    ])


PREDICTION_SCHEMA = prediction_schema(())  # classes named by text (no checkpoint yet), no kept columns


@dataclass(frozen=True)
class ModelSource:
    """What an executor needs to build the model: the checkpoint's verified bytes (a Spark Broadcast of
    ``(checkpoint bytes, sidecar bytes)``, so executors need no access to the driver's file), and how its rows
    are encoded."""
    checkpoint: Any               # Broadcast[(bytes, bytes)] or the tuple itself (tests without Spark)
    sha256: str
    kind: str                     # image | sequence
    classes: tuple[str, ...]
    codec: str | None = None      # images: png | jpeg | raw
    token_dtype: str | None = None  # sequences: '<u2' | '<i4'

    def blobs(self) -> tuple[bytes, bytes]:
        return self.checkpoint.value if hasattr(self.checkpoint, "value") else self.checkpoint


_MODELS: dict[str, Any] = {}  # per Python worker (Spark reuses workers): each checkpoint is built once, not per task


def model_for(source: ModelSource, threads: int):
    """The checkpoint's model, built on this worker with ``training.checkpoint.load_model`` (verified against its
    SHA-256, loaded with weights_only=True) and cached."""
    import tempfile
    from pathlib import Path

    import torch

    from training import checkpoint

    torch.set_num_threads(threads)  # Spark already runs one task per core
    if source.sha256 not in _MODELS:
        data, sidecar = source.blobs()
        with tempfile.TemporaryDirectory(prefix="bigtrain-predict-") as folder:
            path = Path(folder) / outputs.CHECKPOINT_FILE
            path.write_bytes(data)
            checkpoint.sidecar_of(path).write_bytes(sidecar)
            model, _ = checkpoint.load_model(path)
        _MODELS.clear()  # one model per worker at a time: a long-lived worker must not pile up old checkpoints
        _MODELS[source.sha256] = model
    return _MODELS[source.sha256]


def checkpoint_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dataset_rows(split_df: DataFrame, *, split: str, kind: str, classes: list[str]) -> DataFrame:
    """A split of a bigtrain dataset (its Petastorm Parquet read by Spark) -> SCORING_SCHEMA."""
    rows = rows_of(kind)
    names = F.array(*[F.lit(c) for c in classes])
    label = F.element_at(names, F.col(LABEL) + 1)
    length = F.col(rows.length).cast("int") if rows.length else F.lit(None).cast("int")
    return split_df.select(F.col(SAMPLE_ID).alias("id"), F.col(rows.source).alias("source"),
                           F.lit(split).alias("split"), label.alias("label"), F.col(rows.features[0]).alias("features"),
                           length.alias("length"), F.lit(None).cast("string").alias("reason"))


def _with_id(df: DataFrame, keep: tuple[str, ...] = ()) -> DataFrame:
    """The id preprocessing gives the same record (``pipelines.splits.with_sample_id`` hashes relpath or source)."""
    return df.withColumn("id", F.xxhash64("source")).select(*_cols(*SCORING_SCHEMA.names, *keep))


def _cols(*names: str) -> list:
    """Columns by their exact names: an input column ``meta.id`` is a name, not a field of a struct."""
    return [F.col("`" + name.replace("`", "``") + "`") for name in names]


def raw_image_codec(codec: str) -> str:
    """How raw images are carried to the scoring step. PNG and raw arrays are lossless, so the decoded array is
    carried as .npy bytes (no PNG encode and decode per image); JPEG is lossy, so raw inputs go through it exactly
    as the training images did."""
    return "jpeg" if codec == "jpeg" else "raw"


def prepare_image_batch(batch: pd.DataFrame, *, root_url: str, params: images.DecodeParams) -> pd.DataFrame:
    """Listed files (path, size, problem) -> SCORING_SCHEMA rows (no id yet), each file read and prepared as
    preprocessing does (``pipelines.images.file_outcome``); never raises per file."""
    encode = images.image_encoder(params)
    out: dict[str, list] = {name: [] for name in SCORING_SCHEMA.names if name != "id"}
    for path, size, problem in zip(batch["path"], batch["size"], batch["problem"]):
        relpath, _ = images.split_relpath(path, root_url)
        features, reason = images.file_outcome(path, int(size), problem if isinstance(problem, str) else None,
                                               params=params, encode=encode)
        for name, value in zip(out, (relpath or path, None, None, features, None, reason)):
            out[name].append(value)
    return pd.DataFrame(out, columns=list(out), dtype=object)  # None stays None (pandas 3 makes str columns NaN)


def raw_images(files: DataFrame, *, root_url: str, params: images.DecodeParams) -> DataFrame:
    """Listed files (``pipelines.reading.files_frame``) -> SCORING_SCHEMA, read and prepared on the executors;
    a file that cannot be used (empty, too large, unreadable, a link, not an image) is a row with its reason."""
    schema = T.StructType([f for f in SCORING_SCHEMA.fields if f.name != "id"])

    def prepare(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield prepare_image_batch(batch, root_url=root_url, params=params)

    return _with_id(files.select("path", "size", "problem").mapInPandas(prepare, schema=schema))


def prepare_text_batch(records: list[text.RawRecord], *, params: text.ParseParams, vocabulary: list[str],
                       max_length: int, dtype: str, keep: tuple[str, ...] = ()):
    """Read records (``pipelines.text.read_partition``) -> an Arrow record batch of SCORING_SCHEMA (no id yet),
    then the ``keep`` columns of each record (``columns.kept_values``); never raises per record."""
    index = {token: i for i, token in enumerate(vocabulary)}
    header_of = text.csv_header()
    rows = []
    for source, _, raw, broken, header in records:
        label = features = length = None
        raw = raw if raw is not None else b""
        parsed, reason = (None, broken) if broken else text.parse_or_reason(raw, params, header_of(header),
                                                                             require_label=False)
        if parsed:
            label = parsed.label
            features, length = text.encode_ids(parsed.tokens, index, max_length, dtype)
        kept = columns.kept_values(raw, fmt=params.fmt, header=header_of(header), names=keep) if keep else []
        rows.append((source, None, label, features, length, reason, *kept))
    return text.arrow_batch(rows, raw_text_schema(keep))


def raw_text_schema(keep: tuple[str, ...] = ()) -> T.StructType:
    """What ``prepare_text_batch`` makes of raw texts: SCORING_SCHEMA without the id, then the ``keep`` columns."""
    return T.StructType([f for f in SCORING_SCHEMA.fields if f.name != "id"]
                        + [T.StructField(name, T.StringType(), True) for name in keep])


def raw_texts(spark, entries: list, *, fmt: str, fields: list[str], max_record_bytes: int | None,
              params: text.ParseParams, vocabulary, max_length: int, dtype: str, optional: tuple[str, ...] = (),
              keep: tuple[str, ...] = ()) -> DataFrame:
    """The records of the listed files ``entries``, read as ``preprocess-sequences`` reads them
    (``inference.raw_inputs.read_records``: Parquet files with the ``optional`` columns each has) and prepared in the
    same worker -> SCORING_SCHEMA and the ``keep`` columns. ``vocabulary`` is a list of tokens in id order or a
    Spark Broadcast of one."""
    def prepare(records: list[text.RawRecord]):
        words = vocabulary.value if hasattr(vocabulary, "value") else vocabulary
        return prepare_text_batch(records, params=params, vocabulary=words, max_length=max_length, dtype=dtype,
                                  keep=keep)

    return _with_id(raw_inputs.read_records(spark, entries, fmt=fmt, fields=fields, optional=optional,
                                         max_record_bytes=max_record_bytes, prepare=prepare,
                                         schema=raw_text_schema(keep)), keep)


def _model_inputs(features: list[bytes], lengths: list[int], source: ModelSource, decoder):
    """The tensors the training loader would make of these rows (its own collation functions)."""
    if source.kind == "image":
        return image_inputs(features, decoder)
    return sequence_inputs(features, np.asarray(lengths, dtype=np.int64), dtype=source.token_dtype)


def score_batch(batch: pd.DataFrame, *, model, source: ModelSource, batch_size: int,
                keep: tuple[str, ...] = ()) -> pd.DataFrame:
    """SCORING_SCHEMA rows (and the ``keep`` columns) -> ``prediction_schema`` rows, the usable ones through
    ``model`` ``batch_size`` at a time."""
    import torch

    n = len(batch)
    index = np.full(n, -1, dtype=np.int64)
    top = np.full(n, np.nan)
    probabilities: list[Any] = [None] * n
    usable = np.flatnonzero(batch["reason"].isna().to_numpy())
    decoder = ImageDecoder(source.codec) if source.kind == "image" else None
    features, lengths = batch["features"].to_numpy(), batch["length"].to_numpy()
    with torch.no_grad():
        for start in range(0, len(usable), batch_size):
            rows = usable[start:start + batch_size]
            sizes = [int(lengths[i]) for i in rows] if source.kind == "sequence" else []
            inputs = _model_inputs([bytes(features[i]) for i in rows], sizes, source, decoder)
            probs = torch.softmax(model(*inputs).float(), dim=1).numpy()
            index[rows] = probs.argmax(axis=1)
            top[rows] = probs.max(axis=1)
            for i, p in zip(rows, probs):
                probabilities[i] = p
    return _predictions(batch, index, top, probabilities, source.classes, keep)


def _predictions(batch: pd.DataFrame, index: np.ndarray, top: np.ndarray, probabilities: list, classes,
                 keep: tuple[str, ...]) -> pd.DataFrame:
    """The output rows of a scored batch (``index`` -1 where unscored), class names in the output's class type."""
    integer = columns.integer_classes(classes)
    names = [columns.as_class(name, integer) for name in classes]
    scored = index >= 0

    def typed(values: list) -> Any:
        return pd.array(values, dtype="Int64") if integer else pd.Series(values, index=batch.index, dtype=object)

    frame = pd.DataFrame({
        "id": batch["id"], "source": batch["source"], "split": batch["split"],
        "label": typed([columns.as_class(label, integer) for label in batch["label"]]),
        "predicted_index": pd.array([int(i) if ok else None for i, ok in zip(index, scored)], dtype="Int32"),
        "predicted_class": typed([names[i] if ok else None for i, ok in zip(index, scored)]),
        "top_probability": pd.array([float(t) if ok else None for t, ok in zip(top, scored)], dtype="Float64"),
        "probabilities": probabilities, "reason": batch["reason"],
        "probability_by_class": [None if p is None else dict(zip(names, p.tolist())) for p in probabilities],
        **{name: batch[name] for name in keep},
    }, index=batch.index)
    return frame[prediction_schema(classes, keep).names]


def score(rows: DataFrame, *, source: ModelSource, batch_size: int, threads: int = 1,
          keep: tuple[str, ...] = ()) -> DataFrame:
    """SCORING_SCHEMA (and the ``keep`` columns) -> ``prediction_schema`` on the executors; the model is built
    there, once per Python worker."""
    def predict(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = model_for(source, threads)
        for batch in batches:
            yield score_batch(batch, model=model, source=source, batch_size=batch_size, keep=keep)

    return rows.select(*_cols(*SCORING_SCHEMA.names, *keep)).mapInPandas(
        predict, schema=prediction_schema(source.classes, keep))
