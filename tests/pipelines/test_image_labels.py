"""Class folders become class names through ``pipelines.labels.clean_label`` (plain pandas, no Spark): the spellings
of one name are one class, and a folder name that names no class rejects its images with the reason."""
from __future__ import annotations

import io

import pandas as pd
from PIL import Image

from core.paths import to_url
from pipelines.images import DecodeParams, decode_file_batch

PARAMS = DecodeParams(image_size=8, channels=3, codec="png", max_pixels=10_000_000, min_side=4, max_aspect_ratio=10.0)


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (30, 30), (1, 2, 3)).save(out, "PNG")
    return out.getvalue()


def test_class_folders_that_print_alike_are_one_class_and_unusable_folder_names_are_rejected(tmp_path):
    expected = {  # folder on disk -> (class name, reason)
        "Caf\u00e9": ("Caf\u00e9", None),    # NFC
        "Cafe\u0301": ("Caf\u00e9", None),   # NFD, as macOS writes it
        " 3": ("3", None),
        "3": ("3", None),
        "two\nlines": (None, "label has a control character: \\n in the class folder name"),
        " ": (None, "missing label: the class folder name is empty"),
        "x" * 300: (None, "label too long: the class folder name has 300 characters, the limit is 256"),
    }
    data = png()
    for folder in expected:
        if len(folder) < 255:  # a longer name exists on object stores only: its file is never read
            (tmp_path / folder).mkdir()
            (tmp_path / folder / "a.png").write_bytes(data)
    root = to_url(str(tmp_path))
    paths = [f"{root.rstrip('/')}/{folder}/a.png" for folder in expected]
    batch = pd.DataFrame({"path": paths, "size": [len(data)] * len(paths), "problem": [None] * len(paths)})
    out = pd.concat(decode_file_batch(batch, root_url=root, params=PARAMS)).set_index("path")
    for path, (class_name, reason) in zip(paths, expected.values()):
        assert (out.loc[path, "class_name"], out.loc[path, "reason"]) == (class_name, reason), path
        assert (out.loc[path, "image"] is None) == (reason is not None)
    assert out.loc[paths[1], "relpath"] == "Cafe\u0301/a.png"  # the file keeps the name it has on disk
