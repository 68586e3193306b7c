"""The row contract of each dataset kind, defined once: the columns a split stores, which of them a model's inputs
are made of, which names where a row came from, and the columns of the rejected table.

The Spark side writes these columns (``pipelines.schemas``, the recipes' rejected tables), the training loader
reads and collates them (``training.collation.task_for``), and batch prediction turns them into rows to score
(``inference.predict.dataset_rows``): a column renamed here is renamed on every side. No Spark and no torch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import DatasetError

SAMPLE_ID = "sample_id"  # a stable hash of where the row came from (pipelines.splits.with_sample_id)
LABEL = "label"          # the class index (int32) of the manifest's class_to_index
REASON = "reason"        # a rejected record's "category: detail"
FINGERPRINT = "fingerprint"  # a 64-bit hash of the row's content after preparation (pipelines.duplicates)
THUMBNAIL = "thumbnail"      # images: the 8x8 grey thumbnail the near-duplicate search compares
_INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only: "²" and "--5" are names, not numbers


@dataclass(frozen=True)
class Rows:
    """One dataset kind's row: ``stored`` is every column of a split, in the Petastorm schema's order;
    ``features`` the columns a model's inputs are made of; ``source`` the column that names where the row came
    from (an image's path below the input, a record's ``file:line``); ``rejected`` the rejected table's columns."""
    kind: str
    source: str
    features: tuple[str, ...]
    stored: tuple[str, ...]
    rejected: tuple[str, ...]

    @property
    def read(self) -> tuple[str, ...]:
        """The columns the training loader reads: the features, the label and the sample id."""
        return (*self.features, LABEL, SAMPLE_ID)

    @property
    def length(self) -> str | None:
        """The column holding each row's true sequence length, for kinds whose features vary in length."""
        return "length" if "length" in self.stored else None


IMAGE = Rows(kind="image", source="relpath", features=("image",), stored=(SAMPLE_ID, "relpath", LABEL, "image", FINGERPRINT, THUMBNAIL),
             rejected=("path", "relpath", "class_name", REASON))
SEQUENCE = Rows(kind="sequence", source="source", features=("tokens", "length"),
                stored=(SAMPLE_ID, "source", LABEL, "length", "tokens", FINGERPRINT), rejected=("source", REASON, "raw_text"))
KINDS = {rows.kind: rows for rows in (IMAGE, SEQUENCE)}


def rows_of(kind: str) -> Rows:
    """The row contract of dataset kind ``kind``; a DatasetError naming it when bigtrain has no such kind."""
    try:
        return KINDS[kind]
    except KeyError:
        raise DatasetError(f"dataset kind {kind!r} is not one of {', '.join(KINDS)}") from None


def is_integer_name(name: str) -> bool:
    """Whether a class name is an integer label (``3``, ``-1``), whatever format it came in: a JSON or Parquet
    number, a JSON string, a CSV cell, a folder name. Label kinds must not mix (``pipelines.labels``); a model whose
    classes are all integers predicts integers (``inference.columns``)."""
    return _INTEGER.fullmatch(name) is not None
