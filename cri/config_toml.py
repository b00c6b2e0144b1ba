"""Config dataclasses back to TOML text: what `crispd config` prints, and what `parse_config` reads back to an equal
Config. Generic over frozen dataclasses: a nested dataclass is a table, a dict of dataclasses a table per entry, a dict
of plain values an inline table."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r} as TOML")


def toml_key(name: str) -> str:
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
                tables.append((f"{f.name}.{toml_key(name)}", item))
        elif isinstance(value, dict):  # a table of plain values: an inline table keeps it on one line
            items = ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
            scalars.append(f"{f.name} = {{{items}}}" if value else f"# {f.name}: none")
        else:
            scalars.append(f"{f.name} = {toml_value(value)}")
    if header:
        out.append(f"\n[{header}]")
    out.extend(scalars)
    for name, table in tables:
        _dump_table(table, f"{header}.{name}" if header else name, out)


def dump_toml(config: object) -> str:
    """The config as TOML that `parse_config` reads back to an equal Config."""
    out: list[str] = []
    _dump_table(config, "", out)
    return "\n".join(out).lstrip("\n") + "\n"
