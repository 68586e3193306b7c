"""predict imports only the code it is told to trust: the import paths a checkpoint names (a user's model factory,
its collate function) are refused in one line naming each path and --trust-import, before anything is imported,
unless the command line names them; bigtrain's built-in models need nothing (no Spark: refused before it starts)."""
from __future__ import annotations

import sys

from inference import batch
from jobs import predict as job
from tests.training.inmemory import config, sequence_source
from training import checkpoint
from training.models import build_model

PROBE = "bigtrain_trust_probe"  # a module whose import leaves a mark: the code a checkpoint names
USER_MODEL = "tests.training.custom_model:build"


def saved(folder, built: str, **changes):
    """A checkpoint of the model ``built`` names, its payload then changed by ``changes`` (as someone could)."""
    spec = sequence_source().spec
    cfg = config(f"train.model={built}")
    payload = checkpoint.model_payload(build_model(built, dataset=spec, config=cfg), built, cfg, classes=spec.classes,
                                       class_to_index={c: i for i, c in enumerate(spec.classes)},
                                       dataset=checkpoint.dataset_entry_for(spec, url="memory://ds",
                                                                            snapshot_id="000001-20261129T020000Z"))
    path = checkpoint.save(folder / "checkpoint.pt", payload)
    return checkpoint.save(path, {**checkpoint.load(path), **changes}) if changes else path


def test_predict_imports_a_path_the_checkpoint_names_only_when_the_command_line_names_it(tmp_path, monkeypatch,
                                                                                          capsys):
    mark = tmp_path / "imported"
    (tmp_path / f"{PROBE}.py").write_text(f"open({str(mark)!r}, 'w').close()\nfrom tests.training.custom_model "
                                          "import build, counts\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, PROBE, raising=False)
    ckpt = saved(tmp_path / "model", USER_MODEL, model=f"{PROBE}:build")
    payload = checkpoint.load(ckpt)
    saved_with_collate = checkpoint.save(tmp_path / "collate" / "checkpoint.pt", {
        **payload, "config": {**payload["config"], "collate": f"{PROBE}:counts"}})
    argv = ["--data", str(tmp_path / "no-dataset"), "--output", str(tmp_path / "scored")]

    assert job.main(["--checkpoint", str(saved_with_collate), *argv, "--trust-import", f"{PROBE}:build"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --checkpoint {saved_with_collate} names code to import (train.collate {PROBE}:counts); "
                   "predict imports only bigtrain's built-in models and the paths given with --trust-import: if you "
                   f"trust that code, add --trust-import {PROBE}:counts\n")
    assert job.main(["--checkpoint", str(tmp_path / "model"), *argv]) == 2
    assert f"(train.model {PROBE}:build)" in capsys.readouterr().err
    assert not mark.exists() and PROBE not in sys.modules  # refused before anything was imported

    assert job.main(["--checkpoint", str(tmp_path / "model"), *argv, "--trust-import", f"{PROBE}:build"]) == 1
    assert "no-dataset" in capsys.readouterr().err and mark.exists()  # imported, built; then --data is missing


def test_built_in_models_need_no_trust(tmp_path):
    verified = batch.load_checkpoint(str(saved(tmp_path, "lstm")))
    assert verified.payload["model"] == "lstm" and checkpoint.import_paths(verified.payload) == {}
