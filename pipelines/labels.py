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
