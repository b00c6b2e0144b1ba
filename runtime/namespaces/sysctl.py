"""Pod sysctls: which namespace each one belongs to, and where it lives under /proc/sys.

Only namespaced sysctls may be set for a pod: writing any other one would change the host. A `net.*` sysctl needs
the pod's own network namespace, an IPC sysctl its own IPC namespace, `kernel.hostname`/`kernel.domainname` its
own UTS namespace.
"""

from __future__ import annotations

from runtime import errors

_IPC_EXACT = {"kernel.sem"}
_IPC_PREFIXES = ("kernel.shm", "kernel.msg", "fs.mqueue.")
_UTS_EXACT = {"kernel.hostname", "kernel.domainname"}


def normalize_sysctl(key: str) -> str:
    """The dotted form of a sysctl name; a name written with '/' uses '/' as its separator ('.' is literal then)."""
    if "/" in key:
        return ".".join(part.replace(".", "/") for part in key.split("/"))
    return key


def sysctl_namespace(key: str) -> str | None:
    """'net', 'ipc' or 'uts' for a namespaced sysctl; None for one that would change the whole host."""
    name = normalize_sysctl(key)
    if name.startswith("net."):
        return "net"
    if name in _IPC_EXACT or name.startswith(_IPC_PREFIXES):
        return "ipc"
    if name in _UTS_EXACT:
        return "uts"
    return None


def sysctl_path(key: str) -> str:
    """The /proc/sys path of a sysctl (dotted or slashed name); never outside /proc/sys."""
    name = normalize_sysctl(key)
    parts = [part.replace("/", ".") for part in name.split(".")]
    if not name or any(p in ("", ".", "..") for p in parts):
        raise errors.InvalidArgument(f"sysctl {key!r}: not a valid sysctl name")
    return "/proc/sys/" + "/".join(parts)


def check_pod_sysctls(sysctls: dict[str, str], *, host_network: bool, host_ipc: bool) -> dict[str, str]:
    """Validate a pod's sysctls; returns them by namespace kind. Anything that would reach the host is refused."""
    for key, value in sysctls.items():
        kind = sysctl_namespace(key)
        if kind is None:
            raise errors.InvalidArgument(f"sysctl {key!r} is not namespaced: setting it would change the host")
        if kind == "net" and host_network:
            raise errors.InvalidArgument(f"sysctl {key!r} cannot be set for a pod in the host network namespace")
        if kind == "ipc" and host_ipc:
            raise errors.InvalidArgument(f"sysctl {key!r} cannot be set for a pod in the host IPC namespace")
        if kind == "uts" and host_network:
            raise errors.InvalidArgument(f"sysctl {key!r} cannot be set for a pod in the host UTS namespace")
        if "\n" in value or "\0" in value:
            raise errors.InvalidArgument(f"sysctl {key!r}: the value must be one line")
        sysctl_path(key)
    return dict(sysctls)
