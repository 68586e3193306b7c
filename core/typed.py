"""Mappings (parsed YAML or JSON) to dataclasses, every value checked against its field's type: one mechanism for
the config sections (``core.config``) and the dataset manifest (``dataset.manifest``). Errors name the key."""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

T = TypeVar("T")
_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


@dataclass(frozen=True)
class Rules:
    """How one kind of document is read: the error it raises, how it names a key, and whether keys the dataclass
    does not have are errors (config: a typo must not pass silently) or left alone (manifests)."""
    error: type[Exception]
    label: str                  # "config key" -> "config key train.lr: expected a number, got 'x'"
    unknown_keys_are_errors: bool


def build(cls: type[T], data: Any, *, prefix: str, rules: Rules) -> T:
    """``cls`` from ``data``; a nested dataclass gets the keys below ``prefix`` (``train.cnn.hidden``). A class
    with a ``validate(prefix)`` method is validated; a ValueError from it becomes ``rules.error``."""
    if not isinstance(data, dict):
        raise rules.error(f"{prefix or rules.label}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown and rules.unknown_keys_are_errors:
        raise rules.error(f"unknown {rules.label} {_key(prefix, unknown[0])} (known keys of {prefix}: "
                          f"{', '.join(sorted(fields))})")
    values = {}
    for name, field in fields.items():
        key = _key(prefix, name)
        if name not in data:
            if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING:
                continue
            raise rules.error(f"{rules.label} {key} is missing")
        values[name] = _coerce(hints[name], data[name], key, rules)
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate(prefix)
        except rules.error:
            raise
        except ValueError as exc:  # e.g. dataset.layout.validate_fractions: its message already names the key
            raise rules.error(str(exc)) from None
    return obj


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _coerce(tp: Any, value: Any, key: str, rules: Rules) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = f"{rules.label} {key}"
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(next(a for a in args if a is not type(None)), value, key, rules)
    if origin is Literal:
        if value not in args:
            raise rules.error(f"{bad}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, prefix=key, rules=rules)
    if origin is dict:
        if not isinstance(value, dict):
            raise rules.error(f"{bad}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}", rules) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise rules.error(f"{bad}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]", rules) for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise rules.error(f"{bad}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise rules.error(f"{bad}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-9 (no dot) as a string; it is a number to anyone writing it
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise rules.error(f"{bad}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise rules.error(f"{bad}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported type {tp!r} for {key}")
