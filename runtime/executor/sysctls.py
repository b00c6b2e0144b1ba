"""The executor's side of sysctls: which namespaces the container shares with the host, and writing the values.

What may be set at all is `runtime.namespaces.sysctl`'s rulebook (the one RunPodSandbox and the spec builder
use); here a namespace counts as the host's when the spec does not list it, or lists a path to the very namespace
the executor runs in. Values are written inside the container, through its own /proc, after pivot_root.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from runtime import errors
from runtime.executor import procfs
from runtime.executor.oci import Linux
from runtime.linux import syscalls as sc
from runtime.namespaces import sysctl as rules

_PROC_NS = {"network": "net", "ipc": "ipc", "uts": "uts"}


def shares_host(linux: Linux, ns_type: str) -> bool:
    """Whether the container would share this namespace (an OCI type) with the executor (the host): not listed,
    or a path to the very namespace the executor is in."""
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
    """Refuse (before anything is created) every sysctl the rulebook refuses for this container."""
    if not linux.sysctl:
        return
    host = {kind for kind in rules.KINDS if shares_host(linux, rules.OCI_TYPES[kind])}
    rules.check_sysctls(linux.sysctl, host, who="the container")


def apply_sysctls(sys: sc.Syscalls, sysctls: Mapping[str, str], proc_fd: int) -> None:
    """Write them through the init's private procfs (of the container's namespaces); called after pivot_root.
    Never through the container's /proc: a volume mounted inside it would redirect the writes."""
    for name, value in sysctls.items():
        try:
            fd = procfs.open_below(sys, proc_fd, rules.sysctl_path(name).removeprefix("/proc/"),
                                   os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise errors.InvalidArgument(f"sysctl {name}={value!r}: {exc.strerror}") from None
