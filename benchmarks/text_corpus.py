"""A real-text classification set: windows of the docstrings of installed packages, labelled by package.

Usage:
    python -m benchmarks.text_corpus --output runs/bench/text/corpus.jsonl
    python -m benchmarks.text_corpus --output corpus.jsonl --packages numpy,sympy,networkx --per-class 500

Nobody wrote this text for the purpose: it is the module, class and function docstrings of the .py files of
packages the project's requirements install, read with ``ast`` (never imported) from the running interpreter's
site-packages. Each module's docstrings are joined, whitespace runs collapsed, and cut into non-overlapping
windows of ``words`` words; a window that occurs more than once is kept once when every copy has one label and
dropped when the copies have several (its label would be ambiguous); each class is capped at ``per_class`` rows
by a seeded sample. Files that do not parse are skipped and counted.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import random
import sys
import sysconfig
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

from core.atomic import write_bytes

# Nine packages of distinct topics that requirements/runtime.txt puts into the venv (directly, or as torch's and
# s3fs's dependencies), each with at least 20,000 words of docstrings. pandas is left out: pyspark.pandas carries
# adapted copies of its docstrings, which would make two classes of one text.
PACKAGES = ("numpy", "torch", "pyspark", "matplotlib", "sympy", "networkx", "setuptools", "PIL", "botocore")
WORDS, PER_CLASS, SEED = 40, 330, 0
UNPARSABLE = (SyntaxError, ValueError, RecursionError)  # bad syntax; bad encoding, null bytes; absurd nesting
_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


class MissingPackageError(ValueError):
    """A requested package is not a folder in any of the site-packages searched."""


@dataclass(frozen=True)
class Corpus:
    """What ``build`` made: the rows (shuffled) and, per package, what was read and dropped on the way."""
    rows: list[dict[str, str]]          # {"text": window, "label": package}
    files: dict[str, int]               # package -> .py files found
    skipped: dict[str, list[str]]       # package -> files that did not parse (paths below the package)
    windows: dict[str, int]             # package -> windows cut, before duplicates and the cap
    duplicates: dict[str, int]          # package -> windows dropped as duplicates
    packages: tuple[str, ...]

    def counts(self) -> dict[str, int]:
        """Rows per package, in ``packages`` order."""
        return class_counts(self.rows, self.packages)


def default_site_packages() -> list[str]:
    """The running interpreter's site-packages folders (purelib, then platlib when it differs)."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def docstrings(path: str) -> list[str]:
    """The module, class and function docstrings of the Python file ``path``, in source order, cleaned as
    ``inspect.cleandoc`` does. Raises SyntaxError, ValueError (bad encoding, null bytes) or RecursionError when
    the file does not parse."""
    with open(path, "rb") as fh:
        tree = ast.parse(fh.read(), filename=path)
    found, stack = [], [tree]
    while stack:  # depth first, in source order, without recursion (generated files nest deeply)
        node = stack.pop()
        if isinstance(node, _DOCUMENTED):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                found.append(doc)
        stack.extend(reversed(list(ast.iter_child_nodes(node))))
    return found


def windows(text: str, words: int) -> list[str]:
    """``text``'s whitespace-separated words in non-overlapping windows of ``words`` words, joined by one space;
    a trailing window shorter than half of ``words`` is dropped."""
    if words < 1:
        raise ValueError(f"words {words}: expected at least 1")
    tokens = text.split()
    cut = [tokens[i:i + words] for i in range(0, len(tokens), words)]
    if cut and 2 * len(cut[-1]) < words:
        cut.pop()
    return [" ".join(window) for window in cut]


def package_dir(site_packages: Sequence[str], package: str) -> str:
    """The folder of ``package`` in the first of ``site_packages`` that has it; MissingPackageError naming the
    package and the folders searched otherwise."""
    for root in site_packages:
        candidate = os.path.join(root, package)
        if os.path.isdir(candidate):
            return candidate
    raise MissingPackageError(f"package {package!r} is not installed: no folder {package}/ in "
                              f"{', '.join(site_packages)} (install it, or leave it out of --packages)")


def module_files(folder: str) -> list[str]:
    """The .py files below ``folder`` (paths relative to it, sorted); __pycache__ and linked folders skipped."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = os.path.relpath(root, folder)
        found += [os.path.normpath(os.path.join(rel, f)) for f in files if f.endswith(".py")]
    return sorted(found)


def package_windows(folder: str, words: int) -> tuple[list[str], int, list[str]]:
    """(windows of every module of the package at ``folder`` in sorted file order, files found, files skipped
    because they do not parse)."""
    cut, skipped = [], []
    files = module_files(folder)
    for rel in files:
        try:
            docs = docstrings(os.path.join(folder, rel))
        except UNPARSABLE:
            skipped.append(rel)
            continue
        cut += windows(" ".join(docs), words)
    return cut, len(files), skipped


def deduplicate(windows_by_label: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each label's windows, order kept, with every text that occurs more than once kept at its first occurrence
    when all its copies have one label and dropped everywhere when they have several."""
    labels, seen = defaultdict(set), set()
    for label, texts in windows_by_label.items():
        for text in texts:
            labels[text].add(label)
    kept = {}
    for label, texts in windows_by_label.items():
        kept[label] = []
        for text in texts:
            if len(labels[text]) == 1 and text not in seen:
                seen.add(text)
                kept[label].append(text)
    return kept


def sample(texts: list[str], per_class: int, seed: int, label: str) -> list[str]:
    """At most ``per_class`` of ``texts``, in their order: a sample drawn by a generator seeded with ``seed`` and
    ``label`` (so one class's sample does not depend on the other classes)."""
    if len(texts) <= per_class:
        return list(texts)
    chosen = sorted(random.Random(f"{seed}:{label}").sample(range(len(texts)), per_class))
    return [texts[i] for i in chosen]


def build(site_packages: Sequence[str], packages: Sequence[str] = PACKAGES, *, words: int = WORDS,
          per_class: int = PER_CLASS, seed: int = SEED) -> Corpus:
    """The corpus of ``packages`` found in ``site_packages``: rows ``{"text", "label"}`` shuffled with ``seed``,
    with the counts of each step. MissingPackageError before anything is read if a package is not there."""
    if per_class < 1:
        raise ValueError(f"per_class {per_class}: expected at least 1")
    if len(set(packages)) != len(packages):
        raise ValueError(f"packages {', '.join(packages)}: a package is named twice")
    folders = {package: package_dir(site_packages, package) for package in packages}
    cut, files, skipped = {}, {}, {}
    for package, folder in folders.items():
        cut[package], files[package], skipped[package] = package_windows(folder, words)
    unique = deduplicate(cut)
    rows = [{"text": text, "label": package} for package in packages
            for text in sample(unique[package], per_class, seed, package)]
    random.Random(seed).shuffle(rows)
    return Corpus(rows=rows, files=files, skipped=skipped, windows={p: len(cut[p]) for p in packages},
                  duplicates={p: len(cut[p]) - len(unique[p]) for p in packages}, packages=tuple(packages))


def class_counts(rows: Iterable[dict[str, str]], labels: Sequence[str] = ()) -> dict[str, int]:
    """Rows per label: ``labels`` first, in their order (0 when absent), then any other label sorted."""
    counts = dict.fromkeys(labels, 0)
    for row in rows:
        counts[row["label"]] = counts.get(row["label"], 0) + 1
    return {**{k: counts[k] for k in labels}, **{k: counts[k] for k in sorted(set(counts) - set(labels))}}


def to_jsonl(rows: Iterable[dict[str, str]]) -> bytes:
    """One JSON object per line, UTF-8, keys in the order text, label."""
    return "".join(json.dumps({"text": r["text"], "label": r["label"]}, ensure_ascii=False) + "\n"
                   for r in rows).encode("utf-8")


def write_jsonl(path: str, rows: Iterable[dict[str, str]]) -> bool:
    """Write ``rows`` as JSON Lines to ``path`` atomically; True when written, False when the file already held
    exactly these bytes (then it is left untouched, its modification time too: an incremental preprocessing run
    sees it unchanged)."""
    data = to_jsonl(rows)
    if os.path.isfile(path):
        with open(path, "rb") as fh:
            if fh.read() == data:
                return False
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_bytes(path, data)
    return True


def summary_table(corpus: Corpus) -> str:
    """A markdown table: per package the .py files, those skipped, windows cut, duplicates dropped, rows kept."""
    lines = ["| package | .py files | unparsable (skipped) | windows | duplicates dropped | rows |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    counts = corpus.counts()
    for p in corpus.packages:
        lines.append(f"| {p} | {corpus.files[p]:,} | {len(corpus.skipped[p])} | {corpus.windows[p]:,} | "
                     f"{corpus.duplicates[p]:,} | {counts[p]:,} |")
    total = lambda values: f"{sum(values):,}"  # noqa: E731
    lines.append(f"| all | {total(corpus.files.values())} | {total(len(s) for s in corpus.skipped.values())} | "
                 f"{total(corpus.windows.values())} | {total(corpus.duplicates.values())} | "
                 f"{total(counts.values())} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks.text_corpus", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    parser.add_argument("--output", required=True, metavar="FILE", help="the JSON Lines file to write")
    parser.add_argument("--packages", default=",".join(PACKAGES), metavar="A,B,...",
                        help=f"comma-separated top-level packages, one class each (default: {','.join(PACKAGES)})")
    parser.add_argument("--site-packages", action="append", metavar="DIR",
                        help="folder to look for the packages in; repeatable (default: this interpreter's "
                             "site-packages: " + ", ".join(default_site_packages()) + ")")
    parser.add_argument("--words", type=int, default=WORDS, metavar="N", help=f"words per row (default: {WORDS})")
    parser.add_argument("--per-class", type=int, default=PER_CLASS, metavar="N",
                        help=f"rows per class at most, a seeded sample (default: {PER_CLASS})")
    parser.add_argument("--seed", type=int, default=SEED, help=f"seeds the sample and the row order (default: {SEED})")
    args = parser.parse_args(argv)
    args.packages = [p.strip() for p in args.packages.split(",") if p.strip()]
    if not args.packages:
        parser.error("--packages: name at least one package")
    if args.words < 1 or args.per_class < 1:
        parser.error(f"--words {args.words} / --per-class {args.per_class}: expected at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        corpus = build(args.site_packages or default_site_packages(), args.packages, words=args.words,
                       per_class=args.per_class, seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    written = write_jsonl(args.output, corpus.rows)
    print(summary_table(corpus))
    for package in corpus.packages:
        if corpus.skipped[package]:
            print(f"skipped in {package}: {', '.join(corpus.skipped[package])}")
    print(f"{'wrote' if written else 'unchanged:'} {args.output} ({len(corpus.rows):,} rows of {args.words} words)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
