"""Label maps: integer labels by a strict pattern, ties broken by the label text (never by arrival order); labels
cleaned where they are born (``clean_label``): one spelling per class, and what no class can be named rejected."""
import itertools
import os
import subprocess
import sys
import unicodedata

import pytest

from pipelines.labels import MAX_LABEL_CHARS, clean_label, class_map


def test_names_that_look_numeric_to_isdigit_are_names_not_numbers():
    # "²" passes str.isdigit() and "--5".lstrip("-") is digits; int() refuses both.
    assert class_map(["2", "²", "--5", "-3", "10"]) == {"-3": 0, "2": 1, "10": 2, "--5": 3, "²": 4}


def test_equal_numbers_are_ordered_by_their_text_in_every_input_order():
    names = ["1", "01", "001", "2"]
    maps = {tuple(class_map(order).items()) for order in itertools.permutations(names)}
    assert maps == {(("001", 0), ("01", 1), ("1", 2), ("2", 3))}


def test_the_map_does_not_depend_on_the_hash_seed():
    code = "from pipelines.labels import class_map; print(list(class_map(['1', '01', ' 1', 'b', 'a'])))"
    outputs = set()
    for seed in ("0", "1", "2", "3", "4", "5"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outputs.add(subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                                   text=True).stdout.strip())
    assert outputs == {"[' 1', '01', '1', 'a', 'b']"}


NFC, NFD = unicodedata.normalize("NFC", "Café"), unicodedata.normalize("NFD", "Café")


def test_spellings_that_print_alike_are_one_class():
    assert NFC != NFD  # the input really holds two spellings
    assert clean_label(NFC) == clean_label(NFD) == (NFC, None)
    assert clean_label(" 3") == clean_label("3\t") == clean_label(3) == ("3", None)
    assert class_map(clean_label(v)[0] for v in (NFC, NFD, " 3", "3", 3)) == {"3": 0, NFC: 1}


@pytest.mark.parametrize("value, name", [
    (7, "7"), (-3, "-3"), (0, "0"), (3.0, "3"),  # integers stay integer labels (JSON writers turn 1 into 1.0)
    ("pos", "pos"), ("big cat", "big cat"), ("x" * MAX_LABEL_CHARS, "x" * MAX_LABEL_CHARS),
    ("\u05e9\u05dc\u05d5\u05dd", "\u05e9\u05dc\u05d5\u05dd"),
    ("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",) * 2,  # a zero-width non-joiner spells Persian
])
def test_labels_that_name_a_class(value, name):
    assert clean_label(value) == (name, None)


@pytest.mark.parametrize("value, reason", [
    ("", "missing label: the label is empty"),
    (" \t ", "missing label: the label is empty"),
    (None, "missing label: the label is null"),
    ("x" * 10_240, f"label too long: the label has 10240 characters, the limit is {MAX_LABEL_CHARS}"),
    ("x" * (MAX_LABEL_CHARS + 1), f"label too long: the label has 257 characters, the limit is {MAX_LABEL_CHARS}"),
    ("first line\nsecond line", "label has a control character: \\n in the label"),
    ("a\tb", "label has a control character: \\t in the label"),
    ("nul\x00", "label has a control character: \\x00 in the label"),
    ("a\u2028b", "label has a control character: \\u2028 in the label"),
    (True, "unmappable label: the label is true, a JSON boolean; a label is a string or an integer"),
    (False, "unmappable label: the label is false, a JSON boolean; a label is a string or an integer"),
    (1.5, "unmappable label: the label is 1.5, a JSON number that is not an integer; a label is a string or an "
          "integer"),
    ([1], "unmappable label: the label is [1], a JSON array; a label is a string or an integer"),
    ({"a": 1}, 'unmappable label: the label is {"a": 1}, a JSON object; a label is a string or an integer'),
])
def test_what_can_name_no_class_is_rejected_with_a_reason_that_names_it(value, reason):
    assert clean_label(value) == (None, reason)


def test_reasons_group_into_few_categories_and_name_where_the_label_came_from():
    labels = ["x" * 300, "x" * 10_240, "a\nb", "a\rb", True, 0.5, 2.5, [], {}, None, ""]
    categories = {clean_label(v)[1].split(":")[0] for v in labels}
    assert categories == {"label too long", "label has a control character", "unmappable label", "missing label"}
    assert clean_label("x\ny", what="the class folder name") == (
        None, "label has a control character: \\n in the class folder name")
    assert len(clean_label("x" * 10_240)[1]) < 100  # the label itself is never in the reason
