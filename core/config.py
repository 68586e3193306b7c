"""Configuration: committed YAML defaults, machine-local and user overrides, `--set a.b=v`, validated into dataclasses.

Layers, later wins: ``conf/bigtrain.yaml`` (committed defaults) -> ``conf/local/bigtrain.yaml`` (ignored,
machine-local) -> ``--config FILE`` -> ``--set key=value`` -> the job's own flags. Every key of a section must be
known and of the declared type; errors name the key (``train.batch_size``) and the bad value.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from core.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
DEFAULTS_FILE = CONF_DIR / "bigtrain.yaml"
LOCAL_FILE = CONF_DIR / "local" / "bigtrain.yaml"

T = TypeVar("T")
_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
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
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=0.05")
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is both a value and a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return nested


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

    ``flags`` are the job's explicit command-line flags (``None`` values mean "not given" and are ignored).
    """
    layers = [read_defaults()]
    if LOCAL_FILE.is_file():
        layers.append(read_yaml(LOCAL_FILE))
    if config_file:
        layers.append(read_yaml(config_file))
    layers.append(parse_overrides(overrides))
    layers.append({section: {k: v for k, v in (flags or {}).items() if v is not None}})
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = merge(merged, layer)
    if section not in merged:
        raise ConfigError(f"config section {section!r} is missing from {DEFAULTS_FILE}")
    return from_dict(cls, merged[section], prefix=section)


def from_dict(cls: type[T], data: Any, *, prefix: str) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {prefix}.{unknown[0]} (known keys of {prefix}: {', '.join(sorted(fields))})")
    values = {}
    for name, field in fields.items():
        key = f"{prefix}.{name}"
        if name not in data:
            if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING:
                continue
            raise ConfigError(f"config key {key} is missing")
        values[name] = _coerce(hints[name], data[name], key)
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate(prefix)
        except ConfigError:
            raise
        except ValueError as exc:  # e.g. pipelines.splits.validate_fractions: its message already names the key
            raise ConfigError(str(exc)) from None
    return obj


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key {key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, prefix=key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {key}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-9 (no dot) as a string; it is a number to anyone writing it
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def require(condition: bool, key: str, message: str) -> None:
    """For ``validate`` methods: raise a ConfigError naming ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"config key {key}: {message}")
