"""Label maps shared by every dataset kind: names -> contiguous indices, and the transform that applies them."""
from __future__ import annotations

import json
import unicodedata

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from dataset.rows import is_integer_name
from pipelines.session import constant_map

# A class name prints in summaries, reports and the manifest, and names a folder of image inputs, which file systems
# cap at 255 bytes. 256 characters is above any real class name and far below the 10 KB of text a label column
# holds when it is the wrong column.
MAX_LABEL_CHARS = 256

# Characters that make one name print as two lines or as nothing: the C0 and C1 controls (newline, tab, NUL, DEL)
# and Unicode's line and paragraph separators. Format characters (Cf) stay: the zero-width (non-)joiner is part of
# the spelling of Persian and Indic words and of emoji sequences.
_CONTROL_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})

_JSON_TYPES = {bool: "a JSON boolean", float: "a JSON number that is not an integer", list: "a JSON array",
               dict: "a JSON object"}


def clean_label(value, *, what: str = "the label") -> tuple[str | None, str | None]:
    """A label as its input states it (a JSON value, a folder name) -> (the class name, None) or (None, the reason
    it is rejected). Text is NFC-normalised and stripped, so the NFC and NFD spellings of a name, or ``" 3"`` and
    ``"3"``, are one class; integers (and whole floats: JSON writers turn 1 into 1.0) are their digits. ``what``
    names the label in the reason (``'label'``, ``the class folder name``); the reason's category (before the
    first colon) never holds the value, so rejected records group into few categories."""
    if isinstance(value, int) and not isinstance(value, bool):  # bool is an int subclass: JSON true is no class
        name = str(value)
    elif isinstance(value, float) and value.is_integer():
        name = str(int(value))
    elif isinstance(value, str):
        name = unicodedata.normalize("NFC", value).strip()
    elif value is None:
        return None, f"missing label: {what} is null"
    else:
        kind = next((k for t, k in _JSON_TYPES.items() if isinstance(value, t)), f"a {type(value).__name__}")
        shown = json.dumps(value, default=repr)[:80]
        return None, f"unmappable label: {what} is {shown}, {kind}; a label is a string or an integer"
    if not name:
        return None, f"missing label: {what} is empty"
    if len(name) > MAX_LABEL_CHARS:
        return None, f"label too long: {what} has {len(name)} characters, the limit is {MAX_LABEL_CHARS}"
    bad = next((c for c in name if unicodedata.category(c) in _CONTROL_CATEGORIES), None)
    if bad is not None:
        escaped = bad.encode("unicode_escape").decode("ascii")
        return None, f"label has a control character: {escaped} in {what}"
    return name, None


def _sort_key(name: str):
    """Integers in numeric order ("2" before "10"), then everything else alphabetically. Equal numbers ("1", "01")
    are ordered by their text, so the map never depends on the order the names came in (or on PYTHONHASHSEED)."""
    stripped = name.strip()
    if is_integer_name(stripped):
        return (0, int(stripped), name)
    return (1, 0, name)


def class_map(class_names) -> dict[str, int]:
    """Label names -> contiguous indices in a fixed order, so the same names always give the same map."""
    return {name: idx for idx, name in enumerate(sorted(set(class_names), key=_sort_key))}


def assign_labels(df: DataFrame, *, class_to_index: dict[str, int], name_col: str = "class_name") -> DataFrame:
    """Add the integer ``label`` from the map; a name missing from the map rejects the row (``reason``), never drops it."""
    label = constant_map(class_to_index, "string", "int")[F.col(name_col)]
    unmapped = F.concat(F.lit(f"missing label: {name_col} "), F.coalesce(F.col(name_col), F.lit("(null)")),
                        F.lit(" is not in the label map"))
    label = label.cast("int")
    # one withColumns (each withColumn has Spark analyse the whole plan again: 16 ms apiece on the image job's)
    return df.withColumns({"label": label, "reason": F.when(F.col("reason").isNull() & label.isNull(), unmapped)
                                                      .otherwise(F.col("reason"))})


def mixed_label_kind(counts: dict[bool, int]) -> bool | None:
    """Of accepted records labelled with numbers (``True``) and with text (``False``): the kind to reject when
    both occur, the rarer one (numbers on a tie), or None when they do not mix. A ``1`` among ``"pos"`` and
    ``"neg"``, or a ``positive`` among a CSV column of 0, 1 and 2, would otherwise become a class of one row."""
    if not counts.get(True) or not counts.get(False):
        return None
    return counts[True] <= counts[False]


def reject_label_kind(df: DataFrame, *, numbers: bool, counts: dict[bool, int]) -> DataFrame:
    """Reject (``reason``) the records whose label is of the kind ``numbers`` (``label_is_number``)."""
    kind, other = ("a number", "text labels") if numbers else ("text", "integer labels")
    rare, common = counts[numbers], counts[not numbers]
    reason = (f"mixed label types: the label is {kind}, as in {rare} record{'s' if rare != 1 else ''}, where "
              f"{common} record{'s have' if common != 1 else ' has'} {other}")
    return df.withColumn("reason", F.when(F.col("reason").isNull() & (F.col("label_is_number") == F.lit(numbers)),
                                          F.lit(reason)).otherwise(F.col("reason")))
