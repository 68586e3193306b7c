"""The checks both preprocessing jobs share (jobs.common), through each job's command line."""
from __future__ import annotations

import pytest

from core.paths import to_url
from jobs import preprocess_images, preprocess_sequences


@pytest.mark.parametrize("job", [preprocess_images, preprocess_sequences])
@pytest.mark.parametrize("output, relation", [
    ("raw", "is the same folder as"),
    ("raw/out", "is inside"),
    ("raw/a/../out/", "is inside"),
    ("link-to-raw/out", "is inside"),
    (".", "contains"),
])
def test_an_output_inside_the_input_or_around_it_is_refused_naming_both_flags(tmp_path, capsys, monkeypatch, job,
                                                                               output, relation):
    raw = tmp_path / "raw"
    (raw / "a").mkdir(parents=True)
    (raw / "a" / "part.jsonl").write_text('{"text": "good", "label": "pos"}\n')
    (tmp_path / "link-to-raw").symlink_to(raw)
    monkeypatch.chdir(tmp_path)
    assert job.main(["--input", "raw", "--output", output, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--output {to_url(output)} {relation} --input {to_url('raw')}: keep the dataset folder and the input " \
           "apart" in err


def test_a_sibling_with_the_input_as_name_prefix_is_not_inside_it(tmp_path):
    from jobs.common import check_apart

    check_apart(f"file://{tmp_path}/raw", f"file://{tmp_path}/raw_ds")  # no error
    check_apart("s3://bucket/raw", "s3://bucket/datasets/raw")
