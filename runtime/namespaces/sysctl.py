"""Sysctls: the one rulebook. RunPodSandbox, the container spec (cri/oci) and the executor all ask it.

A sysctl may be set for a pod only when the kernel keeps it per namespace and that namespace is the pod's own:
- `net.*` lives in the network namespace;
- `kernel.sem`, `kernel.sem_next_id`, `kernel.auto_msgmni`, `kernel.shm*`, `kernel.msg*` and `fs.mqueue.*` in the
  IPC namespace (the kernel's ipc_sysctl.c and mq_sysctl.c);
- `kernel.domainname` in the UTS namespace (a pod has the pod's own unless it uses the host network, as the kubelet
  has it). `kernel.hostname` is UTS too but refused: the pod's hostname field sets it.
Anything else would change the whole node. The CRI has sysctls only at pod level
(`PodSandboxConfig.linux.sysctls`): RunPodSandbox writes them into the pod's namespaces when it pins them, and
every container's spec carries them again (`linux.sysctl`), which the executor writes inside the container: the
same namespaces, so the same values, and an OCI runtime (runc, crun) gets them the standard way. A name is
written dotted (`net.ipv4.ip_forward`) or slashed (`net/ipv4/ip_forward`, where a '.' is part of a component);
the kubelet's rule tells them apart. Standard library only.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from runtime import errors

NET, IPC, UTS = "net", "ipc", "uts"
KINDS = (NET, IPC, UTS)
# the OCI `linux.namespaces[].type` of each kind
OCI_TYPES = {NET: "network", IPC: "ipc", UTS: "uts"}
_LABELS = {NET: "network", IPC: "IPC", UTS: "UTS"}

_IPC_EXACT = frozenset({"kernel.sem", "kernel.sem_next_id", "kernel.auto_msgmni"})
_IPC_PREFIXES = ("kernel.shm", "kernel.msg", "fs.mqueue.")
_UTS_EXACT = frozenset({"kernel.domainname"})
HOSTNAME = "kernel.hostname"


def normalize_sysctl(name: str) -> str:
    """The dotted form: a name whose first separator is '/' is slashed, and '/' and '.' swap (the kubelet's
    rule: `net/ipv4/conf/eth0.100/rp_filter` -> `net.ipv4.conf.eth0/100.rp_filter`)."""
    first = next((c for c in name if c in "./"), ".")
    if first == ".":
        return name
    return name.translate(str.maketrans("/.", "./"))


def sysctl_namespace(name: str) -> str | None:
    """NET, IPC or UTS for a namespaced sysctl (any spelling); None for one that would change the whole node."""
    dotted = normalize_sysctl(name)
    if dotted.startswith("net."):
        return NET
    if dotted in _IPC_EXACT or dotted.startswith(_IPC_PREFIXES):
        return IPC
    if dotted in _UTS_EXACT or dotted == HOSTNAME:
        return UTS
    return None


def sysctl_path(name: str) -> str:
    """The /proc/sys file of a sysctl (any spelling); never outside /proc/sys."""
    parts = [part.replace("/", ".") for part in normalize_sysctl(name).split(".")]
    if any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise errors.InvalidArgument(f"sysctl {name!r}: not a valid sysctl name")
    return "/proc/sys/" + "/".join(parts)


def pod_host_namespaces(*, host_network: bool, host_ipc: bool) -> frozenset[str]:
    """The kinds a pod shares with the node: a host-network pod has the node's UTS namespace too."""
    return frozenset({*((NET, UTS) if host_network else ()), *((IPC,) if host_ipc else ())})


def check_sysctls(sysctls: Mapping[str, str], host_namespaces: Collection[str], who: str = "the pod"
                  ) -> dict[str, str]:
    """The sysctls by their dotted names, sorted; InvalidArgument for any that is not namespaced, that would be
    written into a namespace `who` shares with the node (`host_namespaces`: kinds), or that is `kernel.hostname`."""
    out: dict[str, str] = {}
    for raw, value in sorted(sysctls.items()):
        name = normalize_sysctl(raw)
        kind = sysctl_namespace(name)
        if kind is None:
            raise errors.InvalidArgument(f"sysctl {name!r} is not namespaced: setting it would change the whole "
                                         "node")
        if name == HOSTNAME:
            raise errors.InvalidArgument(f"sysctl {name!r}: set the pod's hostname instead")
        if kind in host_namespaces:
            raise errors.InvalidArgument(f"sysctl {name!r} would change the node: {who} shares the host "
                                         f"{_LABELS[kind]} namespace")
        if "\n" in value or "\0" in value:
            raise errors.InvalidArgument(f"sysctl {name!r}: the value must be one line")
        sysctl_path(name)
        out[name] = value
    return out
