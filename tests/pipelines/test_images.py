"""The read-and-decode step as plain pandas (no Spark): colour modes, resizing, every rejection reason."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.images import DecodeParams, decode_file_batch, split_relpath, to_array
from pipelines.labels import class_map
from pipelines.schemas import image_unischema

ROOT = "file:/data/imgs"


def params(**kw) -> DecodeParams:
    base = dict(image_size=8, channels=3, codec="png", max_pixels=10_000_000, min_side=4, max_aspect_ratio=10.0)
    return DecodeParams(**{**base, **kw})


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def decode_files(root, files: dict[str, bytes], params: DecodeParams, *, root_url: str | None = None) -> pd.DataFrame:
    """``decode_file_batch`` of ``files`` (path below ``root`` -> content) written under ``root``."""
    paths = []
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
        paths.append(f"file:{root}/{rel}")
    batch = pd.DataFrame({"path": paths, "size": [len(c) for c in files.values()], "problem": [None] * len(paths)})
    return pd.concat(list(decode_file_batch(batch, root_url=root_url or f"file:{root}", params=params)))


def decode_field(codec: str, size: int, channels: int, data: bytes) -> np.ndarray:
    field = image_unischema(size, channels, codec).fields["image"]
    return field.codec.decode(field, data)


def test_split_relpath_takes_the_first_folder_as_class_and_never_decodes_again():
    assert split_relpath("file:/data/imgs/cat/a.png", "file:///data/imgs") == ("cat/a.png", "cat")
    assert split_relpath("file:/data/imgs/big cat/sub/a+b é.png", "file:/data/imgs/") == ("big cat/sub/a+b é.png", "big cat")
    # paths come in the one (decoded) spelling: a file named with a percent sign keeps it
    assert split_relpath("file:/data/imgs/d%20og/c%41.png", ROOT) == ("d%20og/c%41.png", "d%20og")
    assert split_relpath("file:/data/imgs/a.png", ROOT) == ("a.png", None)
    assert split_relpath("file:/elsewhere/a.png", ROOT) == (None, None)
    assert split_relpath("s3a://bucket/x/dog/1.jpg", "s3a://bucket/x") == ("dog/1.jpg", "dog")


def test_class_map_is_sorted_and_contiguous():
    assert class_map(["zebra", "ant", "moth", "ant"]) == {"ant": 0, "moth": 1, "zebra": 2}
    assert class_map(["10", "2", "1", "neg"]) == {"1": 0, "2": 1, "10": 2, "neg": 3}


@pytest.mark.parametrize("mode, colour, channels, expected", [
    ("RGB", (200, 10, 30), 3, [200, 10, 30]),
    ("L", 77, 3, [77, 77, 77]),
    ("RGB", (255, 0, 0), 1, [76]),             # ITU-R 601-2 luma: 0.299 * 255
    ("RGBA", (0, 0, 0, 0), 3, [255, 255, 255]),  # fully transparent composites on white
    ("LA", (0, 255), 1, [0]),
])
def test_colour_conversion(mode, colour, channels, expected):
    arr = to_array(encode(Image.new(mode, (20, 12), colour)), params(channels=channels))
    assert arr.shape == ((8, 8, 3) if channels == 3 else (8, 8))
    assert arr.dtype == np.uint8
    assert np.all(np.abs(arr.reshape(-1, channels).astype(int) - expected) <= 1)


def test_palette_with_transparency_and_16_bit_grey():
    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([10, 20, 30] * 256)
    pal.info["transparency"] = 0
    assert np.all(to_array(encode(pal), params()) == 255)
    grey16 = Image.fromarray(np.full((10, 10), 40000, dtype=np.uint16))
    arr = to_array(encode(grey16), params(channels=1))
    assert np.all(np.abs(arr.astype(int) - 40000 // 256) <= 1)


def test_resize_keeps_the_picture():
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :30] = 255  # left half white
    arr = to_array(encode(Image.fromarray(img)), params(image_size=10))
    assert arr.shape == (10, 10, 3)
    assert arr[:, :4].min() > 200 and arr[:, 6:].max() < 50


@pytest.mark.parametrize("codec", ["png", "jpeg", "raw"])
def test_batch_encodes_with_the_dataset_codec(codec, tmp_path):
    data = encode(Image.new("RGB", (30, 30), (0, 128, 255)), "JPEG")
    out = decode_files(tmp_path, {"blue/x.jpg": data}, params(codec=codec))
    row = out.iloc[0]
    assert row["reason"] is None and row["class_name"] == "blue" and row["relpath"] == "blue/x.jpg"
    decoded = decode_field(codec, 8, 3, row["image"])
    assert decoded.shape == (8, 8, 3)
    assert np.all(np.abs(decoded.astype(int) - [0, 128, 255]) <= 6)


def test_only_the_listed_formats_are_opened_whatever_the_name_says():
    from pipelines.images import IMAGE_FORMATS, RejectedImage, to_array

    for fmt in ("GIF", "BMP", "TIFF", "WEBP"):
        assert fmt in IMAGE_FORMATS
        assert to_array(encode(Image.new("RGB", (20, 20), (9, 9, 9)), fmt), params()).shape == (8, 8, 3)
    for fmt in ("EPS", "PPM", "ICO"):  # Pillow reads these (EPS through Ghostscript): never here
        with pytest.raises(RejectedImage, match=r"^not a readable image: .*\(formats read: PNG, JPEG"):
            to_array(encode(Image.new("RGB", (20, 20)), fmt), params())


def test_every_bad_file_gets_a_reason_and_the_batch_survives(tmp_path):
    good = encode(Image.new("RGB", (30, 30), (1, 2, 3)), "JPEG")
    cases = {
        "in/a/good.jpg": (good, None),
        "in/a/empty.png": (b"", "empty file"),
        "in/a/text.png": (b"hello, not an image", "not a readable image"),
        "in/a/trunc.jpg": (good[: len(good) // 2], "corrupt or truncated image"),
        "in/a/strip.png": (encode(Image.new("L", (400, 2))), "absurd dimensions: 400x2"),
        "in/a/huge.png": (encode(Image.new("L", (5000, 5000))), "absurd dimensions: 5000x5000"),
        "in/a/long.png": (encode(Image.new("L", (500, 20))), "aspect ratio"),
        "in/a/large.png": (good + bytes(100_000), "file too large: "),
        "in/rootfile.png": (good, "missing label"),
        "other/a/x.png": (good, "outside the input root"),
    }
    out = decode_files(tmp_path, {k: c for k, (c, _) in cases.items()}, params(max_pixels=1_000_000,
                       max_file_bytes=90_000), root_url=f"file:{tmp_path}/in").set_index("path")
    assert len(out) == len(cases)
    for rel, (_, reason) in cases.items():
        path = f"file:{tmp_path}/{rel}"
        if reason is None:
            assert out.loc[path, "reason"] is None and out.loc[path, "image"] is not None
        else:
            assert reason in out.loc[path, "reason"], (path, out.loc[path, "reason"])
            assert " at 0x" not in out.loc[path, "reason"]  # the same file gets the same reason in every run
            assert out.loc[path, "image"] is None


def test_the_arrow_batches_the_executors_run_hold_the_pandas_batches_rows(tmp_path):
    """``decode_arrow_batch`` (``mapInArrow``) and ``decode_file_batch`` give the same rows, rejects included."""
    import pyarrow as pa

    from pipelines.images import decode_arrow_batch

    files = {"a/ok.png": encode(Image.new("RGB", (20, 16), (9, 8, 7))), "b/bad.png": b"nope", "c/empty.png": b"",
             "loose.png": encode(Image.new("L", (9, 9), 3)), "d/strip.png": encode(Image.new("RGB", (200, 4)))}
    paths = []
    for rel, content in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(content)
        paths.append(f"file:{tmp_path}/{rel}")
    paths.append(f"file:{tmp_path}/e/listed-problem.png")
    sizes = [len(c) for c in files.values()] + [0]
    problems = [None] * len(files) + ["symbolic link: not followed (follow_links is false)"]
    root = f"file:{tmp_path}"
    frames = decode_file_batch(pd.DataFrame({"path": paths, "size": sizes, "problem": problems}), root_url=root,
                               params=params())
    expected = [row for frame in frames for row in frame.to_dict("records")]
    batch = pa.record_batch({"path": paths, "size": pa.array(sizes, pa.int64()), "problem": pa.array(problems, pa.string())})
    got = [row for out in decode_arrow_batch(batch, root_url=root, params=params()) for row in out.to_pylist()]
    assert got == expected and len(got) == 6
    assert sum(row["reason"] is None for row in got) == 1


@pytest.mark.parametrize("shape", [(32, 32, 3), (48, 64, 3), (32, 32), (30, 30, 3)])
def test_thumbnails_of_a_batch_are_pillows_grey_box_filter_within_one_level(shape):
    """The batch's array operations (sides divisible by 8) and the per-image Pillow path (30 x 30) both give the
    8x8 box average of the grey image; Pillow rounds each pixel's grey level first, hence up to 1 level apart."""
    from pipelines.images import thumbnails

    rng = np.random.default_rng(len(shape) * 100 + shape[0])
    arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(40)]
    arrays[3] = np.full(shape, 255, np.uint8)
    got = thumbnails([*arrays[:5], None, *arrays[5:]])
    assert got[5] is None and all(len(t) == 64 for t in got[:5] + got[6:])
    for array, thumb in zip(arrays, got[:5] + got[6:]):
        want = np.asarray(Image.fromarray(array).convert("L").resize((8, 8), Image.BOX), np.int16).ravel()
        assert np.abs(np.frombuffer(thumb, np.uint8).astype(np.int16) - want).max() <= 1
    assert got[3] == bytes([255]) * 64
