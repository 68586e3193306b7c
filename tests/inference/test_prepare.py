"""Raw inputs prepared for scoring (plain pandas, no Spark): the same bytes, tokens and reasons as preprocessing
gives the same file or line, through the same public functions of ``pipelines.images`` and ``pipelines.text``."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from inference import predict
from pipelines import images, text

ROOT = "file:/data/new"
PARAMS = dict(image_size=8, channels=3, max_pixels=10_000_000, min_side=4, max_aspect_ratio=10.0)


def png(size=(20, 12), colour=(200, 10, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("codec", ["raw", "jpeg"])
def test_raw_images_are_prepared_exactly_as_preprocessing_decodes_them(codec, tmp_path):
    params = images.DecodeParams(codec=codec, **PARAMS)
    files = {"cat/ok.png": png(), "cat/grey.png": png(colour=(90, 90, 90)), "cat/empty.png": b"",
             "cat/text.png": b"not an image at all", "cat/strip.png": png(size=(400, 4)),
             "cat/cut.png": png()[:60]}
    (tmp_path / "cat").mkdir()
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    root = f"file:{tmp_path}"
    batch = pd.DataFrame({"path": [f"{root}/{name}" for name in files], "size": [len(c) for c in files.values()],
                          "problem": [None] * len(files)})
    scored = predict.prepare_image_batch(batch, root_url=root, params=params)
    decoded = pd.concat(list(images.decode_file_batch(batch, root_url=root, params=params)))
    assert scored["source"].tolist() == list(files)
    assert scored["features"].tolist() == decoded["image"].tolist()
    assert scored["reason"].tolist() == decoded["reason"].tolist()
    reasons = dict(zip(files, scored["reason"]))
    assert reasons["cat/ok.png"] is None and reasons["cat/empty.png"] == "empty file: zero bytes"
    assert reasons["cat/text.png"].startswith("not a readable image: ")
    assert reasons["cat/strip.png"] == "absurd dimensions: 400x4 has an aspect ratio above 10.0"
    assert reasons["cat/cut.png"].startswith("corrupt or truncated image: ")


def test_image_encoder_stores_what_to_array_decodes_and_never_raises(monkeypatch):
    params = images.DecodeParams(codec="raw", **PARAMS)
    encode = images.image_encoder(params)
    data, reason = encode(png())
    assert reason is None
    assert np.array_equal(np.load(io.BytesIO(data)), images.to_array(png(), params))
    assert np.load(io.BytesIO(data)).shape == (8, 8, 3)
    assert encode(b"") == (None, "empty file: zero bytes")

    def broken(content, params):
        raise RuntimeError("codec exploded")

    monkeypatch.setattr(images, "to_array", broken)
    assert encode(png()) == (None, "decode failed: RuntimeError: codec exploded")


def test_raw_lines_are_prepared_as_preprocessing_parses_them_with_the_label_optional():
    params = text.ParseParams(fmt="jsonl", text_field="text", label_field="label", tokens_field=None,
                              tokenizer="word", lowercase=True)
    lines = [b'{"text": "The plot was GOOD", "label": "pos"}', b'{"text": "the plot"}', b'{"label": "pos"}',
             b'{"text": "caf\xe9", "label": "pos"}', b'{"text": "the end", "label": 2.0}', b""]
    batch = [text.RawRecord(f"a.jsonl:{i + 1}", "a.jsonl", line, None) for i, line in enumerate(lines)]
    vocabulary = ["<pad>", "<unk>", "the", "plot", "was", "good"]
    scored = predict.prepare_text_batch(batch, params=params, vocabulary=vocabulary, max_length=8,
                                        dtype="<u2").to_pydict()
    parsed = text.parse_batch(batch, params=params).to_pydict()
    assert scored["source"] == [f"a.jsonl:{i + 1}" for i in range(len(lines))]
    assert scored["label"] == ["pos", None, None, None, "2", None]
    assert parsed["label_name"] == ["pos", None, None, None, "2", None]
    assert parsed["reason"][1] == "missing field: label field 'label' is absent"  # preprocessing needs the label
    assert [r for i, r in enumerate(scored["reason"]) if i != 1] == [r for i, r in enumerate(parsed["reason"])
                                                                    if i != 1]
    assert scored["reason"] == [None, None, "missing field: text field 'text' is absent",
                                         "invalid UTF-8: byte 13: invalid continuation byte", None, "empty line"]
    assert np.frombuffer(scored["features"][0], "<u2").tolist() == [2, 3, 4, 5] and scored["length"][0] == 4
    assert np.frombuffer(scored["features"][1], "<u2").tolist() == [2, 3]
    assert np.frombuffer(scored["features"][4], "<u2").tolist() == [2, 1]  # "end" is not in the vocabulary
    assert scored["features"][2] is None and scored["length"][2] is None
