"""training.checkpoint: replacing checkpoint.pt survives a crash between any two of its renames (the old model or
the new one loads, never neither), and a checkpoint is read once: the bytes verified are the bytes used."""
from __future__ import annotations

import json
import os

import pytest
import torch

from core.errors import CheckpointError
from tests.training import inmemory
from training import checkpoint
from training.models import build_model, resolve_model_name


def _payload(seed: int) -> dict:
    config = inmemory.config(f"train.seed={seed}")
    source = inmemory.image_source((16, 0, 0))
    torch.manual_seed(seed)
    model = build_model(config.model, dataset=source.spec, config=config)
    return checkpoint.model_payload(model, resolve_model_name(config.model, "image"), config,
                                    classes=source.spec.classes, class_to_index=source.class_to_index,
                                    dataset=source.dataset_entry())


def _same_weights(model, payload) -> bool:
    return all(torch.equal(model.state_dict()[k], v) for k, v in payload["model_state"].items())


@pytest.mark.parametrize("crash_at, survivor", [(1, "old"), (2, "old"), (3, "new")])
def test_a_crash_between_the_renames_of_a_replacement_leaves_a_loadable_model(tmp_path, monkeypatch, crash_at,
                                                                              survivor):
    path = tmp_path / checkpoint.FINAL_FILE
    old, new = _payload(1), _payload(2)
    checkpoint.save(path, old)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == crash_at:
            raise OSError(f"power lost before rename {crash_at}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    try:
        checkpoint.save(path, new)
    except OSError:
        pass
    monkeypatch.setattr(os, "replace", real_replace)
    model, _ = checkpoint.load_model(path)  # never CheckpointError
    assert _same_weights(model, {"old": old, "new": new}[survivor])
    checkpoint.save(path, new)  # the next save after the crash completes the replacement
    model, _ = checkpoint.load_model(path)
    assert _same_weights(model, new)
    assert "previous" not in json.loads(checkpoint.sidecar_of(path).read_text())


def test_a_checkpoint_replaced_twice_with_interrupted_saves_still_loads(tmp_path, monkeypatch):
    """The second save starts from the first one's half state (old file, sidecar accepting both): the digest it
    carries forward must be the one of the file really there."""
    path = tmp_path / checkpoint.FINAL_FILE
    payloads = [_payload(seed) for seed in (1, 2, 3)]
    checkpoint.save(path, payloads[0])
    real_replace = os.replace
    for payload in payloads[1:]:
        calls = []

        def replace(src, dst, calls=calls):
            calls.append(dst)
            if len(calls) == 2:
                raise OSError("power lost")
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(OSError, match="power lost"):
            checkpoint.save(path, payload)
        monkeypatch.setattr(os, "replace", real_replace)
        model, _ = checkpoint.load_model(path)
        assert _same_weights(model, payloads[0])


def test_the_previous_digest_is_accepted_only_while_a_replacement_is_under_way(tmp_path):
    path = tmp_path / checkpoint.FINAL_FILE
    checkpoint.save(path, _payload(1))
    old_bytes = path.read_bytes()
    checkpoint.save(path, _payload(2))
    path.write_bytes(old_bytes)  # the old file put back under the completed sidecar: refused like any other
    with pytest.raises(CheckpointError, match=f"checkpoint {path} does not match the SHA-256"):
        checkpoint.load(path)


def test_read_returns_the_verified_bytes_and_load_bytes_checks_them(tmp_path):
    path = checkpoint.save(tmp_path / checkpoint.FINAL_FILE, _payload(1))
    verified = checkpoint.read(path)
    assert verified.data == path.read_bytes() and verified.sidecar == checkpoint.sidecar_of(path).read_bytes()
    path.write_bytes(b"replaced after it was read")  # what was verified is what a caller goes on with
    payload = checkpoint.load_bytes(verified.data, verified.sidecar, where=path)
    assert payload["model"] == verified.payload["model"]
    with pytest.raises(CheckpointError, match=f"checkpoint {path} does not match the SHA-256"):
        checkpoint.load_bytes(path.read_bytes(), verified.sidecar, where=path)
