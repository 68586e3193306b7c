"""Schemas, side by side: the Spark ``StructType`` of each intermediate and the Petastorm ``Unischema`` written to disk.

The column names are the row contract's (``dataset.rows``), which the training loader and batch prediction read
too; this module adds the types and codecs each column is written with.
"""
from __future__ import annotations

import numpy as np
from pyspark.sql import types as T

from compat import petastorm as petastorm_compat
from dataset.rows import FINGERPRINT, IMAGE, LABEL, SAMPLE_ID, SEQUENCE, THUMBNAIL

IMAGE_CODECS = ("png", "jpeg", "raw")


# Output of the decode step (pipelines.images.decode_file_batch): one row per input file, accepted or not.
DECODED_SCHEMA = T.StructType([
    T.StructField("path", T.StringType(), False),        # the file's URL as listed (pipelines.inputs)
    T.StructField("relpath", T.StringType(), True),      # path below the input root, as the file system names it
    T.StructField("class_name", T.StringType(), True),   # first folder below the input root
    T.StructField("image", T.BinaryType(), True),        # encoded with the dataset codec; null when rejected
    T.StructField("reason", T.StringType(), True),       # why the file was rejected; null when accepted
    T.StructField("thumbnail", T.BinaryType(), True),    # 8x8 grey thumbnail (pipelines.images.thumbnail)
    T.StructField("fingerprint", T.LongType(), True),    # pipelines.images.pixel_fingerprint; null when rejected
    T.StructField("near_keys", T.ArrayType(T.LongType()), True),  # the thumbnail's pipelines.duplicates.near_keys
])

def image_shape(image_size: int, channels: int) -> tuple[int, ...]:
    """Grayscale is stored as (H, W) because OpenCV's image codecs only take (H, W) or (H, W, 3)."""
    return (image_size, image_size) if channels == 1 else (image_size, image_size, 3)


def image_unischema(image_size: int, channels: int, codec: str):
    """The Petastorm schema of one split of an image dataset."""
    petastorm_compat.install()  # before Petastorm's first import (this runs on executors too)
    from petastorm.codecs import CompressedImageCodec, NdarrayCodec, ScalarCodec
    from petastorm.unischema import Unischema, UnischemaField

    if codec not in IMAGE_CODECS:
        raise ValueError(f"image codec {codec!r} is not one of {IMAGE_CODECS}")
    image_codec = NdarrayCodec() if codec == "raw" else CompressedImageCodec(codec, quality=95)
    (image,) = IMAGE.features
    return Unischema("ImageRow", [
        UnischemaField(SAMPLE_ID, np.int64, (), ScalarCodec(T.LongType()), False),
        UnischemaField(IMAGE.source, np.str_, (), ScalarCodec(T.StringType()), False),
        UnischemaField(LABEL, np.int32, (), ScalarCodec(T.IntegerType()), False),
        UnischemaField(image, np.uint8, image_shape(image_size, channels), image_codec, False),
        UnischemaField(FINGERPRINT, np.int64, (), ScalarCodec(T.LongType()), True),
        UnischemaField(THUMBNAIL, np.bytes_, (), ScalarCodec(T.BinaryType()), True),
    ])


def sequence_unischema():
    """The Petastorm schema of one split of a sequence dataset.

    ``tokens`` holds the token ids without padding, as little-endian bytes of the dtype named in metadata.json
    (uint16 for vocabularies up to 65,536, else int32): Petastorm's columnar reader refuses ragged list columns
    ("Length of all values in column ... are expected to be the same length"), while bytes read fast in both of
    its modes. ``length`` is the true (truncated) length. ``fingerprint``: ``pipelines.duplicates``.
    """
    petastorm_compat.install()
    from petastorm.codecs import ScalarCodec
    from petastorm.unischema import Unischema, UnischemaField

    tokens, length = SEQUENCE.features
    return Unischema("SequenceRow", [
        UnischemaField(SAMPLE_ID, np.int64, (), ScalarCodec(T.LongType()), False),
        UnischemaField(SEQUENCE.source, np.str_, (), ScalarCodec(T.StringType()), False),
        UnischemaField(LABEL, np.int32, (), ScalarCodec(T.IntegerType()), False),
        UnischemaField(length, np.int32, (), ScalarCodec(T.IntegerType()), False),
        UnischemaField(tokens, np.bytes_, (), ScalarCodec(T.BinaryType()), False),
        UnischemaField(FINGERPRINT, np.int64, (), ScalarCodec(T.LongType()), True),
    ])
