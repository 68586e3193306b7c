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


def test_the_summary_warns_of_classes_missing_from_validation_or_test():
    from jobs.common import format_summary

    def split(per_class):
        return {"rows": sum(per_class.values()), "row_groups": 1, "per_class": per_class}

    summary = {"records_read": 62, "rows_written": 61, "rejected": 1, "rejected_by_reason": {"broken JSON": 1},
               "rejected_url": "file:///ds/rejected", "seconds": 1.0, "output": "file:///ds", "snapshot": "000001-x",
               "run": "first snapshot", "processed": (62, 1),
               "splits": {"train": split({"1": 1, "neg": 24, "pos": 24}), "validation": split({"1": 0, "neg": 3, "pos": 3}),
                          "test": split({"1": 0, "neg": 3, "pos": 3})}}
    text = format_summary(summary, job="preprocess-sequences", unit="records")
    assert "  warning: validation has no rows of 1 of the 3 classes in train: 1" in text
    assert "  warning: test has no rows of 1 of the 3 classes in train: 1" in text
    summary["splits"]["test"] = split({"1": 1, "neg": 3, "pos": 3})
    summary["splits"]["validation"] = split({"1": 1, "neg": 3, "pos": 3})
    assert "warning" not in format_summary(summary, job="preprocess-sequences", unit="records")


def test_every_flag_backed_by_a_config_key_shows_its_default_in_help():
    from core.config import read_defaults
    from jobs import generate_sample, predict, preprocess_images, preprocess_sequences, train

    parsers = {"sample_images": generate_sample.images_parser(), "sample_texts": generate_sample.texts_parser(),
               "predict": predict.build_parser(), "preprocess_images": preprocess_images.build_parser(),
               "preprocess_sequences": preprocess_sequences.build_parser(), "train": train.build_parser()}
    defaults = read_defaults()
    for section, parser in parsers.items():
        backed = [a for a in parser._actions if a.dest in defaults[section] and a.option_strings]
        assert backed, section
        for action in backed:
            assert action.help and "default" in action.help, f"{section}: {action.option_strings[0]} {action.help!r}"


@pytest.mark.parametrize("command, counted", [(["generate-images", "--per-class", "2"], "20 images"),
                                              (["generate-texts", "--records", "40"], "40 reviews")])
def test_the_generators_print_their_summary_once(tmp_path, command, counted):
    import subprocess

    from tests.conftest import subprocess_env, tool

    done = subprocess.run([tool("bigtrain"), *command, "--output", str(tmp_path / "out")], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (done.stdout + done.stderr).count(counted) == 1, done.stdout + done.stderr


@pytest.mark.parametrize("job", [preprocess_images, preprocess_sequences])
def test_an_output_bigtrain_cannot_write_is_refused_before_any_spark_work_naming_what_is_missing(tmp_path, capsys,
                                                                                                monkeypatch, job):
    import fsspec
    from fsspec.registry import _registry

    from pipelines import session

    class NoHdfsClient(fsspec.AbstractFileSystem):  # what fsspec's hdfs:// is on a driver without libhdfs
        protocol = "hdfs"

        def __init__(self, *args, **kwargs):
            raise OSError("Unable to load libhdfs: libhdfs.so: cannot open shared object file\ndlopen(...) failed")

    def no_spark(**kwargs):
        raise AssertionError("a Spark session was started")

    monkeypatch.setitem(_registry, "hdfs", NoHdfsClient)
    monkeypatch.setattr(session, "build_spark", no_spark)
    (tmp_path / "raw" / "a").mkdir(parents=True)
    (tmp_path / "raw" / "a" / "part.jsonl").write_text('{"text": "good", "label": "pos"}\n')
    for output, missing in [("hdfs://nn:8020/datasets/x", "Unable to load libhdfs: libhdfs.so: cannot open shared "
                                                          "object file); for hdfs:// the driver needs pyarrow's HDFS "
                                                          "client: JAVA_HOME, libhdfs.so"),
                            ("nosuchfs://bucket/x", "Protocol not known: nosuchfs)")]:
        assert job.main(["--input", str(tmp_path / "raw"), "--output", output, "--quiet"]) == 2
        assert capsys.readouterr().err.startswith(
            f"error: --output {output}: bigtrain writes a dataset's metadata and manifest through fsspec, which "
            f"cannot reach {output.split(':')[0]}:// here ({missing}")


def test_class_gaps_name_a_class_train_has_no_row_of_and_the_classes_other_splits_lack():
    from jobs.common import class_gaps

    splits = {"train": {"per_class": {"0": 5, "1": 4, "2": 0}}, "validation": {"per_class": {"0": 1, "1": 0}},
              "test": {"per_class": {"0": 1, "1": 1}}}
    assert class_gaps(splits) == [
        "train has no rows of 1 of the 3 classes: 2 (a model never learns them)",
        "validation has no rows of 1 of the 2 classes in train: 1"]


@pytest.mark.parametrize("job", [preprocess_images, preprocess_sequences])
def test_both_jobs_take_allow_removals(job):
    parser = job.build_parser()
    assert parser.parse_args(["--input", "in", "--output", "out"]).allow_removals is False
    assert parser.parse_args(["--input", "in", "--output", "out", "--allow-removals"]).allow_removals is True
    assert "--allow-removals" in parser.format_help() and "max_removed_fraction" in parser.format_help()


@pytest.mark.parametrize("job", [preprocess_images, preprocess_sequences])
def test_duplicates_is_a_flag_of_both_jobs_over_its_config_key(job):
    parser = job.build_parser()
    base = ["--input", "in", "--output", "out"]
    assert job.load_config(parser.parse_args(base)).duplicates == "reject"
    assert job.load_config(parser.parse_args([*base, "--duplicates", "keep"])).duplicates == "keep"
    section = job.__name__.rsplit(".", 1)[1]
    assert job.load_config(parser.parse_args([*base, "--set", f"{section}.duplicates=ignore"])).duplicates == "ignore"


def test_an_incremental_summary_says_which_totals_are_the_snapshots_and_which_this_runs():
    from jobs.common import format_summary

    summary = {"records_read": 304, "rows_written": 300, "rejected": 4, "seconds": 1.5, "output": "file:///ds",
               "snapshot": "000002-20261206T000000Z", "run": "1 new, 0 changed, 0 removed, 303 unchanged input files",
               "processed": (1, 0), "splits": {}, "rejected_url": "file:///ds/rejected", "rejected_by_reason": {}}
    lines = format_summary(summary, job="preprocess-images", unit="files").splitlines()
    assert lines[0] == ("preprocess-images: 304 files in the snapshot (1 read by this run, 303 carried over) = 300 rows "
                        "written + 4 rejected (1.5s)")
    assert lines[2].endswith("303 unchanged input files; this run read 1 file, rejected 0")
    full = format_summary({**summary, "processed": (304, 4), "run": "first snapshot"}, job="preprocess-images",
                          unit="files").splitlines()
    assert full[0] == "preprocess-images: 304 files read = 300 rows written + 4 rejected (1.5s)"
    assert full[2].endswith("first snapshot; this run read 304 files, rejected 4")



@pytest.mark.parametrize("job", [preprocess_images, preprocess_sequences])
def test_remote_picks_a_spark_connect_server_and_excludes_master(job, monkeypatch):
    from core.errors import UsageError
    from jobs.common import spark_target

    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    parse = job.build_parser().parse_args
    base = ["--input", "in", "--output", "out"]
    assert spark_target(parse(base), "local[*]") == ("local[*]", None)
    assert spark_target(parse([*base, "--remote", "sc://h:15002"]), "local[*]") == (None, "sc://h:15002")
    with pytest.raises(UsageError, match=r"--remote sc://h:15002 and --master local\[2\]: give one"):
        spark_target(parse([*base, "--remote", "sc://h:15002", "--master", "local[2]"]), "local[*]")
    with pytest.raises(UsageError, match="--remote h:15002: expected a Spark Connect URL, sc://HOST:PORT"):
        spark_target(parse([*base, "--remote", "h:15002"]), "local[*]")
    monkeypatch.setenv("SPARK_REMOTE", "sc://env:15002")
    assert spark_target(parse(base), "local[*]") == (None, "sc://env:15002")
    assert spark_target(parse([*base, "--master", "local[2]"]), "local[*]") == ("local[2]", None)


@pytest.mark.parametrize("name, argv, refused", [
    ("train", ["--data", "d", "--output", "o", "--epoch", "3"], "unrecognized arguments: --epoch 3"),
    ("preprocess-images", ["--input", "i", "--output", "o", "--image-siz", "32"], "unrecognized arguments: --image-siz"),
    ("predict", ["--checkpoint", "c", "--input", "i", "--output", "o", "--keep", "id"], "unrecognized arguments: --keep"),
    ("datasets", ["gc", "ds", "--kee", "3"], "required: --keep"),
    ("pipeline", ["run", "p.yaml", "--forc"], "unrecognized arguments: --forc (did you mean --force?)"),
])
def test_a_shortened_flag_is_refused_on_the_command_line_and_in_a_pipeline_stage(name, argv, refused):
    """argparse would take an unambiguous prefix (--epoch for --epochs): a typo that happens to be a prefix would
    run with a setting the user did not write, and a pipeline stage's check would pass it."""
    from jobs.cli import argument_problem

    problem = argument_problem(name, argv)
    assert problem is not None and refused in problem
