"""The README shows what the commands print: its image example runs here as written (spark-submit included) and its
summary lines are compared with the output ("..." stands for any text; times and snapshot ids vary)."""
from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from tests.conftest import REPO, subprocess_env, tool

README = (REPO / "README.md").read_text()


def section(heading: str) -> str:
    return README.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def commands(block: str, *starts: str) -> list[list[str]]:
    """The commands of a shell block that begin with one of ``starts`` (continuation lines joined)."""
    joined = block.replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line.startswith(starts)]


def as_pattern(shown: str) -> re.Pattern:
    pattern = re.escape(shown)
    pattern = pattern.replace(re.escape("..."), ".*")
    pattern = re.sub(r"\\\(\d+\\\.\d+s\\\)", r"\\(\\d+\\.\\ds\\)", pattern)  # the job's time
    pattern = re.sub(r"\d{6}\\-\d{8}T\d{6}Z", r"\\d{6}-\\d{8}T\\d{6}Z", pattern)  # snapshot ids
    return re.compile(pattern + "$")


def assert_shows(printed: str, shown: list[str]) -> None:
    """Every line the README shows matches a line printed, in order."""
    lines = iter(printed.splitlines())
    for expected in shown:
        pattern = as_pattern(expected)
        assert any(pattern.match(line) for line in lines), f"README line not printed: {expected}\n{printed}"


def test_the_pattern_matching_is_strict():
    assert as_pattern("a (1.5s) 000001-20261202T022843Z b ...").match("a (30.1s) 000002-20261203T010101Z b xyz")
    assert not as_pattern("  train  251 rows").match("  train  250 rows")
    with pytest.raises(AssertionError, match="README line not printed"):
        assert_shows("one\ntwo\n", ["two", "one"])


@pytest.mark.spark
@pytest.mark.slow  # a whole run end to end: make test-slow
def test_the_image_example_prints_what_the_readme_shows(tmp_path):
    part = section("## Running the jobs yourself")
    block = "".join(b.split("```", 1)[0] for b in part.split("```bash\n")[1:])  # the section's shell blocks
    generate, preprocess = commands(block, "bigtrain generate-images", "spark-submit --master 'local[*]' jobs/preprocess_images.py")
    env = subprocess_env()
    done = subprocess.run([tool("bigtrain"), *generate[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    preprocess = [tool("spark-submit"), *[str(REPO / a) if a.startswith("jobs/") else a for a in preprocess[1:]]]
    done = subprocess.run(preprocess, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = part.split("It ends with a summary:\n\n```\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(summary) >= 5 and summary[0].startswith("preprocess-images: ")
    assert_shows(done.stdout, summary)
