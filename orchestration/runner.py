"""The pipeline runner: stages (bigtrain subcommands) run in order as subprocesses, under a lock, each skipped when
its inputs have not changed since its last successful run, every run recorded in a history.

A pipeline file (conf/pipelines/NAME.yaml):

    name: nightly_images
    state: runs/pipelines/nightly_images   # lock, history.jsonl, stages.json (last success of each), logs/
    vars: {raw: data/images}               # ${raw} in args; --var raw=... overrides
    stages:
      - name: preprocess
        run: preprocess-images             # a bigtrain subcommand (or command: [argv...])
        args: {input: "${raw}", output: data/images_ds}
        inputs: [...]                      # optional; default: the input, data and checkpoint args
        launcher: [horovodrun, -np, "2"]   # optional prefix (train under Horovod)

A stage's inputs are fingerprinted: a dataset by its current snapshot id, a file or folder by the names, sizes and
modification times of its files. Same fingerprint as at its last success and its output still there: skipped.

Before the first stage runs, every ``run:`` stage's args are checked against its subcommand's flags
(``check_arguments``): a misspelt or wrong one refuses the whole pipeline (exit 2), before the lock is taken, so no
stage runs and the history records no run, as for any other error in the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

import yaml

from core.errors import DatasetError, UsageError
from core.paths import filesystem, to_url
from dataset import layout, manifest
from training import outputs

DEFAULT_INPUT_ARGS = ("input", "data", "checkpoint")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class PipelineError(UsageError):
    """The pipeline file is wrong; the message names the file and the key."""


@dataclass(frozen=True)
class Stage:
    name: str
    argv: list[str]                 # what runs, launcher included
    inputs: list[str]
    output: str | None
    subcommand: str | None = None   # run: a bigtrain subcommand, given subcommand_args; None for a command:
    subcommand_args: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Pipeline:
    name: str
    file: str
    state: Path
    stages: list[Stage] = field(default_factory=list)


def _args(value: Any, where: str) -> list[str]:
    """``{key: value}`` -> ``--key value`` (true: a bare flag; false or null: left out; a list: repeated)."""
    if isinstance(value, list):
        return [str(v) for v in value]
    if not isinstance(value, dict):
        raise PipelineError(f"{where}: args must be a mapping of flags or a list, got {value!r}")
    out: list[str] = []
    for key, val in value.items():
        flag = f"--{key}"
        if val is True:
            out.append(flag)
        elif val not in (False, None):
            for item in (val if isinstance(val, list) else [val]):
                out += [flag, str(item)]
    return out


def resolve_vars(variables: dict[str, str], *, where: str) -> dict[str, str]:
    """Vars may name other vars (``dataset: ${root}/images_ds``), so that ``--var root=/data/bigtrain`` moves
    everything under it; a cycle is an error naming it."""
    resolved: dict[str, str] = {}

    def value(name: str, chain: tuple[str, ...]) -> str:
        if name in chain:
            raise PipelineError(f"{where}: vars refer to each other in a cycle: {' -> '.join((*chain, name))}")
        if name not in resolved:
            inner = {k: value(k, (*chain, name)) for k in _VAR.findall(variables[name]) if k in variables}
            resolved[name] = _substitute(variables[name], {**variables, **inner}, f"{where}: {name}")
        return resolved[name]

    return {name: value(name, ()) for name in variables}


def _substitute(value: Any, variables: dict[str, str], where: str) -> Any:
    if isinstance(value, str):
        def one(match: re.Match) -> str:
            if match.group(1) not in variables:
                raise PipelineError(f"{where}: ${{{match.group(1)}}} is not a var (vars: {', '.join(variables)})")
            return variables[match.group(1)]
        return _VAR.sub(one, value)
    if isinstance(value, list):
        return [_substitute(v, variables, where) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, variables, where) for k, v in value.items()}
    return value


def load(path: str, overrides: dict[str, str] | None = None, *, subcommands: Collection[str]) -> Pipeline:
    """Read and check a pipeline file; ``overrides`` replace its vars. ``subcommands`` are the names a stage's
    ``run:`` may give (the ``bigtrain`` command's, ``jobs.cli.SUBCOMMANDS``: the entry points sit above this layer,
    so they are handed in)."""
    if not os.path.isfile(path):
        raise PipelineError(f"pipeline file {path} does not exist")
    with open(path) as fh:
        spec = yaml.safe_load(fh) or {}
    unknown = sorted(set(spec) - {"name", "state", "vars", "stages"})
    if unknown:
        raise PipelineError(f"{path}: unknown key {unknown[0]!r} (known: name, state, vars, stages)")
    variables = {k: str(v) for k, v in (spec.get("vars") or {}).items()}
    missing = sorted(set(overrides or {}) - set(variables))
    if missing:
        raise PipelineError(f"--var {missing[0]}: {path} has no such var (vars: {', '.join(variables)})")
    variables = resolve_vars({**variables, **(overrides or {})}, where=f"{path}: vars")
    name = spec.get("name") or Path(path).stem
    state = Path(_substitute(spec.get("state") or f"runs/pipelines/{name}", variables, f"{path}: state"))
    stages, seen = [], set()
    for i, raw in enumerate(spec.get("stages") or []):
        where = f"{path}: stages[{i}]"
        raw = _substitute(raw, variables, where)
        unknown = sorted(set(raw) - {"name", "run", "command", "args", "inputs", "launcher"})
        if unknown:
            raise PipelineError(f"{where}: unknown key {unknown[0]!r}")
        stage_name = raw.get("name") or raw.get("run")
        if not stage_name or stage_name in seen:
            raise PipelineError(f"{where}: every stage needs a unique name (got {stage_name!r})")
        seen.add(stage_name)
        args = raw.get("args") or {}
        subcommand, flags = None, _args(args, where)
        if raw.get("command"):
            argv = [str(a) for a in raw["command"]] + flags
        elif raw.get("run") in subcommands:
            subcommand = raw["run"]
            argv = [sys.executable, "-m", "jobs.cli", subcommand, *flags]
        else:
            raise PipelineError(f"{where}: run {raw.get('run')!r} is not a bigtrain subcommand "
                                f"({', '.join(subcommands)}), and no command is given")
        named = args if isinstance(args, dict) else {}
        inputs = raw.get("inputs") or [str(named[k]) for k in DEFAULT_INPUT_ARGS if named.get(k)]
        output = str(named["output"]) if named.get("output") else None
        stages.append(Stage(stage_name, [str(a) for a in raw.get("launcher") or []] + argv, list(inputs), output,
                            subcommand, flags if subcommand else []))
    if not stages:
        raise PipelineError(f"{path}: no stages")
    return Pipeline(name, path, state, stages)


def check_arguments(pipeline: Pipeline, problem_of: Callable[[str, list[str]], str | None]) -> None:
    """Refuse the pipeline (``PipelineError``, exit 2) when a ``run:`` stage's args would stop its subcommand at
    its flags. ``problem_of(subcommand, args)`` is that subcommand's parser, handed in from above like the names
    (``jobs.cli.argument_problem``); it parses without running. Vars are substituted when the file is read, so
    the args checked are the ones the stage gets. ``command:`` stages are any program's: not checked."""
    for stage in pipeline.stages:
        problem = problem_of(stage.subcommand, stage.subcommand_args) if stage.subcommand else None
        if problem:
            raise PipelineError(f"{pipeline.file}: stage {stage.name} ({stage.subcommand}): {problem}")


def fingerprint_of(path: str) -> str:
    """A dataset: its current snapshot id. A file or folder (local or URL): a hash of its files' names, sizes and
    modification times. Missing: 'missing'."""
    try:
        url = layout.resolve_snapshot(path)
        return "snapshot:" + manifest.read(url).snapshot_id
    except DatasetError:
        pass
    fs, root = filesystem(to_url(path))
    if not fs.exists(root):
        return "missing"
    entries = fs.find(root, detail=True) if fs.isdir(root) else {root: fs.info(root)}
    digest = hashlib.sha256()
    for name, info in sorted(entries.items()):
        stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("last_modified")
        digest.update(f"{name[len(root):]}\0{info.get('size')}\0{stamp}\n".encode())
    return "files:" + digest.hexdigest()[:16]


def stage_fingerprint(stage: Stage) -> tuple[str, dict[str, str]]:
    """The stage's inputs, its command line and the content of the config files it names (``--config FILE``: an
    edited file reruns the stage, whatever its name)."""
    inputs = {path: fingerprint_of(path) for path in stage.inputs}
    configs = {path: _content_digest(path) for path in config_files(stage.argv)}
    blob = json.dumps({"argv": stage.argv[stage.argv.index("jobs.cli"):] if "jobs.cli" in stage.argv else stage.argv,
                       "inputs": inputs, **({"configs": configs} if configs else {})}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16], inputs


def config_files(argv: list[str]) -> list[str]:
    """The files a command line passes as ``--config FILE`` or ``--config=FILE``."""
    found = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    return found + [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]


def _content_digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return "missing"


def _output_exists(output: str | None) -> bool:
    if not output:
        return True
    fs, path = filesystem(to_url(output))
    return fs.exists(path)


def counts_of(output: str | None) -> dict[str, Any]:
    """What a stage produced, for the history: a dataset's snapshot and counts, training or prediction metrics."""
    if not output:
        return {}
    try:
        contents = manifest.read(layout.resolve_snapshot(output))
        return {"snapshot": contents.snapshot_id, "records_read": contents.records_read, "rejected": contents.rejected,
                "rows": {k: v.rows for k, v in contents.splits.items()}}
    except DatasetError:
        pass
    for name, keys in ((outputs.METRICS_FILE, ("test_accuracy", "test_rows")), (outputs.PREDICT_SUMMARY_FILE, None)):
        file = Path(output) / name
        if file.is_file():
            try:
                data = json.loads(file.read_text())
            except (ValueError, UnicodeDecodeError):
                return {"unreadable": str(file)}  # the stage ran; its record says what could not be read
            if isinstance(data, dict):
                return {k: v for k, v in data.items() if (k in keys if keys else isinstance(v, (int, float)))}
    return {}
