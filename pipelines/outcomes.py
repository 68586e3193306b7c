"""One aggregation for everything a preprocessing run must know before it writes: the class (label) names seen,
the kinds of label (numbers or text), what each record became (accepted, or the category of its rejection), the
rows and bytes of every split, the sequence lengths, and how many accepted rows of each split every input
partition holds (what ``pipelines.writing`` balances the row groups with).

``group_counts`` is the transform (grouped by partition, split, name, label kind, outcome and whether the row was
carried from the previous snapshot: few groups, whatever the size of the data); ``Outcomes`` the driver's
reading of the collected groups once the label map is known. The rejections the label map makes (a name not in
it, the rarer label kind when numbers and text mix) are applied here to the counts exactly as
``pipelines.labels`` applies them to the rows, so the counts never need a second pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

MEASURES = ("bytes", "ids", "tokens")  # summed: payload bytes, token ids to encode (text), tokens before truncation


def projection(df: DataFrame, *, name: Column, carried: bool, is_number: Column | None = None,
               bytes_: Column | None = None, ids: Column | None = None, tokens: Column | None = None,
               max_length: int | None = None) -> DataFrame:
    """The columns ``group_counts`` reads, from new records (``carried=False``) or from the previous snapshot's
    rows. ``bytes_`` is the payload as written (encoded images, token-id bytes of carried rows); ``ids`` the token
    ids a new row will be encoded with (their width is known once the vocabulary is); ``tokens`` the length before
    truncation to ``max_length`` (sequence statistics)."""
    zero = F.lit(0).cast("long")
    truncated = (F.when(tokens > max_length, 1).otherwise(0) if tokens is not None and max_length is not None
                 else F.lit(None).cast("int"))
    return df.select(
        F.col("split"), name.alias("name"),
        (is_number if is_number is not None else F.lit(None)).cast("boolean").alias("is_number"),
        F.substring_index("reason", ":", 1).alias("category"), F.lit(carried).alias("carried"),
        (bytes_ if bytes_ is not None else zero).cast("long").alias("bytes"),
        (ids if ids is not None else zero).cast("long").alias("ids"),
        (tokens if tokens is not None else F.lit(None)).cast("long").alias("tokens"),
        truncated.alias("truncated"))


def group_counts(parts: list[DataFrame]) -> DataFrame:
    """Rows, sums and the longest sequence per (partition of the union of ``parts``, split, name, label kind,
    outcome category, carried). ``parts`` are ``projection``s, in the order the written rows are unioned in, so
    that ``pid`` is the partition the write sees each row in."""
    union = parts[0]
    for part in parts[1:]:
        union = union.unionByName(part)
    keys = [F.spark_partition_id().alias("pid"), "split", "name", "is_number", "category", "carried"]
    return union.groupBy(*keys).agg(F.count(F.lit(1)).alias("rows"), *[F.sum(m).alias(m) for m in MEASURES],
                                    F.max("tokens").alias("longest"), F.sum("truncated").alias("truncated"))


MIXED_LABELS = "mixed label types"   # pipelines.labels.reject_label_kind's reason, up to its first ':'
UNMAPPED_LABEL = "missing label"     # pipelines.labels.assign_labels's reason for a name not in the map


@dataclass
class Outcomes:
    """The collected groups of ``group_counts`` (dicts of its columns)."""
    groups: list[dict[str, Any]]

    def names(self, *, accepted_only: bool, reject_kind: bool | None = None) -> list[str]:
        """Names of this run's new records: of every record (images: a class folder is a class even when its files
        are all rejected), or only of the accepted ones, those of the label kind ``reject_kind`` left out."""
        return sorted({g["name"] for g in self.groups if not g["carried"] and g["name"] is not None
                       and (not accepted_only or (g["category"] is None and (reject_kind is None
                                                                            or g["is_number"] != reject_kind)))})

    def label_kinds(self) -> dict[bool, int]:
        """Accepted new records labelled with numbers (True) and with text (False)."""
        kinds: dict[bool, int] = {}
        for g in self.groups:
            if not g["carried"] and g["category"] is None and g["is_number"] is not None:
                kinds[g["is_number"]] = kinds.get(g["is_number"], 0) + g["rows"]
        return kinds

    def resolve(self, class_to_index: dict[str, int], *, reject_kind: bool | None = None) -> list[dict[str, Any]]:
        """The groups as the written rows will be: ``label`` from the map, and ``category`` set where the map
        rejects (a name not in it; the label kind ``reject_kind``)."""
        out = []
        for g in self.groups:
            category = g["category"]
            if category is None and reject_kind is not None and g["is_number"] == reject_kind and not g["carried"]:
                category = MIXED_LABELS
            elif category is None and g["name"] not in class_to_index:
                category = UNMAPPED_LABEL
            out.append({**g, "category": category, "label": class_to_index.get(g["name"])})
        return out

    def lengths(self, *, reject_kind: bool | None = None) -> dict[str, Any]:
        """Longest, mean and truncated sequence lengths of the new records accepted before labelling (those the
        label map rejects count, those of the rejected label kind do not), as the manifest keeps them."""
        mine = [g for g in self.groups if not g["carried"] and g["category"] is None
                and (reject_kind is None or g["is_number"] != reject_kind)]
        rows = sum(g["rows"] for g in mine)
        longest = max((g["longest"] for g in mine if g["longest"] is not None), default=None)
        return {"rows": rows, "longest": longest,
                "mean_length": sum(g["tokens"] or 0 for g in mine) / rows if rows else None,
                "truncated": sum(g["truncated"] or 0 for g in mine)}


def processed(resolved: list[dict[str, Any]]) -> tuple[int, int]:
    """(records, rejected) of this run's new records."""
    new = [g for g in resolved if not g["carried"]]
    return sum(g["rows"] for g in new), sum(g["rows"] for g in new if g["category"] is not None)
