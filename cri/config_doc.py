"""docs/configuration.md and deploy/crisp.toml, generated from the config dataclasses (cri/config.py).

Each key's meaning is the comment right above its field, each table's the class docstring; the type, default and
allowed values come from the field itself. `python -m cri.config_doc` rewrites both files; a unit test fails when
they differ from what this renders (a key added, a default changed, a comment reworded).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import textwrap
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri.config import DEFAULT_CONFIG_PATH, Config
from cri.configfile import toml_key, toml_value

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "configuration.md"
EXAMPLE = ROOT / "deploy" / "crisp.toml"
WIDTH = 116

# tables whose entries are named by the operator: what a table of each looks like (not defaults, examples)
EXAMPLES = {
    "runtime.handlers": '[runtime.handlers.runc]\ntype = "oci"\npath = "runc"\n\n'
                        '[runtime.handlers.crun]\ntype = "oci"\npath = "crun"',
    "image.auths": '[image.auths."registry.example.com"]\nusername = "robot"\npassword = "secret"',
}
NAMED = {"runtime.handlers": "<handler name>", "image.auths": '"<registry host>"'}


@dataclass(frozen=True)
class Key:
    name: str
    type: str
    default: str  # as TOML
    meaning: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    name: str  # the TOML header ("" for the top level; runtime.handlers.<handler name> for named ones)
    doc: str
    keys: list[Key]
    named: str = ""  # the config key of a table of named tables ("runtime.handlers"), else ""


def field_comments(cls: type) -> dict[str, str]:
    """field name -> the comment lines right above it in the class body, joined."""
    lines, _ = inspect.getsourcelines(cls)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    body = typing.cast(ast.ClassDef, tree.body[0]).body
    out = {}
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            comment: list[str] = []
            index = node.lineno - 2  # the line above, 0-based
            while index >= 0 and lines[index].strip().startswith("#"):
                comment.insert(0, lines[index].strip().lstrip("#").strip())
                index -= 1
            out[node.target.id] = " ".join(comment)
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"array of {_type_name(typing.get_args(tp)[0])}s"
    if origin is dict:
        return f"table of {_type_name(typing.get_args(tp)[1])}s"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}[tp]


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    assert f.default_factory is not dataclasses.MISSING
    return f.default_factory()


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return toml_value(value)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".") if text else ""


def tables(cls: type = Config, name: str = "", named: str = "") -> list[Table]:
    """The tables of `cls` and of everything below it, in the dataclasses' order."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    doc = inspect.cleandoc(cls.__doc__ or "")
    if doc.startswith(f"{cls.__name__}("):  # the signature dataclass() puts there when the class has no docstring
        doc = ""
    own = Table(name, doc, [], named)
    out = [own]
    for f in dataclasses.fields(typing.cast(Any, cls)):
        tp = hints[f.name]
        key = f"{name}.{f.name}" if name else f.name
        if dataclasses.is_dataclass(tp):
            out += tables(typing.cast(type, tp), key)
        elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            entry = typing.cast(type, typing.get_args(tp)[1])
            sub = tables(entry, f"{key}.{NAMED[key]}", named=key)
            out.append(dataclasses.replace(sub[0], doc=f"{sub[0].doc} {_sentence(comments[f.name])}".strip()))
            out += sub[1:]
        else:
            own.keys.append(Key(f.name, _type_name(tp), _toml(_default(f)), comments[f.name],
                                tuple(f.metadata.get("choices", ()))))
    return out


# ---------------------------------------------------------------------------------------------- the reference


def _text(text: str) -> str:
    """Plain text in Markdown: <placeholders> are not HTML tags."""
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _cell(text: str) -> str:
    return _text(text).replace("|", "\\|")


def render_reference() -> str:
    out = [
        "# crispd configuration reference",
        "",
        "<!-- Generated from cri/config.py by `python -m cri.config_doc`; tests/unit/test_config_doc.py fails when",
        "     the two drift. Edit the comments in cri/config.py, then regenerate. -->",
        "",
        f"crispd reads one TOML file, `{DEFAULT_CONFIG_PATH}` unless `--config` names another (a missing default "
        "file means all defaults). Every key is optional and has the default shown here; an unknown key or a bad "
        "value stops crispd with a message naming the key. `crispd config` prints the effective configuration "
        "(file, defaults and flags) with credentials shown as `<redacted>`. The flags `--root`, `--state`, "
        "`--listen`, `--log-level`, `--log-format`, `--metrics-address` and `--streaming-address` override their "
        "keys. [deploy/crisp.toml](../deploy/crisp.toml) is a file with every default; registries, mirrors and "
        "credentials are explained in [registry.md](registry.md).",
    ]
    for table in tables():
        if not table.keys and not table.named:
            continue  # a table of named tables only ([runtime])
        title = f"`[{table.name}]`" if table.name else "Top level"
        out += ["", f"## {title}", "", _text(table.doc)]
        if table.keys:
            out += ["", "| key | type | default | meaning |", "|---|---|---|---|"]
            for key in table.keys:
                meaning = key.meaning
                if key.choices:
                    meaning += " (one of " + ", ".join(f"`{c}`" for c in key.choices) + ")"
                default = key.default.replace("|", "\\|")  # code: no entities, only the column bar escaped
                out.append(f"| `{key.name}` | {key.type} | `{default}` | {_cell(meaning)} |")
        if table.named:
            out += ["", "Example (not a default):", "", "```toml", EXAMPLES[table.named], "```"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------- the example file


def _comment(text: str) -> list[str]:
    return [f"# {line}" for line in textwrap.wrap(text, WIDTH - 2)]


def render_example() -> str:
    out = [
        f"# {DEFAULT_CONFIG_PATH}: every key with its default, and examples (commented out) of the tables named by",
        "# the operator. Generated from cri/config.py (python -m cri.config_doc); docs/configuration.md explains each",
        "# key. `crispd config` prints the effective config (this file, defaults and flags).",
    ]
    for table in tables():
        if table.named:
            out += ["", *_comment(f"{table.doc} Not defaults: an example."),
                    *(f"# {line}" if line else "#" for line in EXAMPLES[table.named].splitlines())]
            continue
        if not table.keys:
            continue
        out.append("")
        if table.name:
            out.append(f"[{table.name}]")
        for key in table.keys:
            meaning = key.meaning + (" (" + " | ".join(key.choices) + ")" if key.choices else "")
            out += [*_comment(meaning), f"{key.name} = {key.default}"]
    return "\n".join(out) + "\n"


def main() -> int:
    REFERENCE.write_text(render_reference())
    EXAMPLE.write_text(render_example())
    print(f"wrote {REFERENCE} and {EXAMPLE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
