"""Mappings (parsed YAML or JSON) to dataclasses, every value checked against its field's type: one mechanism for
the config sections (``core.config``) and the dataset manifest (``dataset.manifest``). Errors name the key."""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from core.redact import redact

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
        raise rules.error(f"{prefix or rules.label}: expected a mapping, got {_shown(prefix, data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown and rules.unknown_keys_are_errors:
        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        guess = f"did you mean {_key(prefix, close[0])}? " if close else ""
        raise rules.error(f"unknown {rules.label} {_key(prefix, unknown[0])} ({guess}known keys of {prefix}: "
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


def _shown(key: str, value: Any) -> str:
    """A value as an error message shows it: secrets (by their key's name, see core.redact) never."""
    return repr(redact(value, key))


def _dotted(mapping: dict, prefix: str = "") -> dict:
    """{"spark": {"executor": {"memory": "2g"}}} -> {"spark.executor.memory": "2g"}."""
    out: dict = {}
    for k, v in mapping.items():
        name = f"{prefix}{k}"
        out.update(_dotted(v, name + ".") if isinstance(v, dict) else {name: v})
    return out


def _described(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return ", ".join(map(repr, typing.get_args(tp)))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, repr(tp))


def _coerce(tp: Any, value: Any, key: str, rules: Rules) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = f"{rules.label} {key}"
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        choices = [a for a in args if a is not type(None)]
        if len(choices) == 1:
            return _coerce(choices[0], value, key, rules)
        for choice in choices:  # int | Literal["auto"]: the first alternative the value fits
            try:
                return _coerce(choice, value, key, rules)
            except rules.error:
                continue
        raise rules.error(f"{bad}: expected {' or '.join(map(_described, choices))}, got {_shown(key, value)}")
    if origin is Literal:
        if value not in args:
            raise rules.error(f"{bad}: {_shown(key, value)} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, prefix=key, rules=rules)
    if origin is dict:
        if not isinstance(value, dict):
            raise rules.error(f"{bad}: expected a mapping, got {_shown(key, value)}")
        if args[1] is str:  # Spark and Hadoop keys hold dots: --set x.spark_conf.spark.executor.memory=2g arrives nested
            value = _dotted(value)
        return {str(k): _coerce(args[1], v, f"{key}.{k}", rules) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise rules.error(f"{bad}: expected a list, got {_shown(key, value)}")
        return [_coerce(args[0], v, f"{key}[{i}]", rules) for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise rules.error(f"{bad}: expected true or false, got {_shown(key, value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise rules.error(f"{bad}: expected an integer, got {_shown(key, value)}")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-9 (no dot) as a string; it is a number to anyone writing it
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise rules.error(f"{bad}: expected a number, got {_shown(key, value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise rules.error(f"{bad}: expected a string, got {_shown(key, value)}")
        return value
    raise TypeError(f"unsupported type {tp!r} for {key}")
