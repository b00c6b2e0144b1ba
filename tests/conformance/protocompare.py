"""Comparing crisp's protobuf descriptors with a protocol release's own .proto: compile it with protoc
(grpcio-tools), list what differs, and fill every field of a message to prove it crosses the wire unchanged."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor

FDP = descriptor_pb2.FieldDescriptorProto


def compile_proto(proto: Path, *include: Path, root: Path | None = None) -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto protoc makes of `proto` (its imports from `include` dirs or protobuf's own), named
    by its path below `root` (default: its own dir)."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.pb"
        root = root or proto.parent
        args = ["protoc", f"-I{root}", *(f"-I{d}" for d in include), f"-I{well_known}",
                f"--descriptor_set_out={out}", str(proto.relative_to(root))]
        assert protoc.main(args) == 0, f"protoc could not compile {proto}"
        (file,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return file


def messages(fdp: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.DescriptorProto]:
    found: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, items: Any) -> None:
        for m in items:
            found[prefix + m.name] = m
            walk(prefix + m.name + ".", m.nested_type)

    walk("", fdp.message_type)
    return found


def enums(fdp: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.EnumDescriptorProto]:
    found = {e.name: e for e in fdp.enum_type}
    for name, m in messages(fdp).items():
        for e in m.enum_type:
            found[f"{name}.{e.name}"] = e
    return found


def differences(release: descriptor_pb2.FileDescriptorProto, ours: descriptor_pb2.FileDescriptorProto,
                renamed_types: Mapping[str, str] | None = None, json_names: bool = False) -> list[str]:
    """Every message, field, enum value and RPC of the release that ours lacks or has otherwise (number, name,
    type, label, type name; `renamed_types` maps a release type name to ours where they differ on purpose)."""
    renamed_types = renamed_types or {}
    mine = messages(ours)
    problems = []
    for name, message in messages(release).items():
        if name not in mine:
            problems.append(f"message {name} missing")
            continue
        have = {f.number: f for f in mine[name].field}
        for f in message.field:
            g = have.get(f.number)
            want = (f.name, f.type, f.label, renamed_types.get(f.type_name, f.type_name))
            if g is None:
                problems.append(f"{name}.{f.name} (= {f.number}) missing")
            elif (g.name, g.type, g.label, g.type_name) != want:
                problems.append(f"{name}.{f.name} (= {f.number}) differs: ours {g.name} {FDP.Type.Name(g.type)} "
                                f"{g.type_name}, release {f.name} {FDP.Type.Name(f.type)} {f.type_name}")
            elif json_names and g.json_name != f.json_name:
                problems.append(f"{name}.{f.name}: json name {g.json_name}, release {f.json_name}")
        if message.options.map_entry != mine[name].options.map_entry:
            problems.append(f"{name}: map entry flag differs")
    my_enums = enums(ours)
    for name, enum in enums(release).items():
        values = {v.number: v.name for v in my_enums[name].value} if name in my_enums else {}
        for v in enum.value:
            if values.get(v.number) != v.name:
                problems.append(f"enum {name} value {v.name} (= {v.number}) missing or renamed")
    services = {s.name: {m.name: m for m in s.method} for s in ours.service}
    for service in release.service:
        for m in service.method:
            g = services.get(service.name, {}).get(m.name)
            if g is None:
                problems.append(f"rpc {service.name}.{m.name} missing")
            elif (g.input_type, g.output_type, g.server_streaming, g.client_streaming) != (
                    m.input_type, m.output_type, m.server_streaming, m.client_streaming):
                problems.append(f"rpc {service.name}.{m.name} differs")
    return problems


_SAMPLES = {
    FieldDescriptor.TYPE_STRING: lambda n: f"s{n}",
    FieldDescriptor.TYPE_BYTES: lambda n: f"b{n}".encode(),
    FieldDescriptor.TYPE_BOOL: lambda n: True,
    FieldDescriptor.TYPE_INT64: lambda n: -(10**12) - n,
    FieldDescriptor.TYPE_UINT64: lambda n: 2**40 + n,
    FieldDescriptor.TYPE_INT32: lambda n: -n - 1,
    FieldDescriptor.TYPE_UINT32: lambda n: n + 1,
    FieldDescriptor.TYPE_DOUBLE: lambda n: n + 0.5,
    FieldDescriptor.TYPE_FLOAT: lambda n: n + 0.5,
}


def fill(message: Any, depth: int = 0) -> Any:
    """Every field of the message set to a value that is not its default (messages to depth 4)."""
    for n, field in enumerate(message.DESCRIPTOR.fields, 1):
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            if value.message_type is None:
                getattr(message, field.name)[_SAMPLES[key.type](n)] = _SAMPLES[value.type](n)
            elif depth < 4:
                fill(getattr(message, field.name)[_SAMPLES[key.type](n)], depth + 1)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 4:
                continue
            target = getattr(message, field.name).add() if _repeated(field) else getattr(message, field.name)
            fill(target, depth + 1)
            if not _repeated(field) and not target.ListFields():
                target.SetInParent()
        elif field.type == FieldDescriptor.TYPE_ENUM:
            values = [v.number for v in field.enum_type.values if v.number != 0] or [0]
            value = values[n % len(values)]
            getattr(message, field.name).append(value) if _repeated(field) else setattr(message, field.name, value)
        else:
            sample = _SAMPLES[field.type](n)
            getattr(message, field.name).append(sample) if _repeated(field) else setattr(message, field.name, sample)
    return message


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated) if hasattr(field, "is_repeated") else field.label == FieldDescriptor.LABEL_REPEATED


def release_classes(release: descriptor_pb2.FileDescriptorProto, *deps: descriptor_pb2.FileDescriptorProto
                    ) -> Iterator[tuple[str, Any]]:
    """The release's message classes (not map entries), by full name, built in a pool of their own."""
    pool = descriptor_pool.DescriptorPool()
    classes = message_factory.GetMessages([*deps, release], pool=pool)
    for name, cls in sorted(classes.items()):
        if not cls.DESCRIPTOR.GetOptions().map_entry and cls.DESCRIPTOR.file.name == release.name:
            yield name, cls
