"""The columns a prediction output holds beyond the scores: input columns kept for joining back (``keep``), and the
class names typed as the training labels were.

``check_text_options`` refuses, naming the flag, what only raw text inputs have (their fields, their columns);
``kept_values`` reads the kept columns of one raw record; ``class_type`` and ``as_class`` type the label, the
predicted class and the keys of ``probability_by_class``: integers (LongType) when every class name of the
checkpoint is an integer, as preprocessing's ``labels: [0, 1, 2]`` or integer label fields make them, else strings.
"""
from __future__ import annotations

import csv
import json
from typing import Any, Iterable

from core.errors import UsageError
from dataset.rows import is_integer_name

INT64 = (-(2 ** 63), 2 ** 63 - 1)
# The output's own columns (``inference.predict.prediction_schema``, in its order); kept input columns follow them.
OUTPUT_COLUMNS = ("id", "source", "split", "label", "predicted_index", "predicted_class", "top_probability",
                  "probabilities", "reason", "probability_by_class")
TEXT_ONLY = {"text_field": "--text-field", "label_field": "--label-field", "keep_columns": "--keep-columns"}


def check_text_options(config, *, kind: str, dataset: bool) -> tuple[str, ...]:
    """The kept input columns (``check_keep_columns``) of a ``batch.PredictConfig``. A UsageError naming the flag
    (and config key) of a text-input option given for a dataset split or for images: there is no field to choose,
    and a dataset keeps no column of its inputs, only their source."""
    if kind == "sequence" and not dataset:
        return check_keep_columns(config.keep_columns)
    given = [key for key in TEXT_ONLY if getattr(config, key)]
    if given:
        what = "a dataset split (--data)" if dataset else "image inputs"
        why = ("a dataset keeps no column of its inputs, only their source; join on id or source instead, or score "
               "the raw texts with --input" if dataset else "images have no fields")
        raise UsageError(f"{TEXT_ONLY[given[0]]} (config predict.{given[0]}) applies to raw text inputs only "
                         f"(--input .jsonl/.csv/.parquet), not to {what}: {why}")
    return ()


def check_keep_columns(names: Iterable[str]) -> tuple[str, ...]:
    """The kept input columns, checked: each named once, none empty, none named as an output column. Spark
    resolves column names case-insensitively, so ``ID`` is taken by ``id`` too."""
    reserved = {name.lower(): name for name in OUTPUT_COLUMNS}
    seen: dict[str, str] = {}
    for name in names:
        if not name.strip():
            raise UsageError("--keep-columns: an empty column name (config predict.keep_columns); give names such "
                             "as --keep-columns ticket_id,customer")
        if name.lower() in reserved:
            raise UsageError(f"--keep-columns: {name!r} is the output's own column {reserved[name.lower()]!r} "
                             f"(output columns: {', '.join(OUTPUT_COLUMNS)}); rename it in the input, or keep "
                             "another column")
        if name.lower() in seen:
            raise UsageError(f"--keep-columns: {name!r} is named twice (as {seen[name.lower()]!r})")
        seen[name.lower()] = name
    return tuple(seen.values())


def split_names(text: str | None) -> list[str] | None:
    """``--keep-columns a,b`` -> ["a", "b"] (names stripped); None when the flag is not given."""
    return None if text is None else [name.strip() for name in text.split(",")]


def kept_values(raw: bytes, *, fmt: str, header: list[str] | None, names: tuple[str, ...]) -> list[str | None]:
    """The kept columns of one raw record (a JSON Lines line, a Parquet row as JSON, a CSV record): a string as
    read, any other JSON value (number, boolean, array, object) as its compact JSON text (so ``12345`` is
    ``"12345"``, ``true`` is ``"true"``), a column the record lacks (or a JSON null) null. A record that cannot be
    read as an object or a CSV row keeps nulls: it is unusable, and its ``source`` still says where it is."""
    record = _record(raw, fmt, header)
    return [_text(record.get(name)) for name in names]


def _record(raw: bytes, fmt: str, header: list[str] | None) -> dict[str, Any]:
    try:
        line = raw.decode("utf-8")
        if fmt == "csv":
            cells = next(csv.reader([line], strict=True))
            return dict(zip(header, cells)) if header is not None and len(cells) == len(header) else {}
        record = json.loads(line)
    except (UnicodeDecodeError, ValueError, csv.Error, StopIteration):
        return {}
    return record if isinstance(record, dict) else {}


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def integer_classes(classes: Iterable[str]) -> bool:
    """Whether every class name is an integer as preprocessing writes one (``dataset.rows.is_integer_name``, in its
    canonical digits and within int64): then labels and predictions are integers, as they were in the input."""
    names = list(classes)
    return bool(names) and all(_canonical_int(name) is not None for name in names)


def class_type(classes: Iterable[str]):
    """The Spark type of the output's class columns: LongType for integer classes, else StringType."""
    from pyspark.sql import types as T

    return T.LongType() if integer_classes(classes) else T.StringType()


def as_class(value: Any, integer: bool) -> Any:
    """A class name (or a label as an input states it) in the output's class type: with ``integer`` classes the
    integer, or None for a label that is not one (``pos`` given to a model of classes 0 and 1); else the text."""
    if not isinstance(value, str):
        return None  # None, or the NaN pandas holds for a null
    return _canonical_int(value) if integer else value


def _canonical_int(name: str) -> int | None:
    if not is_integer_name(name) or str(int(name)) != name:  # "007" is a name of its own, not 7
        return None
    number = int(name)
    return number if INT64[0] <= number <= INT64[1] else None
