"""Sample raw data for the demo and the tests: an image-folder dataset with a signal a small CNN can learn.

Ten classes of shapes (filled circle, square, triangle, ...) drawn at random positions, sizes and colours on noisy
backgrounds. Files vary in size (24-120 px, not square), format (PNG, JPEG) and colour mode (RGB, L, RGBA, P), the
way a real folder does. The class is carried by the shape, not the colour, so it survives grayscale conversion.
Optionally a few unusable files (corrupt, truncated, empty, not an image, absurd size, no class folder) are added,
so the quarantine path is exercised too.
"""
from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SHAPE_CLASSES = ("circle", "square", "triangle", "plus", "hbars", "vbars", "ring", "xcross", "frame", "diamond")
MODES = ("RGB", "RGB", "L", "RGBA", "P")


def _draw_shape(draw, shape: str, cx: float, cy: float, r: float, fill, width: int) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "plus":
        draw.rectangle((cx - r, cy - width / 2, cx + r, cy + width / 2), fill=fill)
        draw.rectangle((cx - width / 2, cy - r, cx + width / 2, cy + r), fill=fill)
    elif shape == "hbars":
        for k in (-1, 0, 1):
            y = cy + k * r * 0.7
            draw.rectangle((cx - r, y - width / 2.5, cx + r, y + width / 2.5), fill=fill)
    elif shape == "vbars":
        for k in (-1, 0, 1):
            x = cx + k * r * 0.7
            draw.rectangle((x - width / 2.5, cy - r, x + width / 2.5, cy + r), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=width)
    elif shape == "xcross":
        draw.line((cx - r, cy - r, cx + r, cy + r), fill=fill, width=width)
        draw.line((cx - r, cy + r, cx + r, cy - r), fill=fill, width=width)
    elif shape == "frame":
        draw.rectangle(box, outline=fill, width=width)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_shape(shape: str, rng: np.random.Generator):
    """One RGB Pillow image of ``shape`` with random size, placement, colours and noise."""
    from PIL import Image, ImageDraw

    side = int(rng.integers(28, 121))
    width, height = side, int(np.clip(side * rng.uniform(0.8, 1.25), 24, 140))
    dark_bg = rng.random() < 0.5
    bg_level, fg_level = (rng.uniform(0, 80), rng.uniform(170, 255)) if dark_bg else (rng.uniform(175, 255), rng.uniform(0, 85))
    tint = lambda level: tuple(int(np.clip(level + rng.normal(0, 25), 0, 255)) for _ in range(3))  # noqa: E731
    canvas = np.clip(np.full((height, width, 3), tint(bg_level), np.float32) + rng.normal(0, 12, (height, width, 3)), 0, 255)
    img = Image.fromarray(canvas.astype(np.uint8), "RGB")
    m = min(width, height)
    r = m * rng.uniform(0.25, 0.4)
    cx = width / 2 + rng.uniform(-0.1, 0.1) * m
    cy = height / 2 + rng.uniform(-0.1, 0.1) * m
    _draw_shape(ImageDraw.Draw(img), shape, cx, cy, r, tint(fg_level), max(2, int(math.ceil(m / 9))))
    return img


def encode(img, mode: str, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt == "JPEG":
        img.convert("L" if mode == "L" else "RGB").save(out, "JPEG", quality=int(90))
    else:
        converted = img.convert("P", palette=1, colors=64) if mode == "P" else img.convert(mode)
        converted.save(out, "PNG")
    return out.getvalue()


def generate_images(output: str | Path, *, per_class: int, seed: int = 0, bad_files: int = 0,
                    classes: tuple[str, ...] = SHAPE_CLASSES) -> dict[str, int]:
    """Write ``per_class`` images into ``output/<class>/``; returns the number of files written per class."""
    rng = np.random.default_rng(seed)
    root = Path(output)
    counts = {}
    for shape in classes:
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            mode = MODES[int(rng.integers(len(MODES)))]
            fmt = "JPEG" if mode in ("RGB", "L") and rng.random() < 0.5 else "PNG"
            data = encode(render_shape(shape, rng), mode, fmt)
            (folder / f"{shape}_{i:05d}.{'jpg' if fmt == 'JPEG' else 'png'}").write_bytes(data)
        counts[shape] = per_class
    if bad_files:
        write_bad_files(root, classes, bad_files, rng)
    log.debug("wrote %d images in %d classes to %s (+%d unusable files)", sum(counts.values()), len(counts), root, bad_files)
    return counts


def bad_file_payloads(rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """(file name, bytes) of files the preprocessing job must reject, one of each kind."""
    good = encode(render_shape("circle", rng), "RGB", "JPEG")
    strip = io.BytesIO()
    from PIL import Image
    Image.new("RGB", (4000, 2), (0, 0, 0)).save(strip, "PNG")
    return [
        ("truncated.jpg", good[: len(good) // 3]),
        ("notes.png", b"this is a text file with an image extension\n"),
        ("empty.jpg", b""),
        ("strip.png", strip.getvalue()),
        ("garbage.png", bytes(rng.integers(0, 256, 2048, dtype=np.uint8))),
    ]


def write_bad_files(root: Path, classes: tuple[str, ...], count: int, rng: np.random.Generator) -> None:
    payloads = bad_file_payloads(rng)
    for i in range(count):
        name, data = payloads[i % len(payloads)]
        folder = root if i == len(payloads) else root / classes[i % len(classes)]
        (folder / f"bad_{i:03d}_{name}").write_bytes(data)


# ----- text -----------------------------------------------------------------------------------------------------
POSITIVE = ("good", "great", "excellent", "wonderful", "fun", "brilliant", "enjoyable", "superb", "charming")
NEGATIVE = ("bad", "terrible", "awful", "boring", "poor", "dull", "horrible", "weak", "clumsy")
SUBJECTS = ("the movie", "the film", "the plot", "the acting", "the soundtrack", "the ending", "the story",
            "the cast", "the pacing", "the script", "the café scene", "the déjà vu twist")
VERBS = ("was", "is", "felt", "seemed")
INTENSIFIERS = ("", "", "very", "really", "quite", "so")
NEGATORS = ("not", "never", "not at all")
FILLERS = ("honestly", "i", "think", "overall", "in", "my", "view", "to", "be", "fair", "this", "time", "again",
           "yesterday", "we", "watched", "it", "with", "friends", "at", "home", "on", "a", "rainy", "sunday", "evening",
           "so", "well", "and", "then", "after", "dinner", "naïve", "me", "expected", "more", "or", "less", "🙂")


def render_review(rng: np.random.Generator) -> tuple[str, str]:
    """One review and its label. The adjective's polarity is flipped by a negator directly before it (or before
    its intensifier); half the reviews also carry a negator elsewhere that flips nothing. Bag-of-words features
    cannot tell the two apart (about 75% at best); a model that reads word order can."""
    positive = rng.random() < 0.5
    adjective = str(rng.choice(POSITIVE if positive else NEGATIVE))
    negated = rng.random() < 0.5
    words = [str(w) for w in rng.choice(FILLERS, size=int(rng.integers(0, 10)))]
    if rng.random() < 0.5:  # a negator that does not negate the adjective
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(NEGATORS)))
    words += [str(rng.choice(SUBJECTS)), str(rng.choice(VERBS))]
    if negated:
        words.append(str(rng.choice(NEGATORS)))
    words += [w for w in [str(rng.choice(INTENSIFIERS)), adjective] if w]
    words += [str(w) for w in rng.choice(FILLERS, size=int(rng.integers(0, 8)))]
    text = " ".join(words)
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:] + rng.choice([".", "!", " ..."])
    return text, "positive" if positive != negated else "negative"


BAD_LINES = (
    b'{"text": "the plot was good", "label": "positive"',        # broken JSON
    b'{"text": "the film was \xff\xfe bad", "label": "negative"}',  # invalid UTF-8
    b'{"label": "positive"}',                                       # missing text field
    b'{"text": "the story was not dull"}',                          # missing label
    b'{"text": "   ", "label": "negative"}',                        # empty text
    b'{"text": "the cast was weak", "label": null}',                # null label
    b'{"text": 42, "label": "positive"}',                           # text of the wrong type
    b'["the ending was great", "positive"]',                        # not an object
    b'',                                                            # empty line
)


def generate_texts(output: str | Path, *, records: int, files: int = 1, bad_lines: int = 0, seed: int = 0,
                   fmt: str = "jsonl") -> dict[str, int]:
    """Write ``records`` reviews (plus ``bad_lines`` unusable lines) over ``files`` files; returns label counts."""
    import csv
    import json

    rng = np.random.default_rng(seed)
    root = Path(output)
    root.mkdir(parents=True, exist_ok=True)
    lines: list[bytes] = []
    counts: dict[str, int] = {}
    for _ in range(records):
        text, label = render_review(rng)
        counts[label] = counts.get(label, 0) + 1
        if fmt == "jsonl":
            lines.append(json.dumps({"text": text, "label": label}, ensure_ascii=False).encode("utf-8"))
        else:
            out = io.StringIO()
            csv.writer(out).writerow([text, label])
            lines.append(out.getvalue().rstrip("\r\n").encode("utf-8"))
    for i in range(bad_lines if fmt == "jsonl" else 0):
        lines.insert(int(rng.integers(0, len(lines) + 1)), BAD_LINES[i % len(BAD_LINES)])
    per_file = math.ceil(len(lines) / files)
    for f in range(files):
        chunk = lines[f * per_file:(f + 1) * per_file]
        header = [b"text,label"] if fmt == "csv" else []
        (root / f"part-{f:05d}.{fmt}").write_bytes(b"\n".join(header + chunk) + b"\n")
    log.debug("wrote %d reviews (%s) + %d unusable lines in %d %s files to %s", records,
             ", ".join(f"{k}={v}" for k, v in sorted(counts.items())), bad_lines, files, fmt, root)
    return counts
