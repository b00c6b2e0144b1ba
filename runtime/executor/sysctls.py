"""Namespaced sysctls: which namespace a sysctl belongs to, and refusing any that would reach the host.

A sysctl is written inside the container (through its own /proc) only when the namespace it belongs to is the
container's own: `net.*` needs a network namespace that is not the host's, the IPC ones an IPC namespace that is
not the host's, kernel.hostname/domainname a private UTS namespace. Everything else is not namespaced and
would change the whole machine: refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from runtime import errors
from runtime.executor import procfs
from runtime.executor.oci import Linux
from runtime.linux import syscalls as sc
from runtime.namespaces.sysctl import sysctl_path

_IPC_EXACT = {"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall", "kernel.shmmax",
              "kernel.shmmni", "kernel.shm_rmid_forced"}
_UTS_EXACT = {"kernel.hostname", "kernel.domainname"}


def namespace_of(name: str) -> str | None:
    """The OCI namespace type a sysctl lives in ("network", "ipc", "uts"), None when it is not namespaced."""
    if name.startswith("net."):
        return "network"
    if name in _IPC_EXACT or name.startswith("fs.mqueue.") or name.startswith(("kernel.shm", "kernel.msg")):
        return "ipc"
    if name in _UTS_EXACT:
        return "uts"
    return None


def validate_pod_sysctls(sysctls: Mapping[str, str], host_network: bool, host_ipc: bool) -> None:
    """For the CRI layer: a pod's sysctls must each live in a namespace the pod does not share with the host."""
    for name in sorted(sysctls):
        ns = namespace_of(name)
        if ns is None:
            raise errors.InvalidArgument(f"sysctl {name!r} is not namespaced: it would change the whole node")
        if ns == "network" and host_network:
            raise errors.InvalidArgument(f"sysctl {name!r} cannot be set on a pod that uses the host network")
        if ns == "ipc" and host_ipc:
            raise errors.InvalidArgument(f"sysctl {name!r} cannot be set on a pod that uses the host IPC namespace")
        if ns == "uts":
            raise errors.InvalidArgument(f"sysctl {name!r}: set the pod's hostname instead")


_PROC_NS = {"network": "net", "ipc": "ipc", "uts": "uts"}


def shares_host(linux: Linux, ns_type: str) -> bool:
    """Whether the container would share this namespace with the executor (the host): not listed, or a path to the
    very namespace the executor is in."""
    ns = linux.namespace(ns_type)
    if ns is None:
        return True
    if not ns.path:
        return False
    try:
        target = os.stat(ns.path)
        own = os.stat(f"/proc/self/ns/{_PROC_NS.get(ns_type, ns_type)}")
    except OSError as exc:
        raise errors.InvalidArgument(f"{ns_type} namespace {ns.path}: {exc.strerror}") from None
    return (target.st_dev, target.st_ino) == (own.st_dev, own.st_ino)


def check_sysctls(linux: Linux) -> None:
    """Refuse (before anything is created) every sysctl that would be written into a namespace of the host."""
    for name in sorted(linux.sysctl):
        ns = namespace_of(name)
        if ns is None:
            raise errors.InvalidArgument(f"sysctl {name!r} is not namespaced: refusing to change the host")
        if shares_host(linux, ns):
            raise errors.InvalidArgument(
                f"sysctl {name!r} needs a {ns} namespace of its own: the container shares the host's")


def apply_sysctls(sys: sc.Syscalls, sysctls: Mapping[str, str], proc_fd: int) -> None:
    """Write them through the init's private procfs (of the container's namespaces); called after pivot_root.
    Never through the container's /proc: a volume mounted inside it would redirect the writes."""
    for name, value in sysctls.items():
        try:
            fd = procfs.open_below(sys, proc_fd, sysctl_path(name).removeprefix("/proc/"),
                                   os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise errors.InvalidArgument(f"sysctl {name}={value!r}: {exc.strerror}") from None
