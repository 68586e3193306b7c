"""Training from Python (a notebook, a script, a scheduler's task) without going through ``argv``.

    from training.api import fit, load_model

    result = fit("runs/demo/texts/dataset", "runs/notebook/model", model="mypackage.models:build",
                 epochs=20, model_config={"hidden": 128}, rnn={"hidden": 64})
    result.metrics["test_accuracy"], result.metrics["baselines"]
    model, payload = load_model("runs/notebook/model/checkpoint.pt")

``fit`` is ``bigtrain train`` as a function: the same layered config (``conf/bigtrain.yaml``, then ``config_file``,
then the keyword settings, each a key of section ``train``; nested sections as mappings), the same checkpoints,
resume, reports and baselines. It trains in the calling process (``backend="auto"``: a world of one); for several
processes launch ``jobs/train.py`` with horovodrun or torchrun.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from core.config import load_section
from core.errors import ConfigError
from core.logs import setup_logging
from training.checkpoint import load_model
from training.config import TrainConfig
from training.distributed import init_distributed
from training import wiring
from training.trainer import TrainResult

__all__ = ["fit", "load_model", "model_path"]
log = logging.getLogger("bigtrain.train")


def model_path(model: str | Callable[..., Any]) -> str:
    """``train.model`` for ``model``: a name or import path as given, or the import path of a factory function or
    class (``module:qualified.name``), which checkpoints record so that predict and ``load_model`` rebuild it."""
    if isinstance(model, str):
        return model
    module, name = getattr(model, "__module__", None), getattr(model, "__qualname__", None)
    if not module or not name or "<locals>" in name or "<lambda>" in name:
        raise ConfigError(f"config key train.model: {model!r} has no import path (a function defined inside another "
                          "function, or a lambda); define the factory at the top level of a module")
    if module == "__main__":
        log.warning("train.model: %s is defined in __main__ (this notebook or script): the checkpoint records "
                    "__main__:%s, which load_model rebuilds only where that name is defined; for predict on Spark, "
                    "define the factory in a module", name, name)
    return f"{module}:{name}"


def fit(data: str, output: str | Path, *, model: str | Callable[..., Any] | None = None,
        config_file: str | Path | None = None, backend: str = "auto", **settings: Any) -> TrainResult:
    """Train on the dataset at ``data`` (a folder or URL written by a preprocess job) into ``output``; returns the
    metrics (``metrics.json``'s content) and the trained model.

    ``model``: ``auto``, a built-in name, ``package.module:factory``, or the factory itself (``factory(dataset_spec,
    model_config) -> nn.Module``). ``settings``: keys of config section ``train`` (``epochs=5``,
    ``model_config={...}``, ``fasttext={"bigrams": False}``); an unknown key or a wrong type is a ConfigError naming
    it. ``backend``: auto (DDP under torchrun, else Horovod, a world of one without horovodrun), horovod, torch or
    single.
    """
    flags = {**settings, "model": None if model is None else model_path(model)}
    config = load_section("train", TrainConfig, config_file=None if config_file is None else str(config_file),
                          flags=flags)
    dist = init_distributed(backend, device=config.device)
    setup_logging(rank=dist.rank)
    result = wiring.fit(config, data_url=str(data), output_dir=output, dist=dist)
    dist.close()
    return result
