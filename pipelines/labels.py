"""Label maps shared by every dataset kind: names -> contiguous indices, and the transform that applies them."""
from __future__ import annotations

import re

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

_INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only: "²" and "--5" are names, not numbers


def _sort_key(name: str):
    """Integers in numeric order ("2" before "10"), then everything else alphabetically. Equal numbers ("1", "01")
    are ordered by their text, so the map never depends on the order the names came in (or on PYTHONHASHSEED)."""
    stripped = name.strip()
    if _INTEGER.fullmatch(stripped):
        return (0, int(stripped), name)
    return (1, 0, name)


def class_map(class_names) -> dict[str, int]:
    """Label names -> contiguous indices in a fixed order, so the same names always give the same map."""
    return {name: idx for idx, name in enumerate(sorted(set(class_names), key=_sort_key))}


def assign_labels(df: DataFrame, *, class_to_index: dict[str, int], name_col: str = "class_name") -> DataFrame:
    """Add the integer ``label`` from the map; a name missing from the map rejects the row (``reason``), never drops it."""
    pairs = [x for name, idx in sorted(class_to_index.items()) for x in (F.lit(name), F.lit(idx))]
    label = F.create_map(*pairs)[F.col(name_col)] if class_to_index else F.lit(None).cast("int")
    unmapped = F.concat(F.lit(f"missing label: {name_col} "), F.coalesce(F.col(name_col), F.lit("(null)")),
                        F.lit(" is not in the label map"))
    return (df.withColumn("label", label.cast("int"))
              .withColumn("reason", F.when(F.col("reason").isNull() & F.col("label").isNull(), unmapped)
                                     .otherwise(F.col("reason"))))


def mixed_label_kind(counts: dict[bool, int]) -> bool | None:
    """Of accepted records labelled with numbers (``True``) and with text (``False``): the kind to reject when
    both occur, the rarer one (numbers on a tie), or None when they do not mix. A JSON ``1`` among ``"pos"`` and
    ``"neg"`` would otherwise become a third class of one row."""
    if not counts.get(True) or not counts.get(False):
        return None
    return counts[True] <= counts[False]


def reject_label_kind(df: DataFrame, *, numbers: bool, counts: dict[bool, int]) -> DataFrame:
    """Reject (``reason``) the records whose label is of the kind ``numbers`` (``label_is_number``)."""
    kind, other = ("a number", "text") if numbers else ("text", "numbers")
    reason = (f"mixed label types: the label is {kind}, as in {counts[numbers]} records, where {counts[not numbers]} "
              f"records have {other} labels")
    return df.withColumn("reason", F.when(F.col("reason").isNull() & (F.col("label_is_number") == F.lit(numbers)),
                                          F.lit(reason)).otherwise(F.col("reason")))
