"""Columns to model inputs: a window of rows as Parquet stores them (``prepare``), and a batch as positions into it
(``collate``): labels and ids by index, raw pixels as one reshape of the column, PNG/JPEG decoded image by image,
token ids scattered into a padded matrix in one step. Per dataset kind, ``task_for`` says which columns the loader
reads and how it collates them; predict makes its inputs with the same functions."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from core.errors import DatasetError
from dataset.manifest import DatasetSpec
from dataset.rows import IMAGE, LABEL, SAMPLE_ID, SEQUENCE, rows_of


@dataclass(frozen=True)
class Binary:
    """A column of byte strings as one buffer: row ``i`` is ``data[offsets[i]:offsets[i + 1]]``."""
    offsets: np.ndarray   # int64 (n + 1,)
    data: np.ndarray      # uint8

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def value(self, i: int) -> np.ndarray:
        return self.data[self.offsets[i]:self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def of(cls, values: Any) -> Binary:
        """From a pyarrow binary array (no copy) or a sequence of bytes."""
        if isinstance(values, Binary):
            return values
        buffers = getattr(values, "buffers", None)
        if buffers is not None:
            import pyarrow as pa

            if isinstance(values, pa.ChunkedArray):
                values = values.combine_chunks()
            offset_type = np.int64 if pa.types.is_large_binary(values.type) else np.int32
            _, offsets, data = values.buffers()
            offsets = np.frombuffer(offsets, offset_type)[values.offset:values.offset + len(values) + 1]
            data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
            return cls(offsets.astype(np.int64), data)
        values = [bytes(v) for v in values]
        offsets = np.zeros(len(values) + 1, np.int64)
        np.cumsum([len(v) for v in values], out=offsets[1:])
        return cls(offsets, np.frombuffer(b"".join(values), np.uint8))

    def take(self, index: np.ndarray) -> Binary:
        """Rows ``index`` as a new contiguous column."""
        starts, lengths = self.offsets[index], self.lengths()[index]
        offsets = np.zeros(len(index) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return Binary(offsets, self.data[positions])


def _npy_pixels(column: Binary) -> np.ndarray:
    """The raw codec's column (Petastorm's NdarrayCodec: one .npy per row, same shape and dtype in every row) as
    one uint8 array (n, H, W[, C]): the headers are checked equal and cut off, no per-row np.load."""
    n = len(column)
    if n == 0:
        return np.zeros((0, 0, 0), np.uint8)
    sizes = column.lengths()
    if np.any(sizes != sizes[0]):
        raise DatasetError("raw images of different sizes in one column: the dataset's files were altered")
    first = io.BytesIO(column.value(0).tobytes())
    version = np.lib.format.read_magic(first)
    # The public readers (numpy 2 no longer has the private _read_array_header): 1.0, and 2.0/3.0 (a longer header).
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(first)
    header = first.tell()
    if dtype != np.uint8 or fortran or header + int(np.prod(shape)) != sizes[0]:
        raise DatasetError(f"a raw image is stored as {dtype} {shape}: expected C-ordered uint8 pixels")
    rows = column.data[column.offsets[0]:column.offsets[0] + n * int(sizes[0])].reshape(n, int(sizes[0]))
    if not np.array_equal(rows[:, :header], np.broadcast_to(rows[0, :header], (n, header))):
        raise DatasetError("raw images with different .npy headers in one column: the dataset's files were altered")
    return rows[:, header:].reshape(n, *shape)


class ImageDecoder:
    """Stored images (PNG or JPEG bytes, or .npy bytes for the raw codec) -> one uint8 array (n, H, W[, C])."""

    def __init__(self, codec: str):
        self.codec = codec

    def decode_one(self, value: np.ndarray) -> np.ndarray:
        import cv2

        image = cv2.imdecode(value, cv2.IMREAD_UNCHANGED)
        if image is None:  # the job wrote only decodable images: the stored bytes were damaged since
            raise DatasetError(f"a stored {self.codec} image cannot be decoded: the dataset's files were "
                               "damaged after it was written (`bigtrain verify DATASET` names the file)")
        return image[:, :, ::-1] if image.ndim == 3 else image  # OpenCV decodes to BGR

    def __call__(self, values: Any) -> np.ndarray:
        column = Binary.of(values)
        if self.codec == "raw":
            return _npy_pixels(column)
        return np.stack([self.decode_one(column.value(i)) for i in range(len(column))])


def image_inputs(images: Any, decoder: ImageDecoder | None = None):
    """Stored images (an array (n, H, W[, C]), a list of arrays, or their bytes when a ``decoder`` is given) ->
    ``(uint8 tensor (B, C, H, W),)``, the CNN's inputs. Images stay uint8 until they are on the training device (a
    quarter of float32's bytes to copy); the models scale them to [0, 1] there. Training, evaluation and predict all
    make their inputs here."""
    import torch

    array = decoder(images) if decoder else np.stack(images) if isinstance(images, (list, tuple)) else images
    if array.ndim == 3:  # grayscale is stored as (H, W)
        array = array[:, :, :, None]
    return (torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2))),)


def padded_ids(tokens: Any, lengths: np.ndarray, *, dtype: str) -> np.ndarray:
    """Token ids (bytes of ``dtype`` per row) -> int64 (B, longest) padded with 0, in one scatter."""
    column = Binary.of(tokens)
    lengths = np.asarray(lengths, dtype=np.int64)
    itemsize = np.dtype(dtype).itemsize
    if np.any(column.lengths() != lengths * itemsize):
        raise DatasetError("stored token ids and lengths disagree: the dataset's files were altered")
    ids = np.zeros((len(lengths), int(lengths.max()) if len(lengths) else 0), dtype=np.int64)
    if len(lengths):
        flat = column.data[column.offsets[0]:column.offsets[-1]].view(np.dtype(dtype))  # the rows, end to end
        rows = np.repeat(np.arange(len(lengths)), lengths)
        cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        ids[rows, cols] = flat
    return ids


def sequence_inputs(tokens: Any, lengths: np.ndarray, *, dtype: str):
    """Stored token ids (bytes of ``dtype``) and their lengths -> ``(token ids int64 (B, T) padded with 0 to the
    longest, lengths int64 (B,))``, the RNNs' inputs (lengths stay on the host, where packing reads them)."""
    import torch

    lengths = np.asarray(lengths, dtype=np.int64)
    return torch.from_numpy(padded_ids(tokens, lengths, dtype=dtype)), torch.from_numpy(lengths)


def _labels_and_ids(labels, ids):
    import torch

    return (torch.from_numpy(np.asarray(labels, dtype=np.int64)),
            torch.from_numpy(np.asarray(ids, dtype=np.int64)))


def image_collate(rows: Sequence[Any], decoder: ImageDecoder | None = None):
    """Rows (with ``image``, ``label``, ``sample_id``) -> ((images uint8 (B, C, H, W),), labels, sample ids): for
    tests and notebooks holding rows; the loader collates columns (``Task.collate``)."""
    return image_inputs([row.image for row in rows], decoder), *_labels_and_ids(
        [row.label for row in rows], [row.sample_id for row in rows])


def sequence_collate(rows: Sequence[Any], *, dtype: str, longest_first: bool = False):
    """Rows (with ``tokens``, ``length``, ``label``, ``sample_id``) -> ((token ids int64 (B, T) padded with 0 to the
    longest, lengths int64 (B,)), labels, ids); ``longest_first`` orders the batch by length, longest first."""
    lengths = np.fromiter((row.length for row in rows), dtype=np.int64, count=len(rows))
    order = np.argsort(-lengths, kind="stable") if longest_first else np.arange(len(rows))
    rows = [rows[i] for i in order]
    return sequence_inputs([row.tokens for row in rows], lengths[order], dtype=dtype), *_labels_and_ids(
        [row.label for row in rows], [row.sample_id for row in rows])


@dataclass(frozen=True)
class Prepared:
    """A window's columns, ready to be cut into batches: labels, ids, lengths as numpy arrays; images decoded to
    one array (raw codec) or kept as one binary column (PNG/JPEG, decoded per batch); tokens as one binary column.
    ``replaced``: rows found unreadable when the window was prepared -> (the row used instead, why);
    ``read_errors``: (batch of the chunk, row, row used instead, why) for each use of an unreadable row, taken by
    the loader after each chunk (``take_read_errors``)."""
    labels: np.ndarray
    sample_ids: np.ndarray
    lengths: np.ndarray | None = None
    pixels: np.ndarray | None = None
    encoded: Binary | None = None
    replaced: dict[int, tuple[int, str]] = field(default_factory=dict)
    read_errors: list[tuple[int, int, int, str]] = field(default_factory=list)

    def take_read_errors(self) -> list[tuple[int, int, int, str]]:
        taken = list(self.read_errors)
        self.read_errors.clear()
        return taken


def substitute(sample_ids: np.ndarray, row: int, usable) -> int:
    """The row of the window that stands in for unreadable row ``row``: the first that ``usable(j)`` accepts in a
    permutation seeded by the bad row's sample id, so every run and every resume picks the same one."""
    rng = np.random.default_rng(int(sample_ids[row]) % 2**63)
    for j in rng.permutation(len(sample_ids)):
        if j != row and usable(int(j)):
            return int(j)
    raise DatasetError("every row of a window is unreadable: the dataset's files were damaged after it was "
                       "written (`bigtrain verify DATASET` names them)")


@dataclass(frozen=True)
class Task:
    """What the loader reads of a dataset kind and how it makes batches of it."""
    kind: str
    fields: tuple[str, ...]
    codec: str | None = None            # images
    token_dtype: str | None = None      # sequences
    bucket_by_length: bool = False
    host_inputs: tuple[int, ...] = ()   # model inputs that stay on the host (sequence lengths, read by packing)

    def prepare(self, columns: dict[str, Any]) -> Prepared:
        """A window's columns (pyarrow arrays or numpy) -> ``Prepared``."""
        labels, ids = np.asarray(columns[LABEL], dtype=np.int64), np.asarray(columns[SAMPLE_ID], dtype=np.int64)
        if self.kind == IMAGE.kind:
            (image,) = IMAGE.features
            column = Binary.of(columns[image])
            if self.codec == "raw":
                try:
                    return Prepared(labels, ids, pixels=_npy_pixels(column))
                except DatasetError:  # some rows are not the window's .npy shape: the others stand in for them
                    return _raw_with_stand_ins(labels, ids, column)
            return Prepared(labels, ids, encoded=column)
        tokens, length = SEQUENCE.features
        lengths, encoded = np.asarray(columns[length], dtype=np.int64), Binary.of(columns[tokens])
        bad = np.flatnonzero(encoded.lengths() != lengths * np.dtype(self.token_dtype).itemsize)
        replaced = {}
        if len(bad):  # rare: the window's other rows stand in for them
            good = set(range(len(ids))) - set(bad.tolist())
            replaced = {int(i): (substitute(ids, int(i), good.__contains__), "stored token ids and length disagree")
                        for i in bad}
        return Prepared(labels, ids, lengths=lengths, encoded=encoded, replaced=replaced)

    def collate(self, prepared: Prepared, index: np.ndarray):
        """Rows ``index`` of a prepared window -> (model inputs, labels int64 (B,), sample ids int64 (B,))."""
        index = _stand_ins(prepared, np.asarray(index), lambda k: 0)
        if self.kind == "image":
            if prepared.pixels is not None:
                images = prepared.pixels[index]
            else:
                images, index = _decode_images(prepared, index, self.codec, lambda k: 0)
            return image_inputs(images), *_labels_and_ids(prepared.labels[index], prepared.sample_ids[index])
        # longest first: the order of rows in a batch means nothing, and the RNNs then pack it without reordering
        index = index[np.argsort(-prepared.lengths[index], kind="stable")]
        lengths = prepared.lengths[index]
        return sequence_inputs(prepared.encoded.take(index), lengths, dtype=self.token_dtype), *_labels_and_ids(
            prepared.labels[index], prepared.sample_ids[index])


    def chunk(self, prepared: Prepared, batches: list[np.ndarray], *,
              decoded=None) -> tuple[dict[str, Any], list[Any]]:
        """Several batches (rows of a prepared window each) at once, as flat buffers (one per dtype) and the layout
        of every batch's tensors in them (``(dtype, offset, shape)`` nested like the batch): what ``collate`` makes
        of each batch, in a few vectorised steps for the whole chunk. ``training.loader.unpack`` cuts them out.
        ``decoded()`` is called once the images are decoded (the loader's stage ledger times decoding apart)."""
        sizes = np.array([len(b) for b in batches], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        n = int(starts[-1])
        def batch_of(k: int) -> int:
            return int(np.searchsorted(starts, k, side="right")) - 1
        if self.kind == "image":
            rows = np.concatenate(batches) if batches else np.zeros(0, np.int64)
            rows = _stand_ins(prepared, rows, batch_of)
            if prepared.pixels is not None:
                images = prepared.pixels[rows]
            else:
                images, rows = _decode_images(prepared, rows, self.codec, batch_of)
                if decoded is not None:
                    decoded()
            if images.ndim == 3:
                images = images[:, :, :, None]
            images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
            per_image = int(np.prod(images.shape[1:]))
            meta = np.concatenate([prepared.labels[rows], prepared.sample_ids[rows]])
            layouts = [((("uint8", int(a) * per_image, (int(k), *images.shape[1:])),), ("int64", int(a), (int(k),)),
                        ("int64", n + int(a), (int(k),))) for a, k in zip(starts[:-1], sizes)]
            return {"uint8": images.reshape(-1), "int64": meta}, layouts
        # sequences: each batch longest first, padded to its own longest row, all batches scattered in one step
        if prepared.replaced:
            batches = [_stand_ins(prepared, np.asarray(b), lambda k, a=a: a) for a, b in enumerate(batches)]
        ordered = [b[np.argsort(-prepared.lengths[b], kind="stable")] for b in batches]
        rows = np.concatenate(ordered) if ordered else np.zeros(0, np.int64)
        lengths = prepared.lengths[rows]
        widths = np.array([int(prepared.lengths[b].max()) if len(b) else 0 for b in ordered], dtype=np.int64)
        token_starts = np.concatenate([[0], np.cumsum(sizes * widths)])
        row_starts = np.repeat(token_starts[:-1], sizes) + (np.arange(n) - np.repeat(starts[:-1], sizes)) * np.repeat(
            widths, sizes)
        column = prepared.encoded.take(rows)
        if np.any(column.lengths() != lengths * np.dtype(self.token_dtype).itemsize):
            raise DatasetError("stored token ids and lengths disagree: the dataset's files were altered")
        values = column.data[column.offsets[0]:column.offsets[-1]].view(np.dtype(self.token_dtype))
        total = int(token_starts[-1])
        flat = np.zeros(total + 3 * n, dtype=np.int64)
        flat[np.repeat(row_starts, lengths) + np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths,
                                                                                 lengths)] = values
        flat[total:total + n], flat[total + n:total + 2 * n] = lengths, prepared.labels[rows]
        flat[total + 2 * n:] = prepared.sample_ids[rows]
        layouts = [((("int64", int(t), (int(k), int(w))), ("int64", total + int(a), (int(k),))),
                    ("int64", total + n + int(a), (int(k),)), ("int64", total + 2 * n + int(a), (int(k),)))
                   for a, k, w, t in zip(starts[:-1], sizes, widths, token_starts[:-1])]
        return {"int64": flat}, layouts


def _stand_ins(prepared: Prepared, rows: np.ndarray, batch_of) -> np.ndarray:
    """``rows`` with every row the window's preparation found unreadable replaced by its stand-in, each use
    recorded in ``prepared.read_errors`` with ``batch_of(k)``, the chunk's batch of position ``k``."""
    if not prepared.replaced:
        return rows
    rows = rows.copy()
    for k, row in enumerate(rows):
        if int(row) in prepared.replaced:
            instead, why = prepared.replaced[int(row)]
            prepared.read_errors.append((batch_of(k), int(row), instead, why))
            rows[k] = instead
    return rows


def _decode_images(prepared: Prepared, rows: np.ndarray, codec: str, batch_of) -> tuple[np.ndarray, np.ndarray]:
    """PNG/JPEG rows decoded, (images, the rows they are): a row that does not decode is replaced by its stand-in
    (``substitute``) and recorded in ``prepared.read_errors``."""
    decoder = ImageDecoder(codec)
    images, used = [], rows.copy()
    for k, row in enumerate(rows):
        try:
            images.append(decoder.decode_one(prepared.encoded.value(int(row))))
        except DatasetError:
            def decodes(j: int) -> bool:
                try:
                    decoder.decode_one(prepared.encoded.value(j))
                    return True
                except DatasetError:
                    return False
            instead = substitute(prepared.sample_ids, int(row), decodes)
            prepared.read_errors.append((batch_of(k), int(row), instead, f"a stored {codec} image does not decode"))
            used[k] = instead
            images.append(decoder.decode_one(prepared.encoded.value(instead)))
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise DatasetError(f"stored images of different shapes in one window ({sorted(shapes)}): the dataset's files "
                           "were altered after it was written (`bigtrain verify DATASET` names them)")
    return (np.stack(images) if images else np.zeros((0, 0, 0), np.uint8)), used


def _raw_with_stand_ins(labels: np.ndarray, ids: np.ndarray, column: Binary) -> Prepared:
    """A raw-codec window some of whose rows are not the .npy of the others (a size or header of their own): the
    most common form is the window's; every other row is replaced by a stand-in of that form."""
    sizes = column.lengths()
    values, counts = np.unique(sizes, return_counts=True)
    common = int(values[np.argmax(counts)])
    heads = [column.value(i)[:16].tobytes() for i in range(len(column))]
    head = max(set(heads[i] for i in range(len(column)) if sizes[i] == common), key=heads.count)
    good = {i for i in range(len(column)) if sizes[i] == common and heads[i] == head}
    replaced = {i: (substitute(ids, i, good.__contains__), "a stored raw image is not the window's .npy shape")
                for i in range(len(column)) if i not in good}
    fixed = Binary.of([column.value(replaced.get(i, (i,))[0]).tobytes() for i in range(len(column))])
    return Prepared(labels, ids, pixels=_npy_pixels(fixed), replaced=replaced)


def task_for(dataset: DatasetSpec, *, length_bucketing: bool = True) -> Task:
    """Images arrive as their stored bytes (decoded a batch at a time in the loader's workers); sequences as compact
    ids with their lengths, batched by similar length when ``length_bucketing``."""
    rows = rows_of(dataset.kind)  # a DatasetError naming a kind bigtrain does not have
    if rows is IMAGE:
        return Task(rows.kind, rows.read, codec=dataset.image.codec)
    return Task(rows.kind, rows.read, token_dtype=dataset.sequence.token_dtype, bucket_by_length=length_bucketing,
                host_inputs=(1,))

