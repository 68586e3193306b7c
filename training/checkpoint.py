"""Checkpoints: written atomically with a SHA-256 sidecar, read without running pickled code.

    <output>/checkpoint.pt + checkpoint.json            the final model (what predict and users load)
    <output>/checkpoints/step-000123.pt + .json         resume points: every N steps and at each epoch end

A checkpoint ``X.pt`` is complete only when its sidecar ``X.json`` (size, SHA-256, epoch, step) exists and matches.
Each file is written through ``core.atomic`` (temporary name, fsync, rename, fsync of the folder). A new name (a
resume point) gets the checkpoint first and its sidecar last, so a crash leaves the previous resume point or a
complete new one. Replacing a checkpoint (``checkpoint.pt``) takes three renames, so that a crash between any two
leaves a loadable model, the old or the new one:

    1. the sidecar of the new file, which also accepts the old file's digest (its ``previous`` entry)
    2. the new checkpoint file
    3. the sidecar of the new file alone

Loading checks the digest before ``torch.load`` sees a byte, then loads with ``weights_only=True`` (tensors and
plain values only: a foreign or tampered file never runs code) and checks the payload says it is a bigtrain
checkpoint. ``read`` keeps the verified bytes, so a caller that ships the checkpoint on (predict) ships those.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from core import atomic
from core.config import from_dict
from core.errors import CheckpointError, ConfigError
from dataset import layout
from dataset.manifest import DatasetSpec
from training.config import TrainConfig
from training.models import Collated, collate_function, is_import_path
from training.models import build_model as build

log = logging.getLogger("bigtrain.train")
FORMAT = "bigtrain-checkpoint"
VERSION = 2
FINAL_FILE = "checkpoint.pt"
RESUME_DIR = "checkpoints"


def sidecar_of(path: Path) -> Path:
    return path.with_suffix(".json")


def save(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (tensors and plain values) to ``path`` and its sidecar, atomically; returns ``path``. A
    crash at any moment leaves the checkpoint that was at ``path`` or the new one, each loadable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buffer)
    data = buffer.getvalue()
    info = {"file": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "epoch": payload.get("epoch"), "step": payload.get("step"), "global_step": payload.get("global_step"),
            "snapshot_id": (payload.get("dataset") or {}).get("snapshot_id")}
    previous = _valid_entry(path)
    if previous is not None:  # the sidecar accepts both files while checkpoint.pt is being replaced
        atomic.write_json(sidecar_of(path), {**info, "previous": previous})
    atomic.write_bytes(path, data)
    atomic.write_json(sidecar_of(path), info)
    return path


def _valid_entry(path: Path) -> dict[str, Any] | None:
    """The sidecar entry the checkpoint now at ``path`` matches (its own, or the ``previous`` one of an interrupted
    replacement); None when there is no valid checkpoint there."""
    sidecar = sidecar_of(path)
    if not (path.is_file() and sidecar.is_file()):
        return None
    try:
        entries = _entries(json.loads(sidecar.read_text()))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return next((e for e in entries if e["sha256"] == digest.hexdigest()), None)


def _entries(info: Any) -> list[dict[str, Any]]:
    """The sidecar's entry and, during a replacement, the previous file's; KeyError/TypeError when malformed."""
    entries = [info] + ([info["previous"]] if info.get("previous") else [])
    for entry in entries:
        if not isinstance(entry["sha256"], str):
            raise TypeError(f"sha256 is {entry['sha256']!r}")
    return [{k: v for k, v in e.items() if k != "previous"} for e in entries]


@dataclass(frozen=True)
class Verified:
    """A checkpoint as read once: its bytes and its sidecar's, verified, and the payload loaded from those bytes."""
    path: Path
    data: bytes
    sidecar: bytes
    payload: dict[str, Any]


def read(path: str | Path) -> Verified:
    """The checkpoint at ``path`` read once and verified against its sidecar; CheckpointError names what is
    wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    sidecar = sidecar_of(path)
    if not sidecar.is_file():
        raise CheckpointError(f"checkpoint {path} has no {sidecar.name} beside it: it is incomplete (a crash while "
                              "saving) or was not written by bigtrain")
    data = path.read_bytes()
    sidecar_bytes = sidecar.read_bytes()
    return Verified(path, data, sidecar_bytes, load_bytes(data, sidecar_bytes, where=path))


def load(path: str | Path) -> dict[str, Any]:
    """The payload of a bigtrain checkpoint, verified against its sidecar; CheckpointError names what is wrong."""
    return read(path).payload


def load_bytes(data: bytes, sidecar: bytes, *, where: str | Path) -> dict[str, Any]:
    """The payload of checkpoint bytes ``data``, verified against the bytes of its sidecar; ``where`` names the
    file in errors."""
    path, sidecar_name = Path(where), sidecar_of(Path(where))
    try:
        entries = _entries(json.loads(sidecar))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint sidecar {sidecar_name} is unreadable: {exc}") from None
    if hashlib.sha256(data).hexdigest() not in {e["sha256"] for e in entries}:
        raise CheckpointError(f"checkpoint {path} does not match the SHA-256 in {sidecar_name.name}: the file was "
                              "altered or truncated; refusing to load it")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)  # runs no pickled code
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ... for foreign content
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely (weights_only=True): "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a bigtrain checkpoint (no format marker {FORMAT!r})")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {payload.get('version')!r}, this bigtrain reads "
                              f"{VERSION}")
    return payload


def dataset_spec(payload: dict[str, Any]) -> DatasetSpec:
    """What the model was built for: the dataset's kind, classes, image shape or vocabulary size."""
    dataset = payload["dataset"]
    return DatasetSpec.from_dict({"kind": dataset["kind"], "classes": payload["classes"], "image": dataset.get("image"),
                                  "sequence": dataset.get("sequence")}, where="checkpoint dataset")


def build_model(payload: dict[str, Any], *, where: str | Path = "the checkpoint"):
    """The trained model of a loaded checkpoint, in eval mode, taking bigtrain's batch inputs (with the run's
    ``train.collate`` applied first, where it had one: ``models.Collated``). A model from an import path (``package.module:
    factory``) is rebuilt by calling that factory again: a CheckpointError says so when it cannot be imported here
    or builds a model whose parameters differ from the saved ones."""
    config = from_dict(TrainConfig, payload["config"], prefix="checkpoint config")
    name = payload["model"]
    try:
        model = build(name, dataset=dataset_spec(payload), config=config)
        collate = collate_function(config.collate)
    except ConfigError as exc:
        raise CheckpointError(f"{where} holds a {name} model that cannot be rebuilt here: {exc}") from None
    try:
        model.load_state_dict(payload["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: the {name} model built here does not take the saved weights "
                              f"({str(exc).strip().splitlines()[0][:300]}); was its code or train.model_config "
                              "changed?") from None
    return (model if collate is None else Collated(model, collate)).eval()


def import_paths(payload: dict[str, Any]) -> dict[str, str]:
    """The import paths ``build_model`` imports (runs the code of) to rebuild a checkpoint's model, by config key:
    a user's model factory and collate function; none for bigtrain's built-in models."""
    named = {"train.model": payload.get("model"), "train.collate": (payload.get("config") or {}).get("collate")}
    return {key: path for key, path in named.items() if isinstance(path, str) and is_import_path(path)}


def load_model(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """``(model, payload)`` from a checkpoint file, verified and safely loaded."""
    payload = load(path)
    return build_model(payload, where=f"checkpoint {path}"), payload


def model_payload(model, model_name: str, config, *, classes: list[str], class_to_index: dict[str, int],
                  dataset: dict[str, Any]) -> dict[str, Any]:
    """What every checkpoint holds: weights, model name, config, class map, and the ``dataset`` entry
    (``dataset_entry_for``)."""
    return {"model_state": model.state_dict(), "model": model_name, "config": asdict(config),
            "classes": list(classes), "class_to_index": dict(class_to_index), "dataset": dataset}


def dataset_entry(info) -> dict[str, Any]:
    """The entry of a dataset opened with ``load_dataset_info``: with the job's config and, for a sequence
    dataset, its vocabulary."""
    vocabulary = layout.read_vocabulary(info.url) if info.kind == "sequence" else None
    return dataset_entry_for(info.spec, url=info.url, snapshot_id=info.snapshot_id, preprocess=info.manifest.config,
                             vocabulary=vocabulary)


def dataset_entry_for(spec: DatasetSpec, *, url: str, snapshot_id: str, preprocess: dict[str, Any] | None = None,
                      vocabulary: Any = None) -> dict[str, Any]:
    """The dataset's identity, and what predict needs to treat raw inputs as preprocessing did (``preprocess``: the
    job's config; the vocabulary of a sequence dataset). Without them predict scores datasets, not raw inputs."""
    entry = spec.to_dict()
    return {"url": url, "kind": spec.kind, "image": entry.get("image"), "sequence": entry.get("sequence"),
            "snapshot_id": snapshot_id,  # resuming against another snapshot is refused
            "preprocess": preprocess,  # how raw inputs were turned into rows
            "vocabulary": vocabulary}


def resume_points(output_dir: str | Path) -> list[Path]:
    """Complete resume checkpoints (sidecar present), oldest first."""
    folder = Path(output_dir) / RESUME_DIR
    if not folder.is_dir():
        return []
    points = []
    for sidecar in folder.glob("step-*.json"):
        checkpoint = sidecar.with_suffix(".pt")
        if checkpoint.is_file():
            points.append(checkpoint)
    return sorted(points)


def latest_resume_point(output_dir: str | Path) -> Path | None:
    points = resume_points(output_dir)
    return points[-1] if points else None


def prune(output_dir: str | Path, keep: int) -> None:
    """Keep the newest ``keep`` resume points, none with 0 (and drop leftovers of interrupted saves)."""
    folder = Path(output_dir) / RESUME_DIR
    points = resume_points(output_dir)
    for old in points[:len(points) - keep] if keep < len(points) else []:
        sidecar_of(old).unlink(missing_ok=True)  # sidecar first: a half-deleted point is never taken as complete
        old.unlink(missing_ok=True)
    for leftover in folder.glob(atomic.tmp_name("*")) if folder.is_dir() else []:
        leftover.unlink(missing_ok=True)
