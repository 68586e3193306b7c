"""The brake on removals and the refusal of empty or single-class snapshots (pipelines.incremental), without Spark:
what vanished from an input listing, and what a run may commit."""
from __future__ import annotations

from dataclasses import asdict
from types import SimpleNamespace

import pytest

from core.config import load_section
from core.errors import EXIT_REMOVALS, ConfigError, RemovalsError
from dataset.manifest import Manifest, SplitCounts
from pipelines import image_dataset, incremental, sequence_dataset
from pipelines.images import split_relpath

ROOT = "file:///data/in"


def listing(*relpaths: str) -> dict[str, tuple[str, int, int]]:
    return {rel: (f"{ROOT}/{rel}", 100, 1_700_000_000_000) for rel in relpaths}


def class_of(path: str) -> str | None:
    return split_relpath(path, ROOT)[1]


FILES = [f"{name}/{i}.png" for name in ("cat", "dog") for i in range(4)] + ["owl/0.png", "owl/1.png"]
ROWS = {"cat": 4, "dog": 4, "owl": 2}


def lost(current: list[str], **options) -> str | None:
    return incremental.lost_inputs(listing(*FILES), listing(*current), **{
        "rows_per_class": ROWS, "max_removed_fraction": 0.5, "class_of": class_of, **options})


def test_a_few_files_removed_pass_the_brake():
    assert lost(FILES) is None
    assert lost(FILES[1:]) is None                       # 1 of 10, cat keeps 3 files
    assert lost(FILES[3:]) is None                       # 3 of 10, cat keeps 1 file
    # 5 of 10 is not more than half, and cat, every file gone, had no rows (all its files were rejected)
    assert lost(FILES[5:], rows_per_class={**ROWS, "cat": 0}) is None


def test_more_than_max_removed_fraction_gone_is_named_with_the_first_paths():
    said = lost(FILES[6:])
    assert said.startswith("6 of the 10 input files are gone (60.0%, more than max_removed_fraction 50.0%): "
                           "cat/0.png, cat/1.png, cat/2.png, cat/3.png, dog/0.png, ...")
    assert said.endswith("; classes that lost all their files: cat")
    assert lost(FILES[6:], max_removed_fraction=0.6) == ("6 of the 10 input files are gone (60.0%): cat/0.png, "
                                                         "cat/1.png, cat/2.png, cat/3.png, dog/0.png, ...; classes "
                                                         "that lost all their files: cat")


def test_a_class_that_lost_every_file_is_named_below_the_fraction():
    said = lost(FILES[:8])
    assert said == ("2 of the 10 input files are gone (20.0%): owl/0.png, owl/1.png; classes that lost all their "
                    "files: owl")
    assert lost(FILES[:8], class_of=None) is None        # texts: a file's name does not tell its labels
    assert lost(FILES[:8] + ["owl/new.png"]) is None     # replaced: the class still has a file


def run_plan(inputs, previous=None, **fields) -> incremental.RunPlan:
    return incremental.RunPlan("file:///data/ds", "image", ROOT, "incremental", inputs, {}, previous=previous,
                               **fields)


def previous_snapshot(files: int = 10):
    """What check_removals reads of the previous manifest."""
    splits = {"train": SplitCounts(rows=10, row_groups=1, per_class=dict(ROWS))}
    return SimpleNamespace(snapshot_id="000001-x", splits=splits, snapshot=SimpleNamespace(
        inputs=SimpleNamespace(files=files)))


def check(run, previous_inputs=None, **options):
    incremental.check_removals(run, previous_inputs, **{"max_removed_fraction": 0.5, "allow_removals": False,
                                                        "class_of": class_of, **options})


def test_an_input_that_lists_nothing_is_refused_first_snapshot_or_not_and_allow_removals_does_not_take_it():
    with pytest.raises(RemovalsError, match=rf"--input {ROOT} lists no files: nothing to commit") as first:
        check(run_plan({}))
    assert first.value.exit_code == EXIT_REMOVALS == 6
    for previous_inputs in (listing(*FILES), None):      # an incremental run; a full one (overwrite, new config)
        with pytest.raises(RemovalsError) as emptied:
            check(run_plan({}, previous_snapshot()), previous_inputs, allow_removals=True)
        assert (f"--input {ROOT} lists no files, where snapshot 000001-x holds rows of 10 input files (an unmounted "
                "volume, an emptied folder?): nothing was committed; --allow-removals does not take an empty input"
                ) in str(emptied.value)


def test_an_incremental_run_losing_a_class_is_refused_naming_allow_removals_unless_given():
    run = run_plan(listing(*FILES[:8]), previous_snapshot())
    with pytest.raises(RemovalsError) as refused:
        check(run, listing(*FILES))
    assert str(refused.value) == (
        f"--input {ROOT}: since snapshot 000001-x, 2 of the 10 input files are gone (20.0%): owl/0.png, owl/1.png; "
        "classes that lost all their files: owl; nothing was committed (an unmounted volume, a moved folder?): if "
        "they were removed on purpose, rerun with --allow-removals")
    check(run, listing(*FILES), allow_removals=True)
    check(run, None)                                     # a full run (--mode overwrite, another config): no brake


def draft(per_class: dict[str, int]) -> Manifest:
    splits = {"train": SplitCounts(rows=sum(per_class.values()), row_groups=1, per_class=per_class),
              "test": SplitCounts(rows=0, row_groups=0, per_class={name: 0 for name in per_class})}
    return Manifest(kind="image", input=ROOT, classes=list(per_class),
                    class_to_index={name: i for i, name in enumerate(per_class)}, splits=splits, records_read=9,
                    rejected=9 - sum(per_class.values()), rejected_by_reason={}, config={})


def test_a_snapshot_of_no_row_or_of_one_class_is_refused_at_commit():
    run = run_plan(listing(*FILES), snapshot_url="file:///data/ds/snapshots/000002-x")
    with pytest.raises(RemovalsError, match=r"no record was accepted \(9 read in this run, 9 rejected\): snapshot "
                                            r"file:///data/ds/snapshots/000002-x was not committed"):
        incremental.check_classes(run, draft({"cat": 0}), processed=(9, 9), allow_single_class=True)
    with pytest.raises(RemovalsError) as single:
        incremental.check_classes(run, draft({"cat": 5, "dog": 0}), processed=(9, 4), allow_single_class=False)
    assert "every row is of one class, cat" in str(single.value)
    assert "set the config key allow_single_class: true" in str(single.value)
    incremental.check_classes(run, draft({"cat": 5, "dog": 0}), processed=(9, 4), allow_single_class=True)
    incremental.check_classes(run, draft({"cat": 5, "dog": 1}), processed=(9, 3), allow_single_class=False)


@pytest.mark.parametrize("section, cls", [("preprocess_images", image_dataset.PreprocessImagesConfig),
                                          ("preprocess_sequences", sequence_dataset.PreprocessSequencesConfig)])
def test_the_new_keys_are_validated_and_change_no_fingerprint(section, cls):
    config = load_section(section, cls)
    assert (config.max_removed_fraction, config.allow_single_class) == (0.5, False)
    with pytest.raises(ConfigError, match=rf"config key {section}.max_removed_fraction: must be in \[0, 1\], got 1.5"):
        load_section(section, cls, overrides=[f"{section}.max_removed_fraction=1.5"])
    changed = load_section(section, cls, overrides=[f"{section}.max_removed_fraction=0.9",
                                                    f"{section}.allow_single_class=true"])
    kind = "image" if section == "preprocess_images" else "sequence"

    def fingerprint(values):
        return incremental.config_fingerprint(values, kind)

    assert fingerprint(asdict(changed)) == fingerprint(asdict(config))  # a dataset is not processed again for them
    added = ("max_removed_fraction", "allow_single_class", "follow_links") + (("max_file_bytes",) if kind == "sequence"
                                                                              else ())
    old = {k: v for k, v in asdict(config).items() if k not in added}
    assert fingerprint(old) == fingerprint(asdict(config))  # nor for a snapshot written before they existed


def test_a_key_added_at_its_old_behaviour_does_not_change_the_fingerprint_of_older_snapshots():
    from pipelines.incremental import config_fingerprint

    before = {"image_size": 32, "mode": "incremental"}  # a snapshot made before follow_links existed
    assert config_fingerprint({**before, "follow_links": False}, "image") == config_fingerprint(before, "image")
    assert config_fingerprint({**before, "follow_links": True}, "image") != config_fingerprint(before, "image")
    assert config_fingerprint({**before, "max_file_bytes": 64 << 30}, "sequence") == config_fingerprint(before, "sequence")


def test_strict_refuses_a_snapshot_with_a_class_train_has_no_row_of():
    run = SimpleNamespace(input_url="file:///data/in", snapshot_url="file:///ds/snapshots/000002")
    splits = {"train": SplitCounts(rows=5, row_groups=1, per_class={"0": 3, "1": 2, "positive": 0}),
              "test": SplitCounts(rows=1, row_groups=1, per_class={"0": 0, "1": 0, "positive": 1})}
    with pytest.raises(RemovalsError, match=r"train has no rows of 1 of the 3 classes \(positive\): snapshot "
                                            r"file:///ds/snapshots/000002 was not committed \(strict: true\)"):
        incremental.check_trained_classes(run, SimpleNamespace(splits=splits))
    splits["train"] = SplitCounts(rows=6, row_groups=1, per_class={"0": 3, "1": 2, "positive": 1})
    incremental.check_trained_classes(run, SimpleNamespace(splits=splits))  # every class trained: nothing to say
    assert "strict" in incremental.IGNORED_CONFIG_KEYS  # it decides a commit, not what is written
