"""What a training run tells a person: per-epoch metrics (JSON Lines and TensorBoard) and the evaluation report.

    <output>/metrics.jsonl            one JSON object per epoch, appended (and fsynced) as each epoch ends
    <output>/tensorboard/             TensorBoard event files: every numeric value of an epoch as ``epoch/<key>``
    <output>/evaluation.json          accuracy, per-class precision/recall/F1, macro and weighted averages, confusion
    <output>/confusion_matrix.png     the confusion matrix as an annotated heatmap
    <output>/training_curves.png      loss and accuracy per epoch (train, validation), and the data-stall fraction;
                                      a dashed line at the epoch whose weights the run kept
    <output>/stages.png               the last epoch's stage ledger: each rank's time stacked by stage, and its loader's

Everything here runs on rank 0 only. Plots use matplotlib's object API on the Agg canvas (``Figure``, never
``pyplot``): no display is needed, and no global backend of the caller's process is changed.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from core import atomic
from training.ledger import LOADER_STAGES, TRAINER_STAGES
from training.outputs import CONFUSION_PNG, CURVES_PNG, EVALUATION_FILE, METRICS_LOG_FILE, STAGES_PNG, TENSORBOARD_DIR

log = logging.getLogger("bigtrain.train")
ANNOTATE_MAX_CLASSES = 30  # beyond this the counts in the heatmap cells are unreadable; the colours still show


def _plain(value: Any) -> Any:
    """JSON-ready: numpy and 0-d torch scalars become Python numbers; NaN and infinities become null so that every
    line is strict JSON (jq and most JSON readers refuse ``NaN``)."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _is_number(value: Any) -> bool:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_line(record: dict) -> str:
    return json.dumps(_plain(record), sort_keys=False, default=str) + "\n"


class MetricsLog:
    """Per-epoch metrics of one run, on rank 0: ``metrics.jsonl`` and TensorBoard scalars.

    ``history`` holds the epochs a resumed run already has: the JSON Lines file is rewritten with exactly those
    (dropping any epoch the killed run logged after its last resume point), and TensorBoard purges events from
    step ``len(history) + 1`` on, so the resumed epochs are not drawn twice.
    """

    def __init__(self, output_dir: str | Path, *, history: Iterable[dict] = ()):
        from torch.utils.tensorboard import SummaryWriter

        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.output_dir / METRICS_LOG_FILE
        history = list(history)
        # written aside and renamed: a crash here never leaves half the old history
        atomic.write_text(self.path, "".join(_json_line(r) for r in history))
        self._file = io.TextIOWrapper(atomic.open_append(self.path), encoding="utf-8")  # never through a link
        self.tensorboard_dir = self.output_dir / TENSORBOARD_DIR
        self.writer = SummaryWriter(log_dir=str(self.tensorboard_dir),
                                    purge_step=len(history) + 1 if history else None)

    def log_epoch(self, record: dict) -> None:
        """Append ``record`` (it must hold ``epoch``) as one JSON line, fsynced, and its numeric values as
        TensorBoard scalars ``epoch/<key>`` at step ``record["epoch"]``; None, booleans and text are not drawn."""
        if "epoch" not in record or not _is_number(record["epoch"]):
            raise ValueError(f"metrics record for {self.path} has no numeric 'epoch': {sorted(record)}")
        self._file.write(_json_line(record))
        self._file.flush()
        os.fsync(self._file.fileno())  # a run killed in the next epoch still has this one on disk
        step = int(record["epoch"])
        for key, value in record.items():
            if key != "epoch" and _is_number(value):
                self.writer.add_scalar(f"epoch/{key}", float(value), global_step=step)
        self.writer.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
            self.writer.close()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_metrics(output_dir: str | Path) -> list[dict]:
    """The records of ``<output>/metrics.jsonl`` (empty when there is none); a line torn by a crash while it was
    appended is skipped with a warning."""
    path = Path(output_dir) / METRICS_LOG_FILE
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            log.warning("%s:%d is not a metrics record (torn by a crash?): skipped", path, number)
    return records


def confusion_matrix(true: Sequence[int], predicted: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts with rows = true class and columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def _as_counts(confusion: Any, classes: list[str]) -> np.ndarray:
    if hasattr(confusion, "detach"):  # a torch tensor, possibly on a GPU
        confusion = confusion.detach().cpu().numpy()
    matrix = np.asarray(confusion)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {matrix.shape}")
    if matrix.shape[0] != len(classes):
        raise ValueError(f"confusion matrix is {matrix.shape[0]}x{matrix.shape[1]} but there are {len(classes)} "
                         f"classes ({', '.join(classes[:10])})")
    if matrix.size and (np.any(matrix < 0) or not np.all(np.equal(np.mod(matrix, 1), 0))):
        raise ValueError("confusion matrix must hold non-negative whole counts")
    return matrix.astype(np.int64)


def _ratio(numerator: int, denominator: int) -> float | None:
    return float(numerator / denominator) if denominator else None


def _f1(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None:
        return None
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _mean(values: list[float | None], weights: list[int] | None = None) -> float | None:
    pairs = [(v, 1 if weights is None else w) for v, w in zip(values, weights or [1] * len(values)) if v is not None]
    total = sum(w for _, w in pairs)
    return float(sum(v * w for v, w in pairs) / total) if total else None


def classification_report(confusion: Any, classes: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, and their averages, from a confusion matrix (rows = true
    class, columns = predicted class; numpy or torch).

    Undefined values are None, never a silent 0: precision of a class never predicted (no predictions), recall of
    a class absent from the data (no support), F1 where either is None, accuracy of an empty matrix. F1 is 0.0
    when precision and recall are both 0. ``macro_avg`` is the plain mean over the classes whose value is defined;
    ``weighted_avg`` weights each defined value by its class's support. Both carry the total ``support``.
    """
    classes = list(classes)
    matrix = _as_counts(confusion, classes)
    total = int(matrix.sum())
    true_counts, predicted_counts, hits = matrix.sum(axis=1), matrix.sum(axis=0), np.diag(matrix)
    per_class = {}
    for i, name in enumerate(classes):
        precision = _ratio(int(hits[i]), int(predicted_counts[i]))
        recall = _ratio(int(hits[i]), int(true_counts[i]))
        per_class[name] = {"precision": precision, "recall": recall, "f1": _f1(precision, recall),
                           "support": int(true_counts[i])}
    support = [per_class[name]["support"] for name in classes]
    averages = {}
    for kind, weights in (("macro_avg", None), ("weighted_avg", support)):
        averages[kind] = {metric: _mean([per_class[n][metric] for n in classes], weights)
                          for metric in ("precision", "recall", "f1")}
        averages[kind]["support"] = total
    return {"accuracy": _ratio(int(hits.sum()), total), "rows": total, "classes": classes,
            "confusion_matrix": matrix.tolist(), "per_class": per_class, **averages}


def _save(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip("."), dpi=100, bbox_inches="tight")
    atomic.write_bytes(path, buffer.getvalue())


def plot_confusion(report: dict[str, Any], path: Path) -> Path:
    """Heatmap coloured by the share of each true class (so small classes show as clearly as large ones), with the
    counts written in the cells."""
    from matplotlib.figure import Figure

    classes = report["classes"]
    matrix = np.asarray(report["confusion_matrix"], dtype=np.int64).reshape(len(classes), len(classes))
    rows = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    side = max(4.0, 0.55 * len(classes) + 2.5)
    figure = Figure(figsize=(side + 1.2, side))
    ax = figure.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, labels=classes, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, labels=classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = report.get("accuracy")
    ax.set_title(f"confusion matrix: {report.get('rows', int(matrix.sum()))} rows, accuracy "
                 f"{'-' if accuracy is None else f'{accuracy:.3f}'}")
    if len(classes) <= ANNOTATE_MAX_CLASSES:
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=9,
                    color="white" if shares[i, j] > 0.5 else "black")
    _save(figure, path)
    return path


def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(r["epoch"], r[key]) for r in history if _is_number(r.get(key)) and _is_number(r.get("epoch"))]
    return [float(e) for e, _ in points], [float(v) for _, v in points]


@dataclass(frozen=True)
class CurvePanel:
    """One panel of ``training_curves.png``: its lines (label, epochs, values) and the epoch whose weights the run
    kept (a dashed vertical line; None: not drawn)."""
    title: str
    lines: list[tuple[str, list[float], list[float]]]
    kept_epoch: int | None
    share: bool  # values in [0, 1]


def curve_panels(history: list[dict], kept_epoch: int | None = None) -> list[CurvePanel]:
    """What ``training_curves.png`` draws: loss and accuracy per epoch (train and validation), the data-stall
    fraction where the records have it, each marked with ``kept_epoch`` when it is one of the recorded epochs."""
    panels = [("loss", ("train_loss", "val_loss")), ("accuracy", ("train_accuracy", "val_accuracy"))]
    if any(_is_number(r.get("data_stall")) for r in history):
        panels.append(("data stall (share of step time waiting for data)", ("data_stall",)))
    recorded = {r.get("epoch") for r in history}
    kept = kept_epoch if kept_epoch in recorded else None
    out = []
    for title, keys in panels:
        lines = [(key.replace("_", " ").replace("val ", "validation "), *_series(history, key)) for key in keys]
        out.append(CurvePanel(title, [line for line in lines if line[2]], kept, title != "loss"))
    return out


def plot_curves(history: list[dict], path: Path, *, kept_epoch: int | None = None) -> Path:
    """``curve_panels`` drawn side by side; the kept epoch is a dashed vertical line in each panel."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = curve_panels(history, kept_epoch)
    figure = Figure(figsize=(5.0 * len(panels), 4.0))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        for label, epochs, values in panel.lines:
            ax.plot(epochs, values, marker="o", label=label)
        if panel.kept_epoch is not None and panel.lines:
            ax.axvline(panel.kept_epoch, color="0.4", linestyle="--", linewidth=1,
                       label=f"weights kept (epoch {panel.kept_epoch})")
        ax.set_title(panel.title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(history) == 1:  # one point: matplotlib's tiny range has no integer inside but the epoch itself
            ax.set_xticks([history[0]["epoch"]])
        ax.grid(alpha=0.3)
        if panel.share:
            ax.set_ylim(0.0, 1.02)
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no epochs recorded", ha="center", va="center", transform=ax.transAxes)
    _save(figure, path)
    return path


def val_loss_summary(history: list[dict], weights_epoch: int | None) -> dict[str, Any]:
    """metrics.json's validation losses: ``kept_val_loss``, that of ``weights_epoch`` (the epoch whose weights the
    run ends with), and ``lowest_val_loss`` of epoch ``lowest_val_loss_epoch`` (the first of equals), the lowest any
    epoch had: lower than the kept one by less than early stopping's margins, or, with train.keep_best off, an
    earlier epoch's. None where there was no validation."""
    losses = {r["epoch"]: float(r["val_loss"]) for r in history
              if _is_number(r.get("val_loss")) and math.isfinite(float(r["val_loss"]))}
    lowest = min(losses, key=losses.__getitem__, default=None)
    return {"kept_val_loss": losses.get(weights_epoch), "lowest_val_loss": losses.get(lowest),
            "lowest_val_loss_epoch": lowest}


def write_evaluation_report(output_dir: str | Path, report: dict[str, Any], history: list[dict]) -> list[Path]:
    """``evaluation.json`` (the report), ``confusion_matrix.png`` and ``training_curves.png`` in ``output_dir``;
    returns their paths; the curves mark the epoch ``report["weights_epoch"]`` names. Each file is written aside and
    renamed, so none is ever half-written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / EVALUATION_FILE
    atomic.write_text(json_path, json.dumps(_plain(report), indent=2) + "\n")
    paths = [json_path, plot_confusion(report, output_dir / CONFUSION_PNG),
             plot_curves(list(history), output_dir / CURVES_PNG, kept_epoch=report.get("weights_epoch"))]
    ledgers = [r["ledger"] for r in history if isinstance(r.get("ledger"), dict)]
    if ledgers:
        paths.append(plot_stages(ledgers[-1], output_dir / STAGES_PNG, epoch=len(history)))
    log.info("evaluation report: %s", ", ".join(str(p) for p in paths))
    return paths


def plot_stages(ledger: dict[str, Any], path: Path, *, epoch: int) -> Path:
    """One epoch's ledger (``training.ledger``): each rank's wall time stacked by the training thread's stages,
    and beside it the loader's busy time per stage (worker stages divided over the workers: wall-clock time)."""
    from matplotlib.figure import Figure

    ranks = ledger["ranks"]
    labels = [f"rank {r['rank']}" for r in ranks]
    figure = Figure(figsize=(12.0, 2.2 + 0.45 * len(ranks)), layout="constrained")
    left, right = figure.subplots(1, 2)
    for ax, key, title in ((left, "trainer_s", f"epoch {epoch}: training thread (s)"),
                           (right, "loader_s", "loader: busy s (worker stages / workers)")):
        stages = [s for s in (TRAINER_STAGES if key == "trainer_s" else LOADER_STAGES) if s in ranks[0][key]]
        offsets = np.zeros(len(ranks))
        for stage in stages:
            values = np.array([r[key][stage] / (max(1, r["workers"]) if key == "loader_s" and stage != "handover"
                                                 else 1) for r in ranks])
            if values.any():
                ax.barh(labels, values, left=offsets, label=stage)
            offsets += values
        ax.set_title(title)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
        if ax.patches:
            ax.legend(fontsize=8, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    _save(figure, path)
    return path
