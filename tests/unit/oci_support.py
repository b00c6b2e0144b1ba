"""Building blocks for the spec builder's tests: CRI messages, a pod context, node facts."""

from __future__ import annotations

import dataclasses
from typing import Any

from cri import api as pb
from cri.oci.capabilities import CAPABILITY_BITS
from cri.oci.host import HostPaths, NodeFacts
from cri.oci.mounts import PodFiles
from cri.oci.spec import PodContext, SpecInputs, SpecOptions, build_container_spec
from cri.oci.user import StaticFiles

ALL_CAPS = tuple(CAPABILITY_BITS[b] for b in sorted(CAPABILITY_BITS))
# like this host: everything but CAP_SYS_RESOURCE
NODE = NodeFacts(
    capabilities=tuple(c for c in ALL_CAPS if c != "CAP_SYS_RESOURCE"),
    oom_score_adj=0,
    nofile=(20000, 40000),
    hostname="node1",
    arch="x86_64",
)
POD = PodContext(
    sandbox_id="sb1",
    net_ns_path="/run/crisp/sandboxes/sb1/ns/net",
    ipc_ns_path="/run/crisp/sandboxes/sb1/ns/ipc",
    uts_ns_path="/run/crisp/sandboxes/sb1/ns/uts",
    pid_ns_path="/proc/4242/ns/pid",
    files=PodFiles(
        hostname="/run/crisp/sandboxes/sb1/hostname",
        hosts="/run/crisp/sandboxes/sb1/hosts",
        resolv_conf="/run/crisp/sandboxes/sb1/resolv.conf",
        shm="/run/crisp/sandboxes/sb1/shm",
    ),
)
PASSWD = (
    b"root:x:0:0:root:/root:/bin/sh\n"
    b"# a comment\n"
    b"daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
    b"alice:x:1000:1000:Alice:/home/alice:/bin/sh\n"
    b"bob:x:1001:100::/home/bob:/bin/sh\n"
    b"broken line\n"
)
GROUP = (
    b"root:x:0:\n"
    b"users:x:100:\n"
    b"alice:x:1000:alice\n"
    b"staff:x:50:alice,bob\n"
    b"audio:x:29:bob\n"
    b"wheel:x:10:root\n"
)
IMAGE_FILES = StaticFiles({"/etc/passwd": PASSWD, "/etc/group": GROUP})


def container_config(**fields: Any) -> pb.ContainerConfig:
    """A ContainerConfig with a name and a command unless given."""
    fields.setdefault("metadata", pb.ContainerMetadata(name="app", attempt=0))
    fields.setdefault("image", pb.ImageSpec(image="docker.io/library/busybox:latest"))
    if "command" not in fields and "args" not in fields:
        fields["command"] = ["/bin/app"]
    return pb.ContainerConfig(**fields)


def sandbox_config(**fields: Any) -> pb.PodSandboxConfig:
    fields.setdefault("metadata", pb.PodSandboxMetadata(name="pod", namespace="default", uid="u1", attempt=0))
    fields.setdefault("hostname", "pod-host")
    return pb.PodSandboxConfig(**fields)


def inputs(
    config: pb.ContainerConfig | None = None,
    sandbox: pb.PodSandboxConfig | None = None,
    *,
    image: dict[str, Any] | None = None,
    **fields: Any,
) -> SpecInputs:
    values: dict[str, Any] = {
        "container_id": "c1",
        "config": config if config is not None else container_config(),
        "sandbox_config": sandbox if sandbox is not None else sandbox_config(),
        "image_config": image if image is not None else {},
        "pod": POD,
        "node": NODE,
        "rootfs_path": "/run/crisp/containers/c1/rootfs",
        "cgroup_path": "/kubepods/burstable/podu1/crisp-c1",
        "image_name": "docker.io/library/busybox:latest",
        "image_files": IMAGE_FILES,
        "host": HostPaths(),
        "options": SpecOptions(),
    }
    values.update(fields)
    return SpecInputs(**values)


def build(config: pb.ContainerConfig | None = None, sandbox: pb.PodSandboxConfig | None = None,
          **kw: Any) -> dict[str, Any]:
    return build_container_spec(inputs(config, sandbox, **kw))


def replace(obj: Any, **changes: Any) -> Any:
    return dataclasses.replace(obj, **changes)
