"""Raw inputs -> rows to score, prepared as the checkpoint's training data was: its copy of the preprocessing config
(image size, codec and limits; text and label fields, tokenizer, vocabulary), and the preprocessing job's reading.

For texts the fields can be chosen (``--text-field``, ``--label-field``: new inputs may name their columns
otherwise) and input columns kept (``--keep-columns``); the label and the kept columns are optional per record
(``read_records``).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from core.config import read_defaults
from core.errors import UsageError
from pipelines import inputs

if TYPE_CHECKING:
    from training.checkpoint import Checkpoint


def _preprocess(trained: Checkpoint, checkpoint_path: Path, *keys: str) -> list[Any]:
    settings = trained.preprocess
    if not settings:
        raise UsageError(f"checkpoint {checkpoint_path} does not record how its data was preprocessed, so raw inputs "
                         "cannot be prepared the same way: preprocess them and score the dataset with --data")
    missing = [k for k in keys if k not in settings]
    if missing:
        raise UsageError(f"checkpoint {checkpoint_path}: its preprocessing config has no key {missing[0]!r}")
    return [settings[k] for k in keys]


def _limit(trained: Checkpoint, section: str, key: str) -> int:
    """A size limit of the checkpoint's preprocessing (raw inputs larger are unusable, never read whole)."""
    return int(_setting(trained, section, key))


def _setting(trained: Checkpoint, section: str, key: str) -> Any:
    """A setting of the checkpoint's preprocessing; for a checkpoint older than the setting, the committed default
    of that preprocessing section."""
    settings = trained.preprocess or {}
    return settings[key] if key in settings else read_defaults()[section][key]


def image_rows(spark, *, checkpoint_path: Path, trained: Checkpoint, input_url: str):
    """(rows to score, files read, the codec the rows are in) of a folder of raw images."""
    from inference import predict
    from pipelines import images, reading

    size, channels, codec, max_pixels, min_side, ratio = _preprocess(
        trained, checkpoint_path, "image_size", "channels", "codec", "max_pixels", "min_side", "max_aspect_ratio")
    params = images.DecodeParams(image_size=size, channels=channels, codec=predict.raw_image_codec(codec),
                                 max_pixels=max_pixels, min_side=min_side, max_aspect_ratio=ratio,
                                 max_file_bytes=_limit(trained, "preprocess_images", "max_file_bytes"))
    listing = inputs.list_files(input_url, follow_links=bool(_setting(trained, "preprocess_images", "follow_links")))
    files = reading.files_frame(spark, listing.entries)
    return predict.raw_images(files, root_url=input_url, params=params), len(listing.entries), params.codec


def text_rows(spark, *, checkpoint_path: Path, trained: Checkpoint, input_url: str, config,
              keep: tuple[str, ...]):
    """(rows to score with the ``keep`` columns, records read, the token dtype) of raw texts; ``config`` (a
    ``batch.PredictConfig``) gives the format and the fields that replace the checkpoint's."""
    from inference import predict
    from pipelines import reading, session, text

    params, max_length = _parse_params(trained, checkpoint_path, input_url, config)
    vocabulary = trained.vocabulary
    if not vocabulary:
        raise UsageError(f"checkpoint {checkpoint_path} holds no vocabulary: raw texts cannot be mapped to its ids")
    # Read exactly as preprocess-sequences reads (same file:line sources); the label and the kept columns are
    # optional: a record, or a Parquet file, without them is still scored.
    listing = inputs.list_files(input_url, follow_links=bool(_setting(trained, "preprocess_sequences", "follow_links")))
    dtype = text.token_dtype(len(vocabulary))
    try:
        entries = inputs.capped(listing.entries, _limit(trained, "preprocess_sequences", "max_file_bytes"),
                                "max_file_bytes")
        rows = predict.raw_texts(spark, entries, fmt=params.fmt, fields=[params.tokens_field or params.text_field],
                                 optional=(params.label_field, *keep), keep=keep,
                                 max_record_bytes=_limit(trained, "preprocess_sequences", "max_record_bytes"),
                                 params=params, vocabulary=session.share(spark, vocabulary),
                                 max_length=max_length, dtype=dtype)
    except reading.MissingColumnError as exc:
        raise UsageError(f"{exc}{_FIELD_FLAGS}") from None
    return rows, rows.count(), dtype


_FIELD_FLAGS = "; --text-field and --label-field name the input's fields (default: the checkpoint's)"


def _parse_params(trained: Checkpoint, checkpoint_path: Path, input_url: str, config):
    """(the checkpoint's parsing of texts, with ``config``'s fields where given; its max_length)."""
    from pipelines import reading, text

    (text_field, label_field, tokens_field, tokenizer, lowercase, max_length) = _preprocess(
        trained, checkpoint_path, "text_field", "label_field", "tokens_field", "tokenizer", "lowercase", "max_length")
    if config.text_field and tokens_field:
        raise UsageError(f"--text-field {config.text_field}: checkpoint {checkpoint_path} reads token ids from the "
                         f"field {tokens_field!r} (preprocessing's tokens_field), not text")
    try:
        fmt = reading.detect_format(input_url, config.format)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"--input {input_url}: {exc}") from None
    params = text.ParseParams(fmt=fmt, text_field=config.text_field or text_field,
                              label_field=config.label_field or label_field, tokens_field=tokens_field or None,
                              tokenizer=tokenizer, lowercase=lowercase)
    return params, max_length


def read_records(spark, entries: list, *, fmt: str, fields: list[str], optional: tuple[str, ...],
                 max_record_bytes: int | None, prepare: Callable[[Any], Any], schema):
    """``pipelines.reading.read_records`` of ``entries`` with ``prepare``. The label and the kept columns are
    ``optional``: a JSON Lines or CSV record carries whatever fields it has, so it is read whole; a Parquet file is
    read by column, and one it lacks would reject the whole file (``pipelines.inputs.parquet_rows``), so each
    Parquet file is read with the optional columns it has (its footer tells, read in the worker that reads the
    file) and a row of a file without one has it null. The required ``fields`` are checked as preprocessing
    checks them: the first readable file without one is a MissingColumnError naming the column."""
    from pipelines import reading, text

    wanted = [name for name in dict.fromkeys(optional) if name not in fields]
    if fmt != "parquet" or not wanted:
        return reading.read_records(spark, entries, fmt=fmt, fields=fields, max_record_bytes=max_record_bytes,
                                    prepare=prepare, schema=schema)
    _check_required(entries, fields)

    def read(batches: Iterator[Any]) -> Iterator[Any]:
        for path, relpath, problem in reading.listed_files(batches):
            have = fields + [name for name in wanted if name in _columns(path, problem)]
            for records in text.read_partition(iter([(path, relpath, problem)]), fmt=fmt, fields=have,
                                               max_record_bytes=max_record_bytes):
                yield prepare(records)

    return reading.files_frame(spark, entries).select("path", "relpath", "problem").mapInArrow(read, schema)


def _check_required(entries: list, fields: list[str]) -> None:
    """As preprocessing checks (``reading.read_records``): MissingColumnError naming the column when the first
    Parquet file that can be read lacks one of ``fields``; a later file without it is that file's rejected row."""
    for entry in entries:
        have = _columns(entry.path, entry.problem) if entry.size else []
        if have:
            missing = [name for name in fields if name not in have]
            if missing:
                from pipelines import reading

                raise reading.MissingColumnError(f"{entry.path}: no column {missing[0]!r} (columns: "
                                                 f"{', '.join(have)})")
            return


def _columns(path: str, problem: Any) -> list[str]:
    """A Parquet file's column names; none when it cannot be read (its reading then reports why, in one row)."""
    if isinstance(problem, str):
        return []
    try:
        return inputs.parquet_columns(path)
    except Exception:  # noqa: BLE001 - not Parquet, truncated, unreadable: rejected when its rows are read
        return []
