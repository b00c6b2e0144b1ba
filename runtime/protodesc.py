"""Protobuf messages from hand-written descriptors: field declarations in proto3 syntax, built into a
FileDescriptorProto and message classes at import, in a pool of their own.

For protocols without published Python stubs (ttrpc's envelope, NRI): the field names, numbers and types are the
protocols' published facts, written here as `type name = number;` lines (with `repeated` and `map<K, V>`), so that
no generated code is committed and no protoc runs at build time. A conformance test compiles each protocol's own
.proto and compares the descriptors field by field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_FDP = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    "string": _FDP.TYPE_STRING, "bytes": _FDP.TYPE_BYTES, "bool": _FDP.TYPE_BOOL, "int32": _FDP.TYPE_INT32,
    "int64": _FDP.TYPE_INT64, "uint32": _FDP.TYPE_UINT32, "uint64": _FDP.TYPE_UINT64, "double": _FDP.TYPE_DOUBLE,
    "float": _FDP.TYPE_FLOAT,
}
_DECL = re.compile(r"^(repeated\s+)?(?:map<\s*(\w+)\s*,\s*([\w.]+)\s*>|([\w.]+))\s+(\w+)\s*=\s*(\d+)$")


@dataclass(frozen=True)
class Service:
    name: str
    methods: tuple[tuple[str, str, str], ...]  # (method, request message, response message)


def json_name(name: str) -> str:
    """protoc's default json_name: underscores dropped, the letter after each one upper-cased."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


class _Builder:
    def __init__(self, package: str, enums: Iterable[str]) -> None:
        self.package = package
        self.enums = set(enums)

    def qualified(self, type_name: str) -> str:
        return f".{self.package}.{type_name}"

    def set_type(self, field: Any, type_name: str) -> None:
        if type_name in SCALARS:
            field.type = SCALARS[type_name]
        elif type_name in self.enums:
            field.type = _FDP.TYPE_ENUM
            field.type_name = self.qualified(type_name)
        else:
            field.type = _FDP.TYPE_MESSAGE
            field.type_name = self.qualified(type_name)

    def add_fields(self, message: Any, full_name: str, declarations: str) -> None:
        for decl in (d.strip() for d in declarations.replace("\n", " ").split(";")):
            if not decl:
                continue
            match = _DECL.match(" ".join(decl.split()))
            if match is None:
                raise ValueError(f"{full_name}: cannot read the field declaration {decl!r}")
            repeated, key, value, type_name, name, number = match.groups()
            field = message.field.add(name=name, number=int(number), json_name=json_name(name))
            field.label = _FDP.LABEL_REPEATED if repeated or key else _FDP.LABEL_OPTIONAL
            if key:
                entry = message.nested_type.add(name=_camel(name) + "Entry")
                entry.options.map_entry = True
                for entry_name, number_, entry_type in (("key", 1, key), ("value", 2, value)):
                    f = entry.field.add(name=entry_name, number=number_, json_name=entry_name,
                                        label=_FDP.LABEL_OPTIONAL)
                    self.set_type(f, entry_type)
                field.type = _FDP.TYPE_MESSAGE
                field.type_name = self.qualified(f"{full_name}.{entry.name}")
            else:
                self.set_type(field, type_name)


def add_fields(message: Any, full_name: str, declarations: str, package: str, enums: Iterable[str] = ()) -> None:
    """Add declared fields to the DescriptorProto `message` (`full_name`: its name in `package`, nested ones as
    `Outer.Inner`); a type that is neither a scalar nor one of `enums` is a message of the package."""
    _Builder(package, enums).add_fields(message, full_name, declarations)


def build_file(name: str, package: str, messages: Mapping[str, str], enums: Mapping[str, str] | None = None,
               services: Iterable[Service] = ()) -> descriptor_pb2.FileDescriptorProto:
    """A proto3 file. `messages` maps a message name (nested ones as `Outer.Inner`) to its field declarations;
    `enums` maps an enum name (nested ones as `Outer.Inner`) to `NAME = number;` declarations."""
    enums = enums or {}
    fdp = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3")
    builder = _Builder(package, enums)
    protos: dict[str, Any] = {}
    for full_name in messages:
        outer, _, inner = full_name.rpartition(".")
        protos[full_name] = (protos[outer].nested_type if outer else fdp.message_type).add(name=inner)
    for full_name, declarations in messages.items():
        builder.add_fields(protos[full_name], full_name, declarations)
    for full_name, values in enums.items():
        outer, _, inner = full_name.rpartition(".")
        enum = (protos[outer].enum_type if outer else fdp.enum_type).add(name=inner)
        for value in (v.strip() for v in values.split(";")):
            if value:
                value_name, number = (part.strip() for part in value.split("="))
                enum.value.add(name=value_name, number=int(number))
    for service in services:
        proto = fdp.service.add(name=service.name)
        for method, request, response in service.methods:
            proto.method.add(name=method, input_type=builder.qualified(request),
                             output_type=builder.qualified(response))
    return fdp


def message_classes(fdp: descriptor_pb2.FileDescriptorProto) -> tuple[Any, dict[str, Any]]:
    """(the file's descriptor, message classes by name without the package) in a pool of their own."""
    pool = descriptor_pool.DescriptorPool()
    classes = message_factory.GetMessages([fdp], pool=pool)
    prefix = fdp.package + "."
    return pool.FindFileByName(fdp.name), {name.removeprefix(prefix): cls for name, cls in classes.items()}
