"""Labels cleaned where they are born, through the sequence job in-process: one class per spelling, and labels
that name no class rejected with a reason, never a class of one row."""
from __future__ import annotations

import json
import unicodedata

import pytest

from core.config import load_section
from core.paths import to_url
from pipelines.sequence_dataset import PreprocessSequencesConfig, preprocess_sequences

pytestmark = pytest.mark.spark


def test_two_spellings_of_a_class_are_one_class_and_a_boolean_label_is_rejected(spark, tmp_path):
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    labels = [nfc, nfd, " thé", "thé", nfc, nfd, True, "two\nlines", "x" * 10_240]
    src = tmp_path / "texts"
    src.mkdir()
    (src / "part.jsonl").write_text("".join(json.dumps({"text": f"review {i}", "label": label}) + "\n"
                                            for i, label in enumerate(labels)), encoding="utf-8")
    config = load_section("preprocess_sequences", PreprocessSequencesConfig,
                          flags={"ranks": 1, "max_reject_fraction": 1.0})
    summary = preprocess_sequences(spark, input_url=to_url(str(src)), output_url=to_url(str(tmp_path / "out")),
                                   fmt="jsonl", config=config)
    per_class = summary["splits"]["train"]["per_class"]  # every class of the map, with its rows in this split
    assert sorted(per_class) == ["café", "thé"] and nfd not in per_class
    assert summary["records_read"] == 9 and summary["rows_written"] == 6 and summary["rejected"] == 3
    assert summary["rejected_by_reason"] == {"label has a control character": 1, "label too long": 1,
                                             "unmappable label": 1}
