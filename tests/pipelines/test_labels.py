"""Label maps: integer labels by a strict pattern, ties broken by the label text (never by arrival order)."""
import itertools
import os
import subprocess
import sys

from pipelines.labels import class_map


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
