"""Linux capabilities for a container's process: containerd's default set, CRI add/drop, ALL, privileged.

CRI names come without the `CAP_` prefix (`NET_ADMIN`), in any case; the OCI spec wants `CAP_NET_ADMIN`.
A container can never get a capability crispd itself lacks (the kernel would refuse it when the executor sets
it), so "ALL" and privileged mean "every capability crispd has", and an explicit request for one it lacks is an
error rather than a silent no.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from runtime.errors import FailedPrecondition, InvalidArgument

# Bit number -> name, from linux/capability.h; the number is the bit in /proc/<pid>/status CapEff.
CAPABILITY_BITS: dict[int, str] = {
    0: "CAP_CHOWN",
    1: "CAP_DAC_OVERRIDE",
    2: "CAP_DAC_READ_SEARCH",
    3: "CAP_FOWNER",
    4: "CAP_FSETID",
    5: "CAP_KILL",
    6: "CAP_SETGID",
    7: "CAP_SETUID",
    8: "CAP_SETPCAP",
    9: "CAP_LINUX_IMMUTABLE",
    10: "CAP_NET_BIND_SERVICE",
    11: "CAP_NET_BROADCAST",
    12: "CAP_NET_ADMIN",
    13: "CAP_NET_RAW",
    14: "CAP_IPC_LOCK",
    15: "CAP_IPC_OWNER",
    16: "CAP_SYS_MODULE",
    17: "CAP_SYS_RAWIO",
    18: "CAP_SYS_CHROOT",
    19: "CAP_SYS_PTRACE",
    20: "CAP_SYS_PACCT",
    21: "CAP_SYS_ADMIN",
    22: "CAP_SYS_BOOT",
    23: "CAP_SYS_NICE",
    24: "CAP_SYS_RESOURCE",
    25: "CAP_SYS_TIME",
    26: "CAP_SYS_TTY_CONFIG",
    27: "CAP_MKNOD",
    28: "CAP_LEASE",
    29: "CAP_AUDIT_WRITE",
    30: "CAP_AUDIT_CONTROL",
    31: "CAP_SETFCAP",
    32: "CAP_MAC_OVERRIDE",
    33: "CAP_MAC_ADMIN",
    34: "CAP_SYSLOG",
    35: "CAP_WAKE_ALARM",
    36: "CAP_BLOCK_SUSPEND",
    37: "CAP_AUDIT_READ",
    38: "CAP_PERFMON",
    39: "CAP_BPF",
    40: "CAP_CHECKPOINT_RESTORE",
}
KNOWN_CAPABILITIES: frozenset[str] = frozenset(CAPABILITY_BITS.values())

# What a container gets when it asks for nothing (containerd's and Docker's default set), in that order.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)


def capabilities_from_mask(mask: int) -> tuple[str, ...]:
    """The names of the capabilities set in a CapEff-style bit mask, in bit order (unknown bits skipped)."""
    return tuple(name for bit, name in sorted(CAPABILITY_BITS.items()) if mask >> bit & 1)


def normalize_capability(name: str) -> str:
    """`net_admin`, `NET_ADMIN`, `CAP_NET_ADMIN` -> `CAP_NET_ADMIN`; an unknown name is INVALID_ARGUMENT."""
    upper = name.strip().upper()
    full = upper if upper.startswith("CAP_") else "CAP_" + upper
    if full not in KNOWN_CAPABILITIES:
        raise InvalidArgument(f"unknown capability {name!r}")
    return full


@dataclass(frozen=True)
class CapabilityRequest:
    """The CRI `Capability` message, as plain tuples (an unset message is the empty request)."""

    add: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    add_ambient: tuple[str, ...] = ()


def _is_all(name: str) -> bool:
    return name.strip().upper() in ("ALL", "CAP_ALL")


def _ordered(names: Iterable[str]) -> list[str]:
    """Dedupe, keeping the first occurrence's position."""
    return list(dict.fromkeys(names))


def container_capabilities(
    request: CapabilityRequest, *, privileged: bool, available: Sequence[str]
) -> dict[str, list[str]]:
    """The OCI `process.capabilities` object for a container.

    `available` is what crispd holds (its effective set). Order as containerd applies it: the default set, then
    "ALL" in add (every available one), then "ALL" in drop (none), then the named adds, then the named drops;
    privileged replaces the result with every available capability. Bounding, effective and permitted are the
    same set; inheritable and ambient hold only the ambient request (an ambient capability needs to be in
    permitted and inheritable too, so it is added to every set).
    """
    have = set(available)
    adds = [c for c in request.add if not _is_all(c)]
    drops = [c for c in request.drop if not _is_all(c)]
    add_caps = [normalize_capability(c) for c in adds]
    drop_caps = {normalize_capability(c) for c in drops}
    ambient = _ordered(normalize_capability(c) for c in request.add_ambient if not _is_all(c))
    if any(_is_all(c) for c in request.add_ambient):
        raise InvalidArgument('"ALL" is not allowed in add_ambient_capabilities')

    caps: list[str] = [c for c in DEFAULT_CAPABILITIES if c in have]
    if any(_is_all(c) for c in request.add):
        caps = [c for c in available if c in KNOWN_CAPABILITIES]
    if any(_is_all(c) for c in request.drop):
        caps = []
    for cap in add_caps:
        if cap not in have:
            raise FailedPrecondition(f"capability {cap} was requested but crispd does not hold it")
        caps.append(cap)
    caps = [c for c in _ordered(caps) if c not in drop_caps]
    if privileged:
        caps = [c for c in available if c in KNOWN_CAPABILITIES]
    for cap in ambient:
        if cap not in have:
            raise FailedPrecondition(f"ambient capability {cap} was requested but crispd does not hold it")
        if cap in drop_caps and not privileged:
            raise InvalidArgument(f"capability {cap} is both dropped and requested as ambient")
    caps = _ordered([*caps, *ambient])
    return {
        "bounding": list(caps),
        "effective": list(caps),
        "permitted": list(caps),
        "inheritable": list(ambient),
        "ambient": list(ambient),
    }
