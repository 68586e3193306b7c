"""Pure transforms of the sequence path: number lines, parse records, normalise and tokenise, build the vocabulary,
map tokens to ids.

``parse_record`` and friends are plain Python (testable without Spark); the DataFrame functions run them on the
executors in Arrow batches through ``mapInPandas``. ``parse_record`` is the one record parser: preprocessing and
batch inference (``inference.predict``, label optional) both decode, parse, normalise and tokenise through it.
No transform builds a session, names a path or runs an action.
"""
from __future__ import annotations

import csv
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from core.paths import normalise_url

PAD, UNK = "<pad>", "<unk>"
RESERVED = (PAD, UNK)          # ids 0 and 1, never given to a token
RAW_TEXT_LIMIT = 500           # characters of a rejected line kept in the rejected output
_WORD = re.compile(r"\w+(?:'\w+)*|[^\w\s]")

PARSED_SCHEMA = T.StructType([
    T.StructField("source", T.StringType(), False),      # <file below the input root>:<line>
    T.StructField("tokens", T.ArrayType(T.StringType()), True),
    T.StructField("label_name", T.StringType(), True),
    T.StructField("label_is_number", T.BooleanType(), True),  # the label was a JSON number, not text
    T.StructField("split_key", T.StringType(), True),    # what decides the split: the normalised content
    T.StructField("reason", T.StringType(), True),
    T.StructField("raw_text", T.StringType(), True),      # the line as read (for rejected records)
])


@dataclass(frozen=True)
class ParseParams:
    fmt: str                    # jsonl | csv | parquet (parquet rows arrive as JSON objects)
    text_field: str
    label_field: str
    tokens_field: str | None    # an already tokenised integer column instead of text
    tokenizer: str              # word | char
    lowercase: bool


class RejectedRecord(Exception):
    """Raised while parsing one record; its message becomes the rejection reason."""


def normalise(text: str, *, lowercase: bool) -> str:
    """Unicode NFKC, optional lower-casing, whitespace runs collapsed to one space."""
    text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    return " ".join(text.split())


def tokenise(text: str, tokenizer: str) -> list[str]:
    """Word level: words (with inner apostrophes) and single punctuation marks. Character level: every character."""
    if tokenizer == "word":
        return _WORD.findall(text)
    if tokenizer == "char":
        return list(text)
    raise ValueError(f"tokenizer {tokenizer!r} is not word or char")


class ParsedRecord(NamedTuple):
    tokens: list[str]
    label: str | None    # the class name; None only where the label is optional and the record states none
    split_key: str       # the normalised text (or the token ids joined): what decides the split
    label_is_number: bool = False  # the label was a number (JSON, Parquet), not text: kinds must not mix


def parse_record(raw: bytes, params: ParseParams, header: list[str] | None = None, *,
                 require_label: bool = True) -> ParsedRecord:
    """One line (a Parquet row arrives as a JSON object) -> its tokens, label name and split key; RejectedRecord
    with the reason when it cannot be used. Preprocessing needs the label (``require_label``); scoring inputs
    usually have none, so predict makes it optional and every other step is the same."""
    record = _to_record(_decode(raw), params, header)
    label = label_name(record, params.label_field, required=require_label)
    value = record.get(params.label_field)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if params.tokens_field:
        tokens = _given_tokens(_field(record, params.tokens_field, "tokens"), params.tokens_field)
        return ParsedRecord(tokens, label, " ".join(tokens), is_number)
    text = _field(record, params.text_field, "text")
    if not isinstance(text, str):
        raise RejectedRecord(f"wrong type: text field {params.text_field!r} is {type(text).__name__}, not a string")
    text = normalise(text, lowercase=params.lowercase)
    tokens = tokenise(text, params.tokenizer)
    if not tokens:
        raise RejectedRecord("empty text: no tokens after normalisation")
    return ParsedRecord(tokens, label, text, is_number)


def parse_or_reason(raw: bytes, params: ParseParams, header: list[str] | None = None, *,
                    require_label: bool = True) -> tuple[ParsedRecord | None, str | None]:
    """``parse_record`` that never raises: (the parsed record, None) or (None, the reason it cannot be used)."""
    try:
        return parse_record(raw, params, header, require_label=require_label), None
    except RejectedRecord as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad line must never fail the job; keep the reason
        return None, f"parse failed: {type(exc).__name__}: {exc}"


def label_name(record: dict, field: str, *, required: bool = True) -> str | None:
    """The label ``field`` of a parsed record as a class name: strings stripped, integers and whole floats (JSON
    writers turn 1 into 1.0) as digits. Required: an absent, empty or unmappable label is rejected. Optional: the
    label as the input states it (another number as written), None where it states none (absent, null, blank) or
    not as one value (a list or an object)."""
    if field not in record:
        if required:
            raise RejectedRecord(f"missing field: label field {field!r} is absent")
        return None
    label = record[field]
    if label is None or (isinstance(label, str) and not label.strip()):
        if required:
            raise RejectedRecord(f"missing label: {field!r} is empty")
        return None
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    if required and isinstance(label, (dict, list, float)):  # the floats left here are not whole numbers
        raise RejectedRecord(f"unmappable label: {field!r} is {json.dumps(label)[:80]}")
    return None if isinstance(label, (dict, list)) else str(label).strip()


def _decode(raw: bytes) -> str:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RejectedRecord(f"invalid UTF-8: byte {exc.start}: {exc.reason}") from None
    if not line.strip():
        raise RejectedRecord("empty line")
    return line


def _field(record: dict, name: str, what: str) -> Any:
    if name not in record:
        raise RejectedRecord(f"missing field: {what} field {name!r} is absent")
    return record[name]


def _to_record(line: str, params: ParseParams, header: list[str] | None) -> dict:
    if params.fmt in ("jsonl", "parquet"):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RejectedRecord(f"broken JSON: {exc.msg} at column {exc.colno}") from None
        if not isinstance(record, dict):
            raise RejectedRecord(f"broken JSON: a line must hold an object, found {type(record).__name__}")
        return record
    if params.fmt == "csv":
        try:
            cells = next(csv.reader([line], strict=True))
        except csv.Error as exc:
            raise RejectedRecord(f"broken CSV: {exc}") from None
        if header is None:
            raise RejectedRecord("broken CSV: the file has no header line")
        if len(cells) != len(header):
            raise RejectedRecord(f"broken CSV: {len(cells)} cells, the header has {len(header)}")
        return dict(zip(header, cells))
    raise ValueError(f"format {params.fmt!r} is not jsonl, csv or parquet")


def _given_tokens(value: Any, name: str) -> list[str]:
    if isinstance(value, str):  # CSV cells hold "3 17 42" or "[3, 17, 42]"
        value = [v for v in re.split(r"[\s,\[\]]+", value) if v]
        try:
            value = [int(v) for v in value]
        except ValueError:
            raise RejectedRecord(f"wrong type: tokens field {name!r} holds a non-integer") from None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise RejectedRecord(f"wrong type: tokens field {name!r} is not a list of non-negative integers")
    if not value:
        raise RejectedRecord(f"empty text: tokens field {name!r} is empty")
    return [str(v) for v in value]


def parse_batch(batch: pd.DataFrame, *, params: ParseParams, headers: dict[str, list[str]]) -> pd.DataFrame:
    """(source, file_path, raw[, broken]) rows -> PARSED_SCHEMA rows; never raises per record. ``broken`` is why
    the reading rejected a record already (``pipelines.storage.read_records``); null when it did not."""
    out: dict[str, list] = {name: [] for name in PARSED_SCHEMA.names}
    for source, file_path, raw, broken in zip(batch["source"], batch["file_path"], batch["raw"], broken_of(batch)):
        parsed, reason = (None, broken) if broken else parse_or_reason(bytes(raw), params, headers.get(file_path))
        tokens, label, key, is_number = parsed or (None, None, None, None)
        raw_text = bytes(raw).decode("utf-8", errors="replace")[:RAW_TEXT_LIMIT] if reason else None
        for name, value in zip(PARSED_SCHEMA.names, (source, tokens, label, is_number, key, reason, raw_text)):
            out[name].append(value)
    return pd.DataFrame(out, columns=PARSED_SCHEMA.names, dtype=object)  # None stays None under pandas 3


def broken_of(batch: pd.DataFrame) -> list:
    """The ``broken`` column of a batch of records (why the reading rejected each one), all null when absent.
    A null is None whatever pandas made of it (pandas 3's string columns hold NaN for null, which is truthy)."""
    if "broken" not in batch:
        return [None] * len(batch)
    return [value if isinstance(value, str) else None for value in batch["broken"]]


def parse_lines(lines: DataFrame, *, params: ParseParams, headers: dict[str, list[str]]) -> DataFrame:
    """(source, file_path, raw binary, broken) -> PARSED_SCHEMA, parsed in Arrow batches on the executors."""
    def parse_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield parse_batch(batch, params=params, headers=headers)

    return lines.select("source", "file_path", "raw", "broken").mapInPandas(parse_partition, schema=PARSED_SCHEMA)


QUOTE_STATES = ("quoted_start_c", "quoted_end_c", "quoted_start_o", "quoted_end_o")


def number_lines(lines: DataFrame, *, csv_quotes: bool = False) -> DataFrame:
    """Rows of a text scan (file_path, block_start, raw, ...) in scan order -> + ``index_in_block`` (0-based).

    Spark splits big files into blocks; within a block, and within a partition, lines arrive in file order.
    ``with_line_numbers`` turns (block, index in block) into the line number in the file. With ``csv_quotes``,
    also whether each line starts and ends inside a quoted CSV field, for both states its block may start in
    (``QUOTE_STATES``: ``_c`` the block starts outside a quoted field, ``_o`` inside; ``block_quote_states`` tells
    which), since a block's state depends on the blocks before it.
    """
    extra = [T.StructField("index_in_block", T.LongType(), False)]
    extra += [T.StructField(name, T.BooleanType(), False) for name in QUOTE_STATES] if csv_quotes else []
    schema = T.StructType(lines.schema.fields + extra)

    def number(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        current, count, states = None, 0, (False, True)
        for batch in batches:
            index = np.empty(len(batch), dtype=np.int64)
            quoted = np.empty((len(batch), 4), dtype=bool)
            for i, key in enumerate(zip(batch["file_path"], batch["block_start"])):
                if key != current:
                    current, count, states = key, 0, (False, True)
                index[i] = count
                count += 1
                if csv_quotes:
                    ends = tuple(csv_quote_state(bytes(batch["raw"].iat[i]), s) for s in states)
                    quoted[i] = (states[0], ends[0], states[1], ends[1])
                    states = ends
            columns = dict(zip(QUOTE_STATES, quoted.T)) if csv_quotes else {}
            yield batch.assign(index_in_block=index, **columns)

    return lines.mapInPandas(number, schema=schema)


def csv_quote_state(raw: bytes, quoted: bool) -> bool:
    """Whether a CSV line ends inside a quoted field (its line break then belongs to the field), given whether it
    starts inside one. A quote opens a field only at the field's start, ``""`` inside one is a quote."""
    if b'"' not in raw:
        return quoted
    field_start, i = not quoted, 0
    while i < len(raw):
        c = raw[i]
        if quoted and c == 0x22:
            if raw[i + 1:i + 2] == b'"':
                i += 1
            else:
                quoted = False
        elif not quoted and c == 0x22 and field_start:
            quoted = True
        field_start = not quoted and c == 0x2C
        i += 1
    return quoted


def block_quote_states(blocks: list[tuple[str, int, bool, bool]]) -> dict[tuple[str, int], bool]:
    """[(file, block_start, ends quoted if the block starts outside, ... if inside)] -> whether each block starts
    inside a quoted CSV field (a file starts outside)."""
    states, quoted, last_file = {}, False, None
    for file_path, block_start, end_c, end_o in sorted(blocks):
        if file_path != last_file:
            quoted, last_file = False, file_path
        states[(file_path, block_start)] = quoted
        quoted = end_o if quoted else end_c
    return states


def block_line_offsets(block_counts: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """[(file, block_start, lines in block)] -> [(file, block_start, lines in the file before the block)]."""
    offsets, before, last_file = [], 0, None
    for file_path, block_start, lines in sorted(block_counts):
        if file_path != last_file:
            before, last_file = 0, file_path
        offsets.append((file_path, block_start, before))
        before += lines
    return offsets


def line_offsets(numbered: DataFrame) -> DataFrame:
    """``block_line_offsets`` in Spark: per block of each file, the lines before it (blocks start outside a quoted
    field: not for CSV, whose quote states need ``block_quote_states``). Joined by ``with_line_numbers``, it is
    computed within the action that reads the records (its broadcast), with no collect of its own."""
    from pyspark.sql import Window

    blocks = numbered.groupBy("file_path", "block_start").agg(F.count(F.lit(1)).alias("lines"))
    before = F.sum("lines").over(Window.partitionBy("file_path").orderBy("block_start")
                                 .rowsBetween(Window.unboundedPreceding, -1))
    return blocks.select("file_path", "block_start", F.coalesce(before, F.lit(0)).cast("long").alias("lines_before"),
                         F.lit(False).alias("open_before"))


def with_line_numbers(numbered: DataFrame, offsets: DataFrame, *, root_url: str) -> DataFrame:
    """Add ``line`` (1-based, in the file) and ``source`` = '<path below root_url>:<line>'."""
    prefix = normalise_url(root_url).rstrip("/") + "/"
    path = "regexp_replace(file_path, '^file:/+', 'file:/')"
    relative = F.when(F.expr(path).startswith(prefix), F.expr(f"substring({path}, {len(prefix) + 1})"))
    line = F.col("lines_before") + F.col("index_in_block") + 1
    return (numbered.join(F.broadcast(offsets), ["file_path", "block_start"])
            .withColumn("line", line)
            .withColumn("source", F.concat(F.coalesce(relative, F.col("file_path")), F.lit(":"), line.cast("string"))))


def token_counts(parsed: DataFrame) -> DataFrame:
    """(token, count) over the accepted records."""
    return (parsed.where(F.col("reason").isNull())
            .select(F.explode("tokens").alias("token"))
            .groupBy("token").count())


def top_tokens(counts: DataFrame, *, vocab_size: int, min_count: int) -> DataFrame:
    """The most frequent tokens (ties by token, so the same data always gives the same vocabulary)."""
    return (counts.where(F.col("count") >= min_count)
            .orderBy(F.col("count").desc(), F.col("token").asc())
            .limit(max(vocab_size - len(RESERVED), 0)))


def make_vocabulary(tokens_by_frequency: list[str]) -> list[str]:
    """Id order: the reserved tokens first (padding 0, unknown 1), then tokens by frequency."""
    return list(RESERVED) + [t for t in tokens_by_frequency if t not in RESERVED]


def token_dtype(vocab_size: int) -> str:
    """Token ids are stored as little-endian uint16 when the vocabulary allows it, else int32."""
    return "<u2" if vocab_size <= 65536 else "<i4"


def encode_ids(tokens: list[str], index: dict[str, int], max_length: int, dtype: str) -> tuple[bytes, int]:
    ids = np.fromiter((index.get(t, 1) for t in tokens[:max_length]), dtype=np.int64)
    return ids.astype(dtype).tobytes(), len(ids)


def map_to_ids(parsed: DataFrame, *, vocabulary, max_length: int, dtype: str) -> DataFrame:
    """Accepted records -> ``tokens`` (ids, truncated to ``max_length``, as bytes of ``dtype``) and true ``length``.

    ``vocabulary`` is a list of tokens in id order, or a Spark Broadcast of one (large vocabularies)."""
    out_schema = T.StructType([f for f in parsed.schema.fields if f.name != "tokens"] +
                              [T.StructField("tokens", T.BinaryType(), True), T.StructField("length", T.IntegerType(), True)])

    def encode(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        words = vocabulary.value if hasattr(vocabulary, "value") else vocabulary
        index = {token: i for i, token in enumerate(words)}
        for batch in batches:
            pairs = [encode_ids(list(t), index, max_length, dtype) if t is not None else (None, None)
                     for t in batch["tokens"]]
            yield batch.drop(columns=["tokens"]).assign(tokens=[p[0] for p in pairs],
                                                        length=pd.array([p[1] for p in pairs], dtype="Int32"))

    return parsed.mapInPandas(encode, schema=out_schema)
