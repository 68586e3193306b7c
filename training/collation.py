"""Batches of rows to model inputs: images decoded on a thread pool and stacked as uint8, token ids padded to the
longest row; and, per dataset kind, what the loader reads and how it collates (``task_for``)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from core.errors import DatasetError
from dataset.manifest import DatasetSpec


def _labels_and_ids(rows: list[Any]):
    import torch

    y = torch.from_numpy(np.fromiter((row.label for row in rows), dtype=np.int64, count=len(rows)))
    ids = torch.from_numpy(np.fromiter((row.sample_id for row in rows), dtype=np.int64, count=len(rows)))
    return y, ids


class ImageDecoder:
    """Decodes a batch of stored images (PNG or JPEG bytes, or .npy bytes for the raw codec) on a thread pool:
    OpenCV releases the GIL while decoding, so the threads really run in parallel."""

    def __init__(self, codec: str, threads: int):
        from concurrent.futures import ThreadPoolExecutor

        self.codec, self.threads = codec, threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="bigtrain-decode") if threads > 1 else None

    def decode(self, value: bytes) -> np.ndarray:
        import io

        import cv2

        if self.codec == "raw":
            return np.load(io.BytesIO(value))
        image = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:  # the job wrote only decodable images: the stored bytes were damaged since
            raise DatasetError(f"a stored {self.codec} image cannot be decoded: the dataset's files were "
                                      "damaged after it was written (`bigtrain verify DATASET` names the file)")
        return image[:, :, ::-1] if image.ndim == 3 else image  # OpenCV decodes to BGR

    def decode_all(self, values: list[bytes]) -> list[np.ndarray]:
        return [self.decode(v) for v in values]

    def __call__(self, values: list[bytes]) -> list[np.ndarray]:
        if self.pool is None:
            return self.decode_all(values)
        # One task per thread, not per image: a future costs about as much as decoding a small image.
        step = -(-len(values) // self.threads)
        chunks = self.pool.map(self.decode_all, [values[i:i + step] for i in range(0, len(values), step)])
        return [image for chunk in chunks for image in chunk]


def image_inputs(images: list[Any], decoder: ImageDecoder | None = None):
    """Stored images (arrays, or their bytes when a ``decoder`` is given) -> ``(uint8 tensor (B, C, H, W),)``, the
    CNN's inputs. Images stay uint8 until they are on the training device (a quarter of float32's bytes to copy);
    the models scale them to [0, 1] there. Training, evaluation and predict all make their inputs here."""
    import torch

    array = np.stack(decoder(images) if decoder else images)
    if array.ndim == 3:  # grayscale is stored as (H, W)
        array = array[:, :, :, None]
    return (torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2))),)


def image_collate(rows: list[Any], decoder: ImageDecoder | None = None):
    """Rows -> ((images uint8 (B, C, H, W),), labels int64 (B,), sample ids int64 (B,)). With a ``decoder`` the rows
    hold the stored bytes (columnar reading) and are decoded here, as a batch."""
    return image_inputs([row.image for row in rows], decoder), *_labels_and_ids(rows)


def sequence_inputs(tokens: list[bytes], lengths: np.ndarray, *, dtype: str):
    """Stored token ids (bytes of ``dtype``) and their lengths -> ``(token ids int64 (B, T) padded with 0 to the
    longest, lengths int64 (B,))``, the RNNs' inputs (lengths stay on the host, where packing reads them)."""
    import torch

    lengths = np.asarray(lengths, dtype=np.int64)
    ids = np.zeros((len(tokens), int(lengths.max())), dtype=np.int64)
    for i, value in enumerate(tokens):
        ids[i, :lengths[i]] = np.frombuffer(value, dtype=dtype)
    return torch.from_numpy(ids), torch.from_numpy(lengths)


def sequence_collate(rows: list[Any], *, dtype: str, longest_first: bool = False):
    """Rows -> ((token ids int64 (B, T) padded with 0 to the longest in the batch, lengths int64 (B,)), labels, ids).

    ``longest_first`` orders the batch by length, longest first (the order of rows in a training or evaluation
    batch means nothing, and the RNNs then pack it without reordering on the GPU)."""
    lengths = np.fromiter((row.length for row in rows), dtype=np.int64, count=len(rows))
    if longest_first:
        order = np.argsort(-lengths, kind="stable")
        rows, lengths = [rows[i] for i in order], lengths[order]
    return sequence_inputs([row.tokens for row in rows], lengths, dtype=dtype), *_labels_and_ids(rows)


@dataclass(frozen=True)
class Task:
    """What the loader and the loop need to know about a dataset kind."""
    fields: tuple[str, ...]
    collate: Callable[[list[Any]], Any]
    columnar: bool
    sort_key: Callable[[Any], Any] | None
    host_inputs: tuple[int, ...] = ()   # model inputs that stay on the host (sequence lengths, read by packing)


def task_for(dataset: DatasetSpec, *, length_bucketing: bool = True, decode_threads: int = 2) -> Task:
    """Both kinds are read through Petastorm's columnar reader (make_batch_reader): images arrive as their stored
    bytes and are decoded a batch at a time on ``decode_threads`` threads; sequences are already compact ids."""
    kind = dataset.kind
    if kind == "image":
        decoder = ImageDecoder(dataset.image.codec, decode_threads)
        return Task(("image", "label", "sample_id"), functools.partial(image_collate, decoder=decoder),
                    columnar=True, sort_key=None)
    if kind == "sequence":
        collate = functools.partial(sequence_collate, dtype=dataset.sequence.token_dtype, longest_first=True)
        return Task(("tokens", "length", "label", "sample_id"), collate, columnar=True,
                    sort_key=_length if length_bucketing else None, host_inputs=(1,))
    raise DatasetError(f"dataset kind {kind!r} is not image or sequence")


def _length(row: Any) -> int:
    return int(row.length)
