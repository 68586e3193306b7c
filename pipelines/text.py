"""Pure transforms of the sequence path: read a listed file's records (``file_records``: lines, CSV records,
Parquet rows, numbered), parse records, normalise and tokenise, build the vocabulary, map tokens to ids.

``file_records``, ``parse_record`` and friends are plain Python (testable without Spark); the DataFrame functions
run them on the executors in Arrow batches (``mapInArrow``: records are read into plain lists and parsed into
Arrow arrays, no pandas frame either way). ``parse_record`` is the one record parser: preprocessing and batch
inference (``inference.predict``, label optional) both decode, parse, normalise and tokenise through it.
No transform builds a session, names a path or runs an action.
"""
from __future__ import annotations

import contextlib
import csv
import gc
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines import inputs
from pipelines.duplicates import rows_of
from dataset.rows import is_integer_name
from pipelines.labels import clean_label

PAD, UNK = "<pad>", "<unk>"
RESERVED = (PAD, UNK)          # ids 0 and 1, never given to a token
RAW_TEXT_LIMIT = 500           # characters of a rejected line kept in the rejected output
_WORD = re.compile(r"\w+(?:'\w+)*|[^\w\s]")

PARSED_SCHEMA = T.StructType([
    T.StructField("source", T.StringType(), False),      # <file below the input root>:<line>
    T.StructField("tokens", T.ArrayType(T.StringType()), True),  # the first max_length (ParseParams) only
    T.StructField("n_tokens", T.IntegerType(), True),    # the record's tokens before that cut
    T.StructField("label_name", T.StringType(), True),
    T.StructField("label_is_number", T.BooleanType(), True),  # an integer label (rows.is_integer_name), not text
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
    max_length: int | None = None  # tokens kept per record (the rest is never trained on); None: all


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
    label_is_number: bool = False  # an integer label, in any format, not text: kinds must not mix


def parse_record(raw: bytes, params: ParseParams, header: list[str] | None = None, *,
                 require_label: bool = True, labels: dict | None = None) -> ParsedRecord:
    """One line (a Parquet row arrives as a JSON object) -> its tokens, label name and split key; RejectedRecord
    with the reason when it cannot be used. Preprocessing needs the label (``require_label``); scoring inputs
    usually have none, so predict makes it optional and every other step is the same. ``labels``: a memo of the
    label values met so far by a caller that parses many records with the same ``params`` (``parse_batch``)."""
    record = _to_record(_decode(raw), params, header)
    label, is_number = _label_of(record, params.label_field, require_label, labels)
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
                    require_label: bool = True, labels: dict | None = None) -> tuple[ParsedRecord | None, str | None]:
    """``parse_record`` that never raises: (the parsed record, None) or (None, the reason it cannot be used)."""
    try:
        return parse_record(raw, params, header, require_label=require_label, labels=labels), None
    except RejectedRecord as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad line must never fail the job; keep the reason
        return None, f"parse failed: {type(exc).__name__}: {exc}"


def label_name(record: dict, field: str, *, required: bool = True) -> str | None:
    """The label ``field`` of a parsed record as a class name (``pipelines.labels.clean_label``: strings
    NFC-normalised and stripped, integers and whole floats as digits). Required: an absent, empty or unusable label
    (a boolean, a fraction, a list, too long, a control character) is rejected. Optional: the label as the input
    states it (another number or a boolean as written), None where it states none (absent, null, blank) or not as
    one value (a list or an object)."""
    if field not in record:
        if required:
            raise RejectedRecord(f"missing field: label field {field!r} is absent")
        return None
    label = record[field]
    if label is None or (isinstance(label, str) and not label.strip()):
        if required:
            raise RejectedRecord(f"missing label: {field!r} is empty")
        return None
    name, reason = clean_label(label, what=repr(field))
    if reason is None:
        return name
    if required:
        raise RejectedRecord(reason)
    return None if isinstance(label, (dict, list)) else str(label).strip()


LABEL_MEMO = 4096  # distinct label values a batch's memo holds: a label column of free text must not grow it


def _label_of(record: dict, field: str, required: bool, memo: dict | None) -> tuple[str | None, bool]:
    """(``label_name``, whether it is an integer name), looked up in ``memo`` for a string or number label: a
    batch holds few distinct labels, and cleaning one (``clean_label``) took 1.2 us of a record's 8-10 us parse."""
    value = record.get(field)
    # 1, 1.0 and True are equal keys of a dict, and not the same label
    key = (type(value), value) if memo is not None and type(value) in (str, int, float) else None
    found = memo.get(key) if key is not None else None
    if found is None:
        try:
            label = label_name(record, field, required=required)
            found = (label, label is not None and is_integer_name(label), None)
        except RejectedRecord as exc:
            found = (None, False, str(exc))
        if key is not None and len(memo) < LABEL_MEMO:
            memo[key] = found
    if found[2] is not None:
        raise RejectedRecord(found[2])
    return found[0], found[1]


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


def parse_batch(records: list[RawRecord], *, params: ParseParams):
    """Read records (``read_partition``) -> an Arrow record batch of PARSED_SCHEMA; never raises per record."""
    with without_cyclic_gc():
        rows = _parsed_rows(records, params)
    return arrow_batch(rows, PARSED_SCHEMA)


def arrow_batch(rows: list[tuple], schema: T.StructType):
    """``rows`` (tuples in ``schema``'s column order) as an Arrow record batch of ``schema``, as ``mapInArrow``
    hands it to Spark: built from the columns' Python lists, with no pandas frame on the way (a frame of object
    columns, then Arrow from it, took a fifth of a worker's time parsing texts)."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    arrow = to_arrow_schema(schema)
    columns = list(zip(*rows)) if rows else [()] * len(arrow)
    return pa.RecordBatch.from_arrays([pa.array(c, f.type) for c, f in zip(columns, arrow)], schema=arrow)


@contextlib.contextmanager
def without_cyclic_gc() -> Iterator[None]:
    """Python's cycle collector paused inside (reference counting still frees what a parse drops), and as it was
    after. A batch of parsed records is thousands of young lists and tuples, which the collector walked again and
    again: a fifth of ``parse_batch``'s time. Nothing a parse makes holds a cycle."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _parsed_rows(records: list[RawRecord], params: ParseParams) -> list[tuple]:
    """``parse_batch``'s rows, as tuples of PARSED_SCHEMA's columns."""
    rows = []
    header_of, labels = csv_header(), {}
    for source, _, raw, broken, header in records:
        raw = raw if raw is not None else b""
        parsed, reason = (None, broken) if broken else parse_or_reason(raw, params, header_of(header), labels=labels)
        if parsed is None:
            rows.append((source, None, None, None, None, None, reason,
                         raw.decode("utf-8", errors="replace")[:RAW_TEXT_LIMIT]))
            continue
        tokens = parsed.tokens
        count = len(tokens)
        if params.max_length is not None:  # a 16 MiB record holds millions of tokens
            tokens = tokens[:params.max_length]
        rows.append((source, tokens, count, parsed.label, parsed.label_is_number, parsed.split_key, None, None))
    return rows


def csv_header():
    """A function of a CSV file's header line (bytes, or None for other formats) -> its cell names, parsed once
    per distinct header."""
    parsed: dict[bytes, list[str]] = {}

    def header_of(line) -> list[str] | None:
        if line is None or not isinstance(line, (bytes, bytearray, memoryview)):
            return None
        line = bytes(line)
        if line not in parsed:
            parsed[line] = next(csv.reader([line.decode("utf-8", errors="replace")]), [])
        return parsed[line]

    return header_of


RECORD_SCHEMA = T.StructType([
    T.StructField("source", T.StringType(), False),      # <file below the input root>:<line or row>
    T.StructField("file_path", T.StringType(), False),
    T.StructField("raw", T.BinaryType(), True),          # the line as read (bytes: invalid UTF-8 stays visible)
    T.StructField("broken", T.StringType(), True),       # why the reading already rejects it, else null
    T.StructField("header", T.BinaryType(), True),       # a CSV file's first line, which names its cells
])
BATCH_ROWS, BATCH_BYTES = 4096, 8 << 20  # what a worker holds before it hands records to Spark


class RawRecord(NamedTuple):
    source: str
    file_path: str
    raw: bytes | None
    broken: str | None
    header: bytes | None = None


def file_records(path: str, relpath: str, problem: str | None, *, fmt: str, fields: list[str],
                 max_record_bytes: int | None) -> Iterator[RawRecord]:
    """Every record of one listed file, read as a stream (``pipelines.inputs``): a line of JSON Lines, a CSV record
    (its lines, when a quoted field spans lines; a CSV file's first line is its header, not a record), or a Parquet
    row as a JSON object of ``fields``. ``source`` is '<relpath>:<first line or row>'. A record is ``broken``
    (rejected with that reason before parsing) when it is longer than ``max_record_bytes`` (only its first bytes are
    held), or is a line of a CSV quote that never closes (``csv_records``). A file that cannot be listed as an input
    (``problem``), opened or read to its end gives one broken record for what could not be read (its source: the
    line where reading stopped, ``:1`` for the whole file); the records before a failure stay."""
    if problem:
        yield RawRecord(f"{relpath}:1", path, b"", problem)
        return
    read = [0]  # the last line or row read: where a failure is reported
    try:
        with inputs.open_input(path) as f:
            if fmt == "parquet":
                for read[0], raw in enumerate(inputs.parquet_rows(f, fields), 1):
                    yield _record(relpath, path, read[0], raw, len(raw), max_record_bytes)
                return
            lines = _counted(inputs.lines(f, max_record_bytes, RAW_TEXT_LIMIT), read)
            if fmt == "csv":
                yield from csv_records(lines, relpath, path, max_record_bytes)
            else:
                yield from (_record(relpath, path, x.number, x.raw, x.length, max_record_bytes) for x in lines)
    except Exception as exc:  # noqa: BLE001 - one unreadable file must never fail the job; keep the reason
        yield RawRecord(f"{relpath}:{read[0] + 1}", path, b"", inputs.failure(exc))


def _counted(lines: Iterator[inputs.Line], read: list[int]) -> Iterator[inputs.Line]:
    for line in lines:
        read[0] = line.number
        yield line


def csv_records(lines: Iterator[inputs.Line], relpath: str, path: str, max_bytes: int | None) -> Iterator[RawRecord]:
    """The records of a CSV file's lines (RFC 4180): the first line is the header; a record whose quoted field
    spans lines is one record of those lines (joined by ``\n``), its source its first line. A quote that is still
    open at the end of the file, or after ``max_bytes`` of the record, is unbalanced: each of its lines is rejected
    with that reason, and reading goes on after the line that passed the limit."""
    header, pending, size = None, [], 0

    def unbalanced() -> list[RawRecord]:
        if not pending:
            return []
        reason = (f"broken CSV: unbalanced quote: the quoted field opened at line {pending[0].number} is not closed "
                  f"by the end of the file{'' if max_bytes is None else f' or within max_record_bytes {max_bytes}'}")
        return [RawRecord(f"{relpath}:{x.number}", path, x.raw, reason, header) for x in pending]

    for line in lines:
        if line.number == 1:
            header = line.raw
        elif line.length > len(line.raw):  # over the limit: only its start is held, its quotes cannot be followed
            yield from unbalanced()
            pending, size = [], 0
            yield _record(relpath, path, line.number, line.raw, line.length, max_bytes, header)
        elif not pending:
            if csv_quote_state(line.raw, False):
                pending, size = [line], line.length
            else:
                yield _record(relpath, path, line.number, line.raw, line.length, max_bytes, header)
        else:
            pending.append(line)
            size += line.length + 1
            if not csv_quote_state(line.raw, True):
                joined = b"\n".join(x.raw for x in pending)
                yield _record(relpath, path, pending[0].number, joined, len(joined), max_bytes, header)
                pending, size = [], 0
            elif max_bytes is not None and size > max_bytes:
                yield from unbalanced()
                pending, size = [], 0
    yield from unbalanced()


def _record(relpath: str, path: str, number: int, raw: bytes, length: int, max_bytes: int | None,
            header: bytes | None = None) -> RawRecord:
    if max_bytes is not None and length > max_bytes:
        return RawRecord(f"{relpath}:{number}", path, raw[:RAW_TEXT_LIMIT],
                         f"record too long: {length} bytes, more than max_record_bytes {max_bytes}", header)
    return RawRecord(f"{relpath}:{number}", path, raw, None, header)


def read_partition(files: Iterator[tuple[str, str, str | None]], *, fmt: str, fields: list[str],
                   max_record_bytes: int | None) -> Iterator[list[RawRecord]]:
    """Listed files (path, relpath, problem) -> their records, in lists of bounded rows and bytes."""
    held: list[RawRecord] = []
    size = 0
    for path, relpath, problem in files:
        for record in file_records(path, relpath, problem, fmt=fmt, fields=fields,
                                   max_record_bytes=max_record_bytes):
            held.append(record)
            size += len(record.raw or b"")
            if len(held) >= BATCH_ROWS or size >= BATCH_BYTES:
                yield held
                held, size = [], 0
    if held:
        yield held


def records_batch(records: list[RawRecord]):
    """Read records as an Arrow record batch of RECORD_SCHEMA."""
    return arrow_batch(records, RECORD_SCHEMA)


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


def token_counts(parsed: DataFrame, partitions: int | None = None) -> DataFrame:
    """(token, count) over the accepted records; counted in ``partitions`` tasks after the shuffle where given
    (coalesced: spark.sql.shuffle.partitions tasks of a few hundred tokens each cost more than they count)."""
    counts = (parsed.where(F.col("reason").isNull())
              .select(F.explode("tokens").alias("token"))
              .groupBy("token").count())
    return counts.coalesce(partitions) if partitions else counts


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


def ids_of(tokens, words, *, max_length: int, dtype: str) -> tuple[Any, Any]:
    """``encode_ids`` of every row of an Arrow list<string> array at once: (binary array of the first
    ``max_length`` ids of each row as bytes of ``dtype``, int32 array of how many), null where the row is null.
    ``words``: the vocabulary, an Arrow string array in id order (a token it lacks is unknown, id 1)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(tokens)
    valid = np.asarray(tokens.is_valid().to_numpy(zero_copy_only=False), bool)
    offsets = np.asarray(tokens.offsets.to_numpy(), np.int64)  # into tokens.values, the slice's own offset included
    starts = offsets[:-1]
    keep = np.where(valid, np.minimum(offsets[1:] - starts, max_length), 0)
    positions = rows_of(starts, keep)
    index = pc.index_in(tokens.values, value_set=words).fill_null(1).to_numpy(zero_copy_only=False)
    ids = np.ascontiguousarray(index[positions].astype(dtype))
    ends = (np.r_[0, np.cumsum(keep)] * np.dtype(dtype).itemsize).astype(np.int32)
    packed = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(ends.tobytes()), pa.py_buffer(ids.tobytes())])
    mask = pa.array(~valid)
    return (pc.if_else(mask, pa.scalar(None, pa.binary()), packed),
            pa.array(keep.astype(np.int32), pa.int32(), mask=~valid))


def map_to_ids(parsed: DataFrame, *, vocabulary, max_length: int, dtype: str) -> DataFrame:
    """Accepted records -> ``tokens`` (ids, truncated to ``max_length``, as bytes of ``dtype``) and their number,
    ``length`` (``ids_of``: array operations on Arrow batches, ``mapInArrow``).

    ``vocabulary`` is a list of tokens in id order, or a Spark Broadcast of one (large vocabularies)."""
    out_schema = T.StructType([f for f in parsed.schema.fields if f.name != "tokens"] +
                              [T.StructField("tokens", T.BinaryType(), True), T.StructField("length", T.IntegerType(), True)])
    names = out_schema.names

    def encode(batches: Iterator) -> Iterator:
        import pyarrow as pa

        words = pa.array(vocabulary.value if hasattr(vocabulary, "value") else vocabulary, pa.string())
        for batch in batches:
            ids, lengths = ids_of(batch.column("tokens"), words, max_length=max_length, dtype=dtype)
            columns = {name: batch.column(name) for name in batch.schema.names if name != "tokens"}
            yield pa.RecordBatch.from_arrays([*columns.values(), ids, lengths], names=names)

    return parsed.mapInArrow(encode, schema=out_schema)
