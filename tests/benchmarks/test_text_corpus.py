"""benchmarks.text_corpus on a fake site-packages tree: docstrings read without importing, labels by package,
exact windows, duplicates and unparsable files handled, the seeded cap."""
from __future__ import annotations

import json
import os

import pytest

from benchmarks import text_corpus as tc


def words(prefix: str, n: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


SHARED = words("shared", 10)  # the same docstring in two packages: its window has two labels


def make_tree(root) -> str:
    """site-packages with alpha (3 modules, a nested one, a SyntaxError, a non-UTF-8 file), beta and gamma."""
    site = root / "site-packages"
    alpha, beta, gamma = (site / name for name in ("alpha", "beta", "gamma"))
    for folder in (alpha / "sub", beta, gamma, alpha / "__pycache__"):
        folder.mkdir(parents=True)
    (alpha / "__init__.py").write_text(f'"""{words("a", 24)}"""\n\nraise SystemExit("never imported")\n')
    (alpha / "core.py").write_text(
        f'"""{words("core", 10)}"""\n\n'
        f'class Thing:\n    """{words("thing", 10)}\n\n       indented   second   paragraph"""\n\n'
        f'    def method(self):\n        """{words("method", 7)}"""\n\n'
        f'async def run():\n    """{words("run", 4)}"""\n\n'
        f'def nodoc():\n    x = "not a docstring"\n')
    (alpha / "sub" / "deep.py").write_text(f'"""{SHARED}"""\n')
    (alpha / "broken.py").write_text('"""A docstring of a file that does not parse."""\ndef f(:\n')
    (alpha / "latin.py").write_bytes(b'"""caf\xe9 na\xefve"""\n')          # not UTF-8 and no coding cookie
    (alpha / "__pycache__" / "cached.py").write_text(f'"""{words("cache", 50)}"""\n')
    (alpha / "README.txt").write_text(words("readme", 50))
    (beta / "one.py").write_text(f'"""{SHARED}"""\n')
    (beta / "two.py").write_text(f'"""{words("b", 100)}"""\n')
    for i in range(6):  # 6 modules of 2 windows each, plus a repeat of the first module (kept once)
        (gamma / f"m{i}.py").write_text(f'"""{words(f"g{i}x", 8)}"""\n')
    (gamma / "m_repeat.py").write_text(f'"""{words("g0x", 8)}"""\n')
    return str(site)


def test_docstrings_in_source_order_cleaned_and_never_imported(tmp_path):
    site = make_tree(tmp_path)
    found = tc.docstrings(os.path.join(site, "alpha", "core.py"))
    assert found == [words("core", 10), words("thing", 10) + "\n\nindented   second   paragraph",
                     words("method", 7), words("run", 4)]
    assert tc.docstrings(os.path.join(site, "alpha", "__init__.py")) == [words("a", 24)]  # SystemExit not raised


def test_unparsable_files_raise_and_are_skipped_and_counted(tmp_path):
    site = make_tree(tmp_path)
    with pytest.raises(SyntaxError):
        tc.docstrings(os.path.join(site, "alpha", "broken.py"))
    with pytest.raises(SyntaxError):
        tc.docstrings(os.path.join(site, "alpha", "latin.py"))
    corpus = tc.build([site], ["alpha", "beta"], words=10, per_class=100, seed=0)
    assert corpus.skipped == {"alpha": ["broken.py", "latin.py"], "beta": []}
    assert corpus.files == {"alpha": 5, "beta": 2}  # __pycache__ and non-.py files are not read
    table = tc.summary_table(corpus)
    assert "| alpha | 5 | 2 |" in table and "| all | 7 | 2 |" in table


@pytest.mark.parametrize("n, size, expected", [
    (0, 4, []), (3, 4, [3]), (2, 4, [2]), (1, 4, []), (8, 4, [4, 4]), (9, 4, [4, 4]), (10, 4, [4, 4, 2]),
    (5, 1, [1] * 5),
])
def test_windows_have_exact_sizes_and_a_short_tail_is_dropped(n, size, expected):
    cut = tc.windows(words("w", n), size)
    assert [len(w.split()) for w in cut] == expected
    assert " ".join(cut) == " ".join(words("w", n).split()[:sum(expected)])  # in order, nothing overlaps


def test_windows_normalise_whitespace_and_refuse_zero():
    assert tc.windows("a\n\n b\t c  d ", 2) == ["a b", "c d"]
    with pytest.raises(ValueError, match="words 0"):
        tc.windows("a b", 0)


def test_rows_are_windows_of_their_own_package(tmp_path):
    site = make_tree(tmp_path)
    corpus = tc.build([site], ["alpha", "beta"], words=10, per_class=100, seed=0)
    by_label = {label: sorted(r["text"] for r in corpus.rows if r["label"] == label) for label in ("alpha", "beta")}
    # alpha: __init__ 24 words -> 2 windows (the 4-word tail dropped); core: 10+10+3+7+4 = 34 words joined -> 3
    # windows (the 4-word tail dropped); deep.py is the shared window, dropped
    assert by_label["alpha"] == sorted([words("a", 10), " ".join(words("a", 24).split()[10:20]),
                                        words("core", 10),
                                        words("thing", 10),
                                        "indented second paragraph " + words("method", 7)])
    assert by_label["beta"] == sorted(" ".join(words("b", 100).split()[i:i + 10]) for i in range(0, 100, 10))
    assert all(len(r["text"].split()) == 10 for r in corpus.rows)
    assert corpus.counts() == {"alpha": 5, "beta": 10}


def test_a_window_of_two_packages_is_dropped_from_both_and_a_repeat_within_one_kept_once(tmp_path):
    site = make_tree(tmp_path)
    corpus = tc.build([site], ["alpha", "beta", "gamma"], words=4, per_class=1000, seed=0)
    texts = [r["text"] for r in corpus.rows]
    shared = tc.windows(SHARED, 4)
    assert shared and not set(shared) & set(texts)
    assert texts.count(" ".join(words("g0x", 8).split()[:4])) == 1
    assert len(texts) == len(set(texts))
    assert corpus.duplicates["gamma"] == 2 and corpus.duplicates["alpha"] == corpus.duplicates["beta"] == 3
    assert corpus.counts()["gamma"] == 12


def test_cap_respected_and_the_sample_seeded(tmp_path):
    site = make_tree(tmp_path)
    full = tc.build([site], ["beta", "gamma"], words=4, per_class=1000, seed=0)
    capped = {seed: tc.build([site], ["beta", "gamma"], words=4, per_class=5, seed=seed) for seed in (0, 1)}
    again = tc.build([site], ["beta", "gamma"], words=4, per_class=5, seed=0)
    assert full.counts() == {"beta": 28, "gamma": 12}  # beta: 3 windows of SHARED (unshared here) + 25
    assert capped[0].counts() == {"beta": 5, "gamma": 5}
    assert again.rows == capped[0].rows                                          # same seed, same rows, same order
    assert tc.to_jsonl(again.rows) == tc.to_jsonl(capped[0].rows)
    assert {r["text"] for r in capped[1].rows} != {r["text"] for r in capped[0].rows}  # another seed, another sample
    assert {r["text"] for r in capped[0].rows} <= {r["text"] for r in full.rows}


def test_order_is_shuffled_with_the_seed(tmp_path):
    site = make_tree(tmp_path)
    one, other = (tc.build([site], ["beta", "gamma"], words=4, per_class=1000, seed=s) for s in (0, 1))
    assert sorted(map(str, one.rows)) == sorted(map(str, other.rows))   # no cap: the same rows
    assert one.rows != other.rows
    assert [r["label"] for r in one.rows] != sorted(r["label"] for r in one.rows)  # classes mixed, not in blocks


def test_a_missing_package_is_named_before_anything_is_read(tmp_path):
    site = make_tree(tmp_path)
    with pytest.raises(tc.MissingPackageError, match=r"package 'nonesuch' is not installed: no folder nonesuch/ in "
                                                     + str(site)):
        tc.build([site], ["alpha", "nonesuch"])
    with pytest.raises(ValueError, match="named twice"):
        tc.build([site], ["alpha", "alpha"])


def test_main_writes_jsonl_once_and_leaves_an_unchanged_file_alone(tmp_path, capsys):
    site = make_tree(tmp_path)
    out = tmp_path / "out" / "corpus.jsonl"
    argv = ["--output", str(out), "--site-packages", site, "--packages", "alpha,beta", "--words", "10"]
    assert tc.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| beta | 2 | 0 | 11 | 1 | 10 |" in printed and "skipped in alpha: broken.py, latin.py" in printed
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(rows, key=str) == sorted(tc.build([site], ["alpha", "beta"], words=10).rows, key=str)
    assert list(rows[0]) == ["text", "label"]
    os.utime(out, ns=(1_000_000_000, 1_000_000_000))
    assert tc.main(argv) == 0
    assert "unchanged:" in capsys.readouterr().out and out.stat().st_mtime_ns == 1_000_000_000
    assert tc.main(argv[:-1] + ["9"]) == 0
    assert out.stat().st_mtime_ns != 1_000_000_000


def test_main_exits_2_naming_a_missing_package(tmp_path, capsys):
    site = make_tree(tmp_path)
    out = tmp_path / "corpus.jsonl"
    assert tc.main(["--output", str(out), "--site-packages", site, "--packages", "alpha,nonesuch"]) == 2
    assert "package 'nonesuch' is not installed" in capsys.readouterr().err
    assert not out.exists()
