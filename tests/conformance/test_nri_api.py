"""crisp's NRI and ttrpc descriptors (runtime/nri/schema.py, runtime/ttrpc/wire.py) against the releases' own
.proto files, from the module cache of the pinned critest build: the NRI release critest's plugin stub is built with,
and the ttrpc release in that build. Every field, enum value and RPC must match by number, name, type and JSON name,
and every NRI message, filled field by field, must cross from the release's classes to crisp's and back unchanged."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from runtime.nri import api, schema
from runtime.ttrpc import wire
from tests import tools
from tests.conformance import protocompare

# google.rpc.Status as googleapis publishes it (ttrpc's request.proto imports it; the module cache has no copy)
_STATUS_PROTO = """syntax = "proto3";
package google.rpc;
import "google/protobuf/any.proto";
message Status { int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3; }
"""


def _critest_requires(module: str) -> str:
    go_mod = tools.go_module_dir("sigs.k8s.io/cri-tools", tools.versions()["CRI_TOOLS_VERSION"]) / "go.mod"
    match = re.search(rf"^\s*{re.escape(module)} (v\S+)", go_mod.read_text(), re.MULTILINE)
    assert match, f"critest's go.mod does not require {module}"
    return match.group(1)


@pytest.fixture(scope="module")
def nri_release() -> descriptor_pb2.FileDescriptorProto:
    proto = tools.go_module_dir("github.com/containerd/nri", api.NRI_VERSION) / "pkg/api/api.proto"
    return protocompare.compile_proto(proto)


def test_nri_version_is_critests() -> None:
    assert _critest_requires("github.com/containerd/nri") == api.NRI_VERSION


def test_every_nri_field_enum_and_rpc(nri_release: descriptor_pb2.FileDescriptorProto) -> None:
    assert api.FILE_DESCRIPTOR_PROTO.package == nri_release.package
    problems = protocompare.differences(nri_release, api.FILE_DESCRIPTOR_PROTO, json_names=True)
    assert not problems, "\n".join(problems)
    # and nothing of ours that the release lacks
    extra = set(protocompare.messages(api.FILE_DESCRIPTOR_PROTO)) - set(protocompare.messages(nri_release))
    assert not extra


def test_every_nri_message_round_trips(nri_release: descriptor_pb2.FileDescriptorProto) -> None:
    checked = 0
    for name, theirs in protocompare.release_classes(nri_release):
        sent = protocompare.fill(theirs())
        data = sent.SerializeToString(deterministic=True)
        parsed = api.message_class(name.removeprefix(api.PACKAGE + ".")).FromString(data)
        assert parsed.SerializeToString(deterministic=True) == data, f"{name} does not round-trip through crisp"
        assert theirs.FromString(parsed.SerializeToString()) == sent, name
        checked += 1
    assert checked == len(schema.MESSAGES) > 80  # the whole protocol


def test_ttrpc_envelopes(tmp_path: Path) -> None:
    cache = tools.go_module_dir("sigs.k8s.io/cri-tools", tools.versions()["CRI_TOOLS_VERSION"]).parent.parent
    (ttrpc,) = sorted((cache / "github.com/containerd").glob("ttrpc@v1.*"))[-1:]
    (tmp_path / "google/rpc").mkdir(parents=True)
    (tmp_path / "google/rpc/status.proto").write_text(_STATUS_PROTO)
    release = protocompare.compile_proto(ttrpc / "request.proto", tmp_path)
    status = protocompare.compile_proto(tmp_path / "google/rpc/status.proto", root=tmp_path)
    problems = protocompare.differences(release, wire._FILE, renamed_types={".google.rpc.Status": ".ttrpc.Status"},
                                        json_names=True)
    assert not problems, "\n".join(problems)
    any_proto = descriptor_pb2.FileDescriptorProto()
    from google.protobuf import any_pb2

    any_pb2.DESCRIPTOR.CopyToProto(any_proto)
    classes = dict(protocompare.release_classes(release, any_proto, status))
    sent = protocompare.fill(classes["ttrpc.Response"]())
    sent.status.details.add(type_url="type.googleapis.com/x", value=b"v")
    ours = wire.Response.FromString(sent.SerializeToString(deterministic=True))
    assert (ours.status.code, ours.status.message, ours.payload) == (sent.status.code, sent.status.message,
                                                                     sent.payload)
    assert classes["ttrpc.Response"].FromString(ours.SerializeToString()) == sent
