"""Label maps shared by every dataset kind: names -> contiguous indices, and the transform that applies them."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def _sort_key(name: str):
    """Integers in numeric order ("2" before "10"), then everything else alphabetically."""
    stripped = name.strip()
    is_int = stripped.lstrip("-").isdigit()
    return (0, int(stripped), "") if is_int else (1, 0, name)


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
