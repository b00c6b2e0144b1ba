"""The config file's codec: TOML tables into frozen dataclasses and back.

A dataclass describes a section: each field's annotation is the type its TOML value must have (nested dataclasses
and dicts of them are tables), field metadata `choices` lists the allowed values and `absolute` asks for an
absolute path, and a `check()` method returns what is wrong with the values together. Every problem is a
`ConfigError` naming the full key (`cgroup.driver`). cri/config.py has the sections.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from typing import Any, TypeVar


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file and the key."""


T = TypeVar("T")


def _describe(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


def _convert(tp: Any, value: object, key: str) -> object:
    """Check one TOML value against a field's annotation; nested dataclasses and dicts recurse."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {_describe(value)}")
        return build(typing.cast(type[Any], tp), value, key + ".")
    if origin is dict:
        _, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {_describe(value)}")
        return {name: _convert(value_tp, item, f"{key}.{name}") for name, item in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected an array, got {_describe(value)}")
        return [_convert(item_tp, item, f"{key}[{i}]") for i, item in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"config field {key} has an unsupported type {tp!r}")  # a bug in this module


def build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """The section `cls` from its TOML table `data` (keys named `prefix` + name in errors), checked."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(typing.cast(Any, cls))}
    for name in data:
        if name not in fields:
            raise ConfigError(f"unknown key '{prefix}{name}'")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = prefix + name
        converted = _convert(hints[name], value, key)
        meta = fields[name].metadata
        if "choices" in meta and converted not in meta["choices"]:
            allowed = ", ".join(repr(c) for c in meta["choices"])
            raise ConfigError(f"{key}: {converted!r} is not one of {allowed}")
        if meta.get("absolute") and not os.path.isabs(str(converted)):
            raise ConfigError(f"{key}: must be an absolute path, got {converted!r}")
        kwargs[name] = converted
    obj = cls(**kwargs)
    _check(obj, prefix)
    return obj


def _check(obj: object, prefix: str) -> None:
    check = getattr(obj, "check", None)
    if check is not None:
        for name, message in check():
            raise ConfigError(f"{prefix}{name}: {message}")


# ---------------------------------------------------------------------------------------------- TOML output


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r} as TOML")


def _toml_key(name: str) -> str:
    bare = name and all(c.isalnum() or c in "-_" for c in name)
    return name if bare else json.dumps(name)


def _dump_table(obj: object, header: str, out: list[str]) -> None:
    scalars: list[str] = []
    tables: list[tuple[str, object]] = []
    for f in dataclasses.fields(typing.cast(Any, obj)):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            tables.append((f.name, value))
        elif isinstance(value, dict) and any(dataclasses.is_dataclass(v) for v in value.values()):
            for name, item in value.items():
                tables.append((f"{f.name}.{_toml_key(name)}", item))
        elif isinstance(value, dict):  # a table of plain values: an inline table keeps it on one line
            items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
            scalars.append(f"{f.name} = {{{items}}}" if value else f"# {f.name}: none")
        else:
            scalars.append(f"{f.name} = {_toml_value(value)}")
    if header:
        out.append(f"\n[{header}]")
    out.extend(scalars)
    for name, table in tables:
        _dump_table(table, f"{header}.{name}" if header else name, out)


def dump(obj: object) -> str:
    """A section dataclass (the whole config) as TOML that `build` reads back to an equal object."""
    out: list[str] = []
    _dump_table(obj, "", out)
    return "\n".join(out).lstrip("\n") + "\n"
