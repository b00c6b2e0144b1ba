"""crisp's CRI descriptors (cri/api.py) against the pinned cri-api release's own api.proto.

The release's proto is compiled with protoc (grpcio-tools) from the module the tool build downloaded; every message,
field, enum value and RPC of it must exist in crisp's descriptor with the same number, name and type, and every
message, filled field by field, must cross the wire from the release's classes to crisp's and back unchanged: what
the kubelet and critest send or read is what crisp parses and answers.
"""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2

from cri import api
from tests import tools
from tests.conformance import protocompare


@pytest.fixture(scope="module")
def release() -> descriptor_pb2.FileDescriptorProto:
    version = tools.versions()["CRI_API_VERSION"]
    proto = tools.go_module_dir("k8s.io/cri-api", version) / "pkg/apis/runtime/v1/api.proto"
    # the published stubs name their file v1/api.proto: the release's classes live in a pool of their own anyway
    return protocompare.compile_proto(proto)


def test_versions_agree() -> None:
    pins = tools.versions()
    assert api.CRI_API_VERSION == pins["CRI_API_VERSION"]
    # the cri-api release is the staging module of the pinned Kubernetes release (v1.X.Y <-> v0.X.Y)
    assert pins["CRI_API_VERSION"] == "v0." + pins["KUBERNETES_VERSION"].removeprefix("v1.")


def test_every_field_enum_and_rpc_of_the_release(release: descriptor_pb2.FileDescriptorProto) -> None:
    assert api.FILE_DESCRIPTOR_PROTO.package == release.package
    problems = protocompare.differences(release, api.FILE_DESCRIPTOR_PROTO)
    assert not problems, "\n".join(problems)


def test_every_message_round_trips(release: descriptor_pb2.FileDescriptorProto) -> None:
    checked = 0
    for name, theirs in protocompare.release_classes(release):
        sent = protocompare.fill(theirs())
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
