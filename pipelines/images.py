"""Pure transforms of the image path: decode, convert, resize and encode files; attach labels.

``to_array`` and ``image_encoder`` prepare one file, for preprocessing and batch inference (``inference.predict``)
alike; ``decode_file_batch`` reads and prepares listed files in plain pandas/Pillow (testable without Spark);
``decode_images`` runs it (``decode_arrow_batch``)
on the executors in Arrow batches through ``mapInArrow``. No transform here builds a session, names a path or runs an
action.
"""
from __future__ import annotations

import functools
import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame

from core.paths import normalise_url
from pipelines import inputs
from pipelines.duplicates import NEAR_TABLES, near_keys
from pipelines.labels import clean_label
from pipelines.schemas import DECODED_SCHEMA, image_unischema


@dataclass(frozen=True)
class DecodeParams:
    image_size: int
    channels: int              # 1 (grayscale "L") or 3 (RGB)
    codec: str                 # png | jpeg | raw, see pipelines.schemas.IMAGE_CODECS
    max_pixels: int            # width*height above this is rejected as absurd (decompression bombs)
    min_side: int              # a side below this is rejected as absurd (1x4000 strips, empty images)
    max_aspect_ratio: float    # long side / short side above this is rejected
    max_file_bytes: int | None = None  # larger files are rejected unread (file_outcome); None: no limit
    thumbnails: bool = False   # also make each image's thumbnail (the near-duplicate search's view of it)


class RejectedImage(Exception):
    """Raised inside the decode step; its message becomes the record's rejection reason."""


def split_relpath(path: str, root_url: str) -> tuple[str | None, str | None]:
    """(relative path, class folder) of a file URL below ``root_url``; the class is None for files in the root.
    ``path`` is in the one spelling of ``core.paths`` (``pipelines.inputs``' listing); it is not decoded, so
    ``a%41.png`` stays ``a%41.png``."""
    prefix = normalise_url(root_url).rstrip("/") + "/"
    path = normalise_url(path)
    if not path.startswith(prefix):
        return None, None
    relpath = path[len(prefix):]
    head, sep, _ = relpath.partition("/")
    return relpath, (head if sep else None)


_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _message(exc: Exception) -> str:
    """Pillow's message without the repr of the in-memory file it read (``<_io.BytesIO object at 0x7f...>``), so
    the same bad file gets the same reason in every run."""
    return _OBJECT_REPR.sub("", str(exc))


# The formats an input image may be in: Pillow opens about 40, EPS through Ghostscript (an interpreter) where it is
# installed; a file of any other format is rejected as not an image, whatever its name says.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")


def to_array(content: bytes, params: DecodeParams) -> np.ndarray:
    """Decode one file's bytes to a uint8 array of shape (N, N) or (N, N, 3); RejectedImage if unusable."""
    from PIL import Image, UnidentifiedImageError

    if not content:
        raise RejectedImage("empty file: zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(content), formats=IMAGE_FORMATS)
            width, height = img.size
            _check_dimensions(width, height, params)
            img.load()
    except RejectedImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RejectedImage(f"not a readable image: {_message(exc)} (formats read: {', '.join(IMAGE_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow reports truncation and corruption as these
        raise RejectedImage(f"corrupt or truncated image: {_message(exc)}") from None
    img = _to_mode(img, "L" if params.channels == 1 else "RGB")
    img = img.resize((params.image_size, params.image_size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _check_dimensions(width: int, height: int, params: DecodeParams) -> None:
    if width * height > params.max_pixels:
        raise RejectedImage(f"absurd dimensions: {width}x{height} is more than {params.max_pixels} pixels")
    if min(width, height) < params.min_side:
        raise RejectedImage(f"absurd dimensions: {width}x{height} has a side below {params.min_side} pixels")
    if max(width, height) / min(width, height) > params.max_aspect_ratio:
        raise RejectedImage(f"absurd dimensions: {width}x{height} has an aspect ratio above {params.max_aspect_ratio}")


def _to_mode(img, mode: str):
    """Convert colour mode; transparent pixels are composited on white rather than turning black."""
    from PIL import Image

    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = Image.fromarray((np.asarray(img, dtype=np.float64) / 256).clip(0, 255).astype(np.uint8))
    return img.convert(mode)


THUMBNAIL_SIDE = 8  # the near-duplicate search's view of an image: its 8x8 grey thumbnail (pipelines.duplicates)


LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 grey, as Pillow's convert("L")


def thumbnail(array: np.ndarray) -> bytes:
    """The 8x8 grey thumbnail (64 bytes, box-averaged) of a prepared image: resized and re-encoded copies of one
    picture give thumbnails within a few grey levels of each other, whatever the noise of their pixels."""
    return thumbnails([array])[0]


def thumbnails(arrays: list[np.ndarray | None]) -> list[bytes | None]:
    """``thumbnail`` of each prepared image (None stays None), with array operations over all images of one shape
    whose sides divide by 8 (a job's images are all of one: 2.6 us a 32 x 32 RGB image in batches of 256, where
    Pillow's per image calls took 20); other shapes through Pillow's box filter."""
    from PIL import Image

    out: list[bytes | None] = [None] * len(arrays)
    shapes: dict[tuple, list[int]] = {}
    for i, array in enumerate(arrays):
        if array is not None:
            shapes.setdefault(array.shape, []).append(i)
    side = THUMBNAIL_SIDE
    for shape, rows in shapes.items():
        height, width = shape[:2]
        if height % side or width % side or len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] != 3):
            for i in rows:
                grey = Image.fromarray(arrays[i]).convert("L")
                out[i] = grey.resize((side, side), Image.BOX).tobytes()
            continue
        stack = np.stack([arrays[i] for i in rows]).astype(np.float32)
        grey = (stack.reshape(-1, 3) @ LUMA).reshape(stack.shape[:3]) if len(shape) == 3 else stack
        # each block's mean as two matrix products (rows, then columns): 17x faster than a mean over two
        # strided axes, which took 5 us of the 7 an image cost
        small = _block_means(height, side) @ grey @ _block_means(width, side).T
        packed = np.rint(small).clip(0, 255).astype(np.uint8).reshape(len(rows), side * side)
        for k, i in enumerate(rows):
            out[i] = packed[k].tobytes()
    return out


@functools.lru_cache(maxsize=8)
def _block_means(length: int, blocks: int) -> np.ndarray:
    """(blocks, length) float32: row k averages the k-th of ``blocks`` equal runs of ``length`` values."""
    return np.kron(np.eye(blocks, dtype=np.float32), np.full((1, length // blocks), blocks / length, np.float32))


def pixel_fingerprint(array: np.ndarray) -> int:
    """The fingerprint of a prepared image (``dataset.rows.FINGERPRINT``): a signed 64-bit BLAKE2b of its shape and
    pixels, so the same picture has one fingerprint whatever file, format or codec it came in or is stored with."""
    digest = hashlib.blake2b(repr(array.shape).encode() + array.tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def stored_fingerprints(params: DecodeParams):
    """A function of the stored ``image`` column -> its pixels' fingerprints (an Arrow UDF: rows carried from a
    snapshot written before fingerprints are fingerprinted once, decoded with the dataset's codec)."""
    from pyspark.sql.functions import pandas_udf

    field = image_unischema(params.image_size, params.channels, params.codec).fields["image"]

    @pandas_udf("long")
    def fingerprints(stored: pd.Series) -> pd.Series:
        return pd.Series([None if b is None else pixel_fingerprint(field.codec.decode(field, bytes(b)))
                          for b in stored], dtype="Int64")

    return fingerprints


def image_preparer(params: DecodeParams) -> Callable[[bytes], tuple[tuple[bytes, np.ndarray | None, int] | None,
                                                                      str | None]]:
    """A function of one file's bytes that never raises: ((the image as a dataset of ``params`` stores it: decoded
    and checked by ``to_array``, then encoded with ``params.codec``; its pixels where ``params.thumbnails`` (for
    ``thumbnails``), else None; its ``pixel_fingerprint``), None) or (None, why the file is unusable)."""
    field = image_unischema(params.image_size, params.channels, params.codec).fields["image"]

    def prepare(content: bytes) -> tuple[tuple[bytes, np.ndarray | None, int] | None, str | None]:
        try:
            array = to_array(content, params)
            return (bytes(field.codec.encode(field, array)), array if params.thumbnails else None,
                    pixel_fingerprint(array)), None
        except RejectedImage as exc:
            return None, str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad file must never fail the job; keep the reason
            return None, f"decode failed: {type(exc).__name__}: {exc}"

    return prepare


def image_encoder(params: DecodeParams) -> Callable[[bytes], tuple[bytes | None, str | None]]:
    """``image_preparer`` without the pixels: (the stored image, None) or (None, why the file is unusable)."""
    prepare = image_preparer(params)

    def encode(content: bytes) -> tuple[bytes | None, str | None]:
        prepared, reason = prepare(content)
        return (prepared[0] if prepared else None), reason

    return encode


BATCH_ROWS, BATCH_BYTES = 256, 32 << 20  # what a worker holds before it hands decoded images to Spark


def file_outcome(path: str, size: int, problem: str | None, *, params: DecodeParams,
                 encode: Callable[[bytes], tuple[Any, str | None]]) -> tuple[Any, str | None]:
    """(what ``encode`` makes of the file, None) or (None, why not) of one listed file, read here
    (``pipelines.inputs``): a file the listing found unusable, an empty file or one above ``params.max_file_bytes``
    is rejected unread."""
    if problem:
        return None, problem
    if size == 0:
        return None, "empty file: zero bytes"
    if params.max_file_bytes is not None and size > params.max_file_bytes:
        return None, f"file too large: {size} bytes, more than max_file_bytes {params.max_file_bytes}"
    try:
        content = inputs.read_bytes(path, params.max_file_bytes)
    except Exception as exc:  # noqa: BLE001 - one unreadable file must never fail the job; keep the reason
        return None, inputs.failure(exc)
    return encode(content)


def _decode_rows(paths, sizes, problems, *, root_url: str, params: DecodeParams) -> Iterator[dict[str, list]]:
    """Listed files (path, size, problem) -> columns of DECODED_SCHEMA (lists), in chunks of bounded rows and
    bytes. Never raises per file."""
    prepare = image_preparer(params)
    out: dict[str, list] = {name: [] for name in DECODED_COLUMNS if name != "near_keys"}
    held = 0
    for path, size, problem in zip(paths, sizes, problems):
        relpath, folder = split_relpath(path, root_url)
        class_name, label_problem = None, None
        if folder is not None:  # the folder as spelled on disk -> one class name (NFC, stripped), or why none
            class_name, label_problem = clean_label(folder, what="the class folder name")
        prepared, reason = None, None
        if relpath is None:
            reason = f"outside the input root: {root_url}"
        elif label_problem:
            reason = label_problem
        elif class_name is None and not (isinstance(problem, str) and problem):
            reason = "missing label: file is directly in the input root, not in a class folder"
        else:
            prepared, reason = file_outcome(path, int(size), problem if isinstance(problem, str) else None,
                                            params=params, encode=prepare)
        image, pixels, fingerprint = prepared or (None, None, None)
        for key, value in zip(out, (path, relpath, class_name, image, reason, pixels, fingerprint)):
            out[key].append(value)
        held += len(image or b"") + (pixels.nbytes if pixels is not None else 0)
        if len(out["path"]) >= BATCH_ROWS or held >= BATCH_BYTES:
            yield _with_near_keys(out)
            out, held = {key: [] for key in out}, 0
    if out["path"]:
        yield _with_near_keys(out)


def _with_near_keys(out: dict[str, list]) -> dict[str, list]:
    """The chunk with each image's thumbnail (its pixels were held under ``thumbnail``) and the thumbnail's
    near-duplicate search keys (``pipelines.duplicates.near_keys``), computed for the whole chunk at once, the
    keys as an Arrow list array (null where no thumbnail)."""
    import pyarrow as pa

    out["thumbnail"] = thumbs = thumbnails(out["thumbnail"])
    rows = np.array([t is not None for t in thumbs], bool)
    computed = np.zeros((len(thumbs), NEAR_TABLES), np.int64)
    if rows.any():
        computed[rows] = near_keys(np.frombuffer(b"".join(t for t in thumbs if t is not None),
                                                 np.uint8).reshape(int(rows.sum()), -1))
    offsets = np.arange(len(thumbs) + 1, dtype=np.int32) * NEAR_TABLES
    out["near_keys"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(computed.ravel()),
                                                mask=pa.array(~rows))
    return out


DECODED_COLUMNS = tuple(DECODED_SCHEMA.names)


def decode_file_batch(batch: pd.DataFrame, *, root_url: str, params: DecodeParams) -> Iterator[pd.DataFrame]:
    """One batch of listed files (path, size, problem) as pandas -> rows of DECODED_SCHEMA, in frames of bounded
    rows and bytes (``decode_arrow_batch`` is the same in Arrow, what the executors run). Never raises per file."""
    for out in _decode_rows(batch["path"], batch["size"], batch["problem"], root_url=root_url, params=params):
        out["near_keys"] = out["near_keys"].to_pylist()
        yield pd.DataFrame(out, columns=list(out), dtype=object)  # None stays None (pandas 3 makes str columns NaN)


def _arrow_schema():
    import pyarrow as pa

    return pa.schema([pa.field("path", pa.string(), nullable=False), pa.field("relpath", pa.string()),
                      pa.field("class_name", pa.string()), pa.field("image", pa.binary()),
                      pa.field("reason", pa.string()), pa.field("thumbnail", pa.binary()),
                      pa.field("fingerprint", pa.int64()), pa.field("near_keys", pa.list_(pa.int64()))])


def decode_arrow_batch(batch, *, root_url: str, params: DecodeParams) -> Iterator:
    """``decode_file_batch`` on an Arrow record batch of listed files, yielding Arrow record batches of
    DECODED_SCHEMA: no pandas frame either way (``mapInArrow``)."""
    import pyarrow as pa

    schema = _arrow_schema()
    columns = {name: batch.column(name).to_pylist() for name in ("path", "size", "problem")}
    for out in _decode_rows(columns["path"], columns["size"], columns["problem"], root_url=root_url,
                            params=params):
        yield pa.RecordBatch.from_arrays([out[f.name] if isinstance(out[f.name], pa.Array) else pa.array(out[f.name], f.type)
                                          for f in schema], schema=schema)


def decode_images(files: DataFrame, *, root_url: str, params: DecodeParams) -> DataFrame:
    """Listed files (``reading.files_frame``) -> DECODED_SCHEMA, read and decoded in Arrow batches on the
    executors (``mapInArrow``: the batches stay Arrow, no pandas conversion either way)."""
    def decode_partition(batches: Iterator) -> Iterator:
        for batch in batches:
            yield from decode_arrow_batch(batch, root_url=root_url, params=params)

    return files.select("path", "size", "problem").mapInArrow(decode_partition, schema=DECODED_SCHEMA)
