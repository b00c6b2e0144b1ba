"""crisp's CRI descriptors (cri/api.py) against the pinned cri-api release's own api.proto.

The release's proto is compiled with protoc (grpcio-tools) from the module the tool build downloaded; every message,
field, enum value and RPC of it must exist in crisp's descriptor with the same number, name and type, and every
message, filled field by field, must cross the wire from the release's classes to crisp's and back unchanged: what
the kubelet and critest send or read is what crisp parses and answers.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor

from cri import api
from tests import tools

FDP = descriptor_pb2.FieldDescriptorProto


@pytest.fixture(scope="module")
def release() -> descriptor_pb2.FileDescriptorProto:
    from grpc_tools import protoc

    version = tools.versions()["CRI_API_VERSION"]
    proto = tools.go_module_dir("k8s.io/cri-api", version) / "pkg/apis/runtime/v1/api.proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "api.pb"
        rc = protoc.main(["protoc", f"-I{proto.parent}", f"--descriptor_set_out={out}", proto.name])
        assert rc == 0, f"protoc could not compile {proto}"
        (file,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    # the published stubs name their file v1/api.proto: the release's classes live in a pool of their own anyway
    return file


def _messages(fdp: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.DescriptorProto]:
    found: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, messages: Any) -> None:
        for m in messages:
            found[prefix + m.name] = m
            walk(prefix + m.name + ".", m.nested_type)

    walk("", fdp.message_type)
    return found


def _enums(fdp: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.EnumDescriptorProto]:
    found = {e.name: e for e in fdp.enum_type}
    for name, m in _messages(fdp).items():
        for e in m.enum_type:
            found[f"{name}.{e.name}"] = e
    return found


def test_versions_agree() -> None:
    pins = tools.versions()
    assert api.CRI_API_VERSION == pins["CRI_API_VERSION"]
    # the cri-api release is the staging module of the pinned Kubernetes release (v1.X.Y <-> v0.X.Y)
    assert pins["CRI_API_VERSION"] == "v0." + pins["KUBERNETES_VERSION"].removeprefix("v1.")


def test_every_field_enum_and_rpc_of_the_release(release: descriptor_pb2.FileDescriptorProto) -> None:
    ours = api.FILE_DESCRIPTOR_PROTO
    assert ours.package == release.package
    mine = _messages(ours)
    problems = []
    for name, message in _messages(release).items():
        if name not in mine:
            problems.append(f"message {name} missing")
            continue
        have = {f.number: f for f in mine[name].field}
        for f in message.field:
            g = have.get(f.number)
            if g is None:
                problems.append(f"{name}.{f.name} (= {f.number}) missing")
            elif (g.name, g.type, g.label, g.type_name) != (f.name, f.type, f.label, f.type_name):
                problems.append(f"{name}.{f.name} (= {f.number}) differs: ours {g.name} {FDP.Type.Name(g.type)} "
                                f"{g.type_name}, release {f.name} {FDP.Type.Name(f.type)} {f.type_name}")
        if message.options.map_entry != mine[name].options.map_entry:
            problems.append(f"{name}: map entry flag differs")
    my_enums = _enums(ours)
    for name, enum in _enums(release).items():
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
    assert not problems, "\n".join(problems)


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


def _fill(message: Any, depth: int = 0) -> Any:
    """Every field of the message set to a value that is not its default (messages to depth 4)."""
    for n, field in enumerate(message.DESCRIPTOR.fields, 1):
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            if value.message_type is None:
                getattr(message, field.name)[_SAMPLES[key.type](n)] = _SAMPLES[value.type](n)
            elif depth < 4:
                _fill(getattr(message, field.name)[_SAMPLES[key.type](n)], depth + 1)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 4:
                continue
            target = getattr(message, field.name).add() if _repeated(field) else getattr(message, field.name)
            _fill(target, depth + 1)
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


def _release_classes(release: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[str, Any]]:
    pool = descriptor_pool.DescriptorPool()
    classes = message_factory.GetMessages([release], pool=pool)
    for name, cls in sorted(classes.items()):
        if not cls.DESCRIPTOR.GetOptions().map_entry:
            yield name, cls


def test_every_message_round_trips(release: descriptor_pb2.FileDescriptorProto) -> None:
    checked = 0
    for name, theirs in _release_classes(release):
        sent = _fill(theirs())
        wire = sent.SerializeToString(deterministic=True)
        parsed = api.message_class(name).FromString(wire)
        assert parsed.SerializeToString(deterministic=True) == wire, f"{name} does not round-trip through crisp"
        assert theirs.FromString(parsed.SerializeToString()) == sent, name
        checked += 1
    assert checked > 150  # the whole protocol, not a handful


def test_fields_the_old_stubs_dropped() -> None:
    """The fields critest and the kubelet use that the published stubs lacked, by name."""
    spec = api.ImageSpec(image="busybox", image_ref="sha256:" + "a" * 64)
    assert api.ImageSpec.FromString(spec.SerializeToString()).image_ref == spec.image_ref
    mount = api.Mount(container_path="/x", mount_options=["ro", "nosuid"])
    assert list(api.Mount.FromString(mount.SerializeToString()).mount_options) == ["ro", "nosuid"]
    features = api.RuntimeFeatures(user_namespaces_host_network=True, mount_options=True)
    assert api.RuntimeFeatures.FromString(features.SerializeToString()) == features
    assert {m.name for m in api.DESCRIPTOR.services_by_name["RuntimeService"].methods} >= {
        "StreamPodSandboxes", "StreamContainers", "StreamContainerStats", "StreamPodSandboxStats",
        "StreamPodSandboxMetrics", "CheckpointPod", "RestorePod"}
