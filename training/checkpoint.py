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

What a checkpoint holds is the ``Checkpoint`` dataclass, the one place its keys are spelled: the final model, the
best epoch's weights and the resume points are each one, with the fields of their kind set. The file names are
``training.outputs``'.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from core import atomic
from core.config import from_dict
from core.errors import CheckpointError, ConfigError
from dataset import layout
from dataset.manifest import DatasetSpec
from training.config import TrainConfig
from training.model_inputs import as_trained
from training.models import Collated, collate_function, is_import_path
from training.models import build_model as build
from training.outputs import CHECKPOINT_FILE, RESUME_DIR

log = logging.getLogger("bigtrain.train")
FORMAT = "bigtrain-checkpoint"
VERSION = 2
FINAL_FILE = CHECKPOINT_FILE  # its name here before training.outputs (predict and tests read it)


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
    with atomic.uninterrupted():  # a Ctrl-C here would leave the file without its sidecar: a lost resume point
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
    """A checkpoint as read once: its bytes and its sidecar's, verified, and what they hold (``checkpoint``;
    ``payload``: the same as the plain dict of the file, for readers not yet on the typed checkpoint)."""
    path: Path
    data: bytes
    sidecar: bytes
    payload: dict[str, Any]

    @property
    def checkpoint(self) -> Checkpoint:
        return Checkpoint.from_payload(self.payload, where=self.path)


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


@dataclass
class Checkpoint:
    """What a bigtrain checkpoint holds, read (``load``, ``from_payload``) and written (``save``, ``to_payload``)
    here only. The file is a plain dict whose keys are these fields' names (tensors and plain values, so that
    ``torch.load(weights_only=True)`` reads it) beside the format marker; a field left None is left out of the
    file, so each kind of checkpoint holds the keys it always held, and files written before this class load."""
    model_state: dict[str, torch.Tensor]
    model: str                                    # the model's built-in name or import path: what rebuilds it
    config: dict[str, Any]                        # the run's TrainConfig as a mapping
    classes: list[str]
    class_to_index: dict[str, int]
    dataset: dict[str, Any]                       # dataset_entry_for: url, kind, image or sequence, snapshot_id, ...
    epoch: int | None = None                      # epochs completed
    global_step: int | None = None                # optimizer steps so far
    weights_epoch: int | None = None              # the final checkpoint: the epoch whose weights it holds
    step: int | None = None                       # resume points: batches of the current epoch already trained
    optimizer_state: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None        # resume.Progress as a mapping
    schedule: dict[str, Any] | None = None        # the global step and each parameter group's learning rate
    random: dict[str, Any] | None = None          # resume.random_states

    @classmethod
    def of_model(cls, model, model_name: str, config, *, classes: list[str], class_to_index: dict[str, int],
                 dataset: dict[str, Any], **counters: Any) -> Checkpoint:
        """The checkpoint of ``model`` (unwrapped) trained under ``config`` on ``dataset`` (``dataset_entry_for``);
        ``counters``: epoch, global_step, weights_epoch."""
        return cls(model.state_dict(), model_name, asdict(config), list(classes), dict(class_to_index), dataset,
                   **counters)

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """The checkpoint at ``path``, verified against its sidecar; CheckpointError names what is wrong."""
        return cls.from_payload(load(path), where=path)

    def save(self, path: str | Path) -> Path:
        """Written atomically with its sidecar (``save``); returns ``path``."""
        return save(path, self.to_payload())

    @classmethod
    def from_payload(cls, payload: dict[str, Any], *, where: str | Path = "the checkpoint") -> Checkpoint:
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in payload]
        if missing:
            raise CheckpointError(f"{where} lacks {', '.join(missing)}: it is not a complete bigtrain checkpoint")
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in payload.items() if key in known})

    def to_payload(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @property
    def kind(self) -> str:
        return self.dataset["kind"]

    @property
    def snapshot_id(self) -> str | None:
        return self.dataset.get("snapshot_id")

    @property
    def dataset_url(self) -> str | None:
        return self.dataset.get("url")

    @property
    def preprocess(self) -> dict[str, Any] | None:
        """The preprocessing job's config: how predict turns raw inputs into rows as training's data was."""
        return self.dataset.get("preprocess")

    @property
    def vocabulary(self) -> Any:
        return self.dataset.get("vocabulary")

    def dataset_spec(self) -> DatasetSpec:
        """What the model was built for: the dataset's kind, classes, image shape or vocabulary size."""
        return DatasetSpec.from_dict({"kind": self.kind, "classes": self.classes, "image": self.dataset.get("image"),
                                      "sequence": self.dataset.get("sequence")}, where="checkpoint dataset")

    def train_config(self) -> TrainConfig:
        return from_dict(TrainConfig, self.config, prefix="checkpoint config")

    def import_paths(self) -> dict[str, str]:
        """The import paths ``build_model`` imports (runs the code of) to rebuild the model, by config key: a
        user's model factory and collate function; none for bigtrain's built-in models."""
        named = {"train.model": self.model, "train.collate": (self.config or {}).get("collate")}
        return {key: path for key, path in named.items() if isinstance(path, str) and is_import_path(path)}


def _typed(checkpoint: Checkpoint | dict[str, Any], where: str | Path) -> Checkpoint:
    """A payload dict as a Checkpoint: for readers not yet on the typed checkpoint (predict's)."""
    return checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.from_payload(checkpoint, where=where)


def build_model(checkpoint: Checkpoint | dict[str, Any], *, where: str | Path = "the checkpoint"):
    """The trained model of a loaded checkpoint, in eval mode, taking bigtrain's batch inputs (with the run's
    ``train.collate`` applied first, where it had one: ``models.Collated``; uint8 images scaled to [0, 1] first for
    a model trained on them so: ``model_inputs.ScaledImages``). A model from an import path (``package.module:
    factory``) is rebuilt by calling that factory again: a CheckpointError says so when it cannot be imported here
    or builds a model whose parameters differ from the saved ones."""
    checkpoint = _typed(checkpoint, where)
    config, name = checkpoint.train_config(), checkpoint.model
    try:
        model = build(name, dataset=checkpoint.dataset_spec(), config=config)
        collate = collate_function(config.collate)
    except ConfigError as exc:
        raise CheckpointError(f"{where} holds a {name} model that cannot be rebuilt here: {exc}") from None
    try:
        model.load_state_dict(checkpoint.model_state)
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: the {name} model built here does not take the saved weights "
                              f"({str(exc).strip().splitlines()[0][:300]}); was its code or train.model_config "
                              "changed?") from None
    return (as_trained(model, checkpoint.kind) if collate is None else Collated(model, collate)).eval()


def import_paths(checkpoint: Checkpoint | dict[str, Any]) -> dict[str, str]:
    """``Checkpoint.import_paths`` of a checkpoint or of its payload dict."""
    return _typed(checkpoint, "the checkpoint").import_paths()


def load_model(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """``(model, payload)`` from a checkpoint file, verified and safely loaded (``Checkpoint.load`` for the
    typed content)."""
    payload = load(path)
    return build_model(payload, where=f"checkpoint {path}"), payload


def model_payload(model, model_name: str, config, *, classes: list[str], class_to_index: dict[str, int],
                  dataset: dict[str, Any]) -> dict[str, Any]:
    """``Checkpoint.of_model`` as the plain dict ``save`` writes (for callers that change it before saving)."""
    return Checkpoint.of_model(model, model_name, config, classes=classes, class_to_index=class_to_index,
                               dataset=dataset).to_payload()


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
