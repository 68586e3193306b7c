"""Pure transforms of the image path: decode, convert, resize and encode files; attach labels.

``to_array`` and ``image_encoder`` prepare one file, for preprocessing and batch inference (``inference.predict``)
alike; ``decode_image_batch`` is plain pandas/Pillow (testable without Spark); ``decode_images`` runs it on the
executors in Arrow batches through ``mapInPandas``. No transform here builds a session, names a path or runs an
action.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from core.paths import normalise_url
from pipelines.schemas import DECODED_SCHEMA, image_unischema


@dataclass(frozen=True)
class DecodeParams:
    image_size: int
    channels: int              # 1 (grayscale "L") or 3 (RGB)
    codec: str                 # png | jpeg | raw, see pipelines.schemas.IMAGE_CODECS
    max_pixels: int            # width*height above this is rejected as absurd (decompression bombs)
    min_side: int              # a side below this is rejected as absurd (1x4000 strips, empty images)
    max_aspect_ratio: float    # long side / short side above this is rejected
    max_file_bytes: int | None = None  # larger files are rejected unread (files_too_large); None: no limit


class RejectedImage(Exception):
    """Raised inside the decode step; its message becomes the record's rejection reason."""


def split_relpath(path: str, root_url: str) -> tuple[str | None, str | None]:
    """(relative path, class folder) of a file URL below ``root_url``; the class is None for files in the root.
    ``path`` is in the one spelling of ``core.paths`` (``binaryFile``'s ``path`` column, ``list_inputs``); it is
    not decoded again, so ``a%41.png`` stays ``a%41.png``."""
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


def image_encoder(params: DecodeParams) -> Callable[[bytes], tuple[bytes | None, str | None]]:
    """A function of one file's bytes that never raises: (the image as a dataset of ``params`` stores it: decoded
    and checked by ``to_array``, then encoded with ``params.codec``; None) or (None, why the file is unusable)."""
    field = image_unischema(params.image_size, params.channels, params.codec).fields["image"]

    def encode(content: bytes) -> tuple[bytes | None, str | None]:
        try:
            return bytes(field.codec.encode(field, to_array(content, params))), None
        except RejectedImage as exc:
            return None, str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad file must never fail the job; keep the reason
            return None, f"decode failed: {type(exc).__name__}: {exc}"

    return encode


def decode_image_batch(batch: pd.DataFrame, *, root_url: str, params: DecodeParams) -> pd.DataFrame:
    """One Arrow batch of ``binaryFile`` rows (path, content) -> rows of DECODED_SCHEMA. Never raises per file."""
    encode = image_encoder(params)
    out = {"path": [], "relpath": [], "class_name": [], "image": [], "reason": []}
    for path, content in zip(batch["path"], batch["content"]):
        relpath, class_name = split_relpath(path, root_url)
        image, reason = None, None
        if relpath is None:
            reason = f"outside the input root: {root_url}"
        elif class_name is None:
            reason = "missing label: file is directly in the input root, not in a class folder"
        else:
            image, reason = encode(content)
        for key, value in zip(out, (path, relpath, class_name, image, reason)):
            out[key].append(value)
    return pd.DataFrame(out, columns=list(out), dtype=object)  # None stays None (pandas 3 makes str columns NaN)


def decode_images(files: DataFrame, *, root_url: str, params: DecodeParams) -> DataFrame:
    """``binaryFile`` DataFrame -> DECODED_SCHEMA, decoded in Arrow batches on the executors. Files above
    ``params.max_file_bytes`` are left out, unread: ``files_too_large`` gives their rejected rows."""
    def decode_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield decode_image_batch(batch, root_url=root_url, params=params)

    if params.max_file_bytes is not None:  # pushed down: larger files are never read (see files_too_large)
        files = files.where(F.col("length") <= params.max_file_bytes)
    return files.select("path", "content").mapInPandas(decode_partition, schema=DECODED_SCHEMA)


def files_not_read(listed_paths: DataFrame, files: DataFrame, *, root_url: str) -> DataFrame:
    """Files the listing holds but the ``binaryFile`` scan ``files`` never delivers, as rejected DECODED_SCHEMA rows.

    Spark's file sources silently skip zero-byte files; ``listed_paths`` (one ``path`` column, in the spelling of
    ``storage.listed_paths``: that of the scan's ``path``) comes from the listing the scan used, so every file
    Spark saw is accounted for. Only the scan's ``path`` column is read, and the rows are built with SQL
    expressions (no Python worker).
    """
    scanned = files.select(F.regexp_replace("path", r"^file:/+", "file:/").alias("path"))
    return empty_files(listed_paths.join(scanned, "path", "left_anti"), root_url=root_url)


def empty_files(paths: DataFrame, *, root_url: str) -> DataFrame:
    """Zero-byte files (one ``path`` column, in the spelling of ``storage.listed_paths``), which Spark's file scan
    never delivers, as rejected DECODED_SCHEMA rows. The preprocessing job knows them from its input listing (size
    0), so it needs no join with the scan (``files_not_read``)."""
    return _unread_rows(paths, root_url=root_url,
                        reason=F.lit("empty file: zero bytes (Spark's file scan skips such files)"))


def files_too_large(files: DataFrame, *, root_url: str, max_file_bytes: int) -> DataFrame:
    """Files of the ``binaryFile`` scan ``files`` above ``max_file_bytes``, as rejected DECODED_SCHEMA rows. Their
    content is never read: only ``path`` and ``length`` are selected, and Spark's binary file source tests the
    pushed-down ``length`` filter before it reads a file (``decode_images`` keeps the others the same way)."""
    large = files.where(F.col("length") > max_file_bytes).select(
        F.regexp_replace("path", r"^file:/+", "file:/").alias("path"), "length")
    reason = F.concat(F.lit("file too large: "), F.col("length").cast("string"),
                      F.lit(f" bytes, more than max_file_bytes {max_file_bytes}"))
    return _unread_rows(large, root_url=root_url, reason=reason)


def _unread_rows(paths: DataFrame, *, root_url: str, reason: Column) -> DataFrame:
    """DECODED_SCHEMA rows of files rejected without reading them (``path``, normalised), with ``reason``."""
    prefix = normalise_url(root_url).rstrip("/") + "/"
    relpath = F.when(F.col("path").startswith(prefix), F.expr(f"substring(path, {len(prefix) + 1})"))
    class_name = F.regexp_extract(relpath, r"^([^/]+)/", 1)
    return paths.select(
        "path", relpath.alias("relpath"), F.when(class_name != "", class_name).alias("class_name"),
        F.lit(None).cast("binary").alias("image"), reason.alias("reason"))
