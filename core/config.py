"""Configuration: committed YAML defaults, machine-local and user overrides, `--set a.b=v`, validated into dataclasses.

Layers, later wins: ``conf/bigtrain.yaml`` (committed defaults) -> ``conf/local/bigtrain.yaml`` (ignored,
machine-local) -> ``--config FILE`` -> ``--set key=value`` -> the job's own flags. Every key of a section must be
known and of the declared type; errors name the key (``train.batch_size``) and the bad value.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml

from core import typed
from core.errors import ConfigError
from core.redact import redact_text

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
DEFAULTS_FILE = CONF_DIR / "bigtrain.yaml"
LOCAL_FILE = CONF_DIR / "local" / "bigtrain.yaml"

T = TypeVar("T")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with path.open() as fh:
        try:
            data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"config file {path} is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}"
                              ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def read_defaults() -> dict[str, Any]:
    """conf/bigtrain.yaml from the checkout, or the copy packed into core/ by `make dist` when the code runs from
    the zip that spark-submit --py-files shipped."""
    if DEFAULTS_FILE.is_file():
        return read_yaml(DEFAULTS_FILE)
    import pkgutil

    packed = pkgutil.get_data("core", "bigtrain.yaml")
    if packed is None:
        raise ConfigError(f"config file {DEFAULTS_FILE} does not exist, and core/bigtrain.yaml is not packed")
    data = yaml.safe_load(packed.decode("utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError("core/bigtrain.yaml must hold a mapping of sections")
    return data


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["train.lr=0.1", "images.splits.test=0.2"]`` -> nested dict. Values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {redact_text(item)!r}: expected KEY=VALUE, e.g. --set train.lr=0.05")
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {redact_text(item)!r}: {part} is both a value and a section")
        node[parts[-1]] = _scalar(raw)
    return nested


def _scalar(raw: str) -> Any:
    """A ``--set`` value as YAML reads it (numbers, booleans, lists), or as the text itself where YAML cannot read
    it (``*x``, ``!x``, ``%x``, ``@x``, an unclosed ``[``): a password that starts like YAML syntax is a string,
    never an error message that repeats it."""
    if not raw.strip():
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_section(section: str, cls: type[T], *, config_file: str | None = None,
                 overrides: list[str] | None = None, flags: dict[str, Any] | None = None) -> T:
    """Build the dataclass ``cls`` from the ``section`` of the layered configuration.

    ``flags`` are the job's explicit command-line flags (``None`` values mean "not given" and are ignored). A typo
    anywhere is an error naming it: the command's section is checked key by key against ``cls``; every other section
    of a config file, by its top-level keys, against the defaults; a ``--set`` must name the command's section.
    """
    defaults = read_defaults()
    if section not in defaults:
        raise ConfigError(f"config section {section!r} is missing from {DEFAULTS_FILE}")
    check_overrides(overrides, section=section, sections=list(defaults))
    layers = [defaults]
    for path in ([LOCAL_FILE] if LOCAL_FILE.is_file() else []) + ([Path(config_file)] if config_file else []):
        layers.append(check_sections(read_yaml(path), defaults, where=f"config file {path}"))
    layers.append(parse_overrides(overrides))
    layers.append({section: {k: v for k, v in (flags or {}).items() if v is not None}})
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = merge(merged, layer)
    return from_dict(cls, merged[section], prefix=section)


def _suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_sections(data: dict[str, Any], defaults: dict[str, Any], *, where: str) -> dict[str, Any]:
    """A config file's sections and their top-level keys must be ones the defaults hold (``trian:``, ``train:
    {epoch: 3}`` are errors naming the key); the keys of each command's own section are checked in full when it
    runs."""
    for name, body in data.items():
        if name not in defaults:
            raise ConfigError(f"{where}: unknown config section {name!r}{_suggest(name, defaults)}; sections: "
                              f"{', '.join(defaults)}")
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: config section {name!r} must be a mapping of keys, got "
                              f"{type(body).__name__}")
        for key in body:
            if key not in defaults[name]:
                raise ConfigError(f"{where}: unknown config key {name}.{key}{_suggest(key, defaults[name])}")
    return data


def check_overrides(items: list[str] | None, *, section: str, sections: list[str]) -> None:
    """Each ``--set`` names a key of the command's own section: ``--set epochs=1`` (no section) and ``--set
    train.lr=0.1`` given to a preprocessing command would otherwise change nothing, silently."""
    for item in items or []:
        key = item.partition("=")[0].strip()
        head, dot, _ = key.partition(".")
        if not dot:
            raise ConfigError(f"--set {redact_text(item)!r}: keys are SECTION.KEY; this command reads section "
                              f"{section} (e.g. --set {section}.{key}=...)")
        if head not in sections:
            raise ConfigError(f"--set {redact_text(item)!r}: unknown config section {head!r}"
                              f"{_suggest(head, sections)}; this command reads section {section}")
        if head != section:
            raise ConfigError(f"--set {redact_text(item)!r}: this command reads only section {section}; "
                              f"{head}.* is not used here")


CONFIG = typed.Rules(error=ConfigError, label="config key", unknown_keys_are_errors=True)


def from_dict(cls: type[T], data: Any, *, prefix: str) -> T:
    """The section dataclass ``cls`` from its mapping; unknown keys, missing keys and wrong types are ConfigErrors
    naming the key (``train.batch_size``)."""
    return typed.build(cls, data, prefix=prefix, rules=CONFIG)


def require(condition: bool, key: str, message: str) -> None:
    """For ``validate`` methods: raise a ConfigError naming ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"config key {key}: {message}")
