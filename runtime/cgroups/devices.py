"""Device access rules for the cgroup v2 device filter (the eBPF program is built in `ebpf.py`).

Semantics, decided per access bit: for each of mknod/read/write that an access asks for, the LAST rule that
covers the device (type, major, minor) and that bit decides; no such rule means denied. An access is allowed when
every bit it asks for is allowed. That is what cgroup v1's devices controller does for ordered allow/deny lists
(runc emulates v1 to get there), and it gives a sensible answer for "allow c *:* rwm, then deny c 1:3 w" too.

Every container gets runc's default rules appended after its own (`with_default_rules`), so the basics always
work: mknod of any char or block device, and /dev/null, zero, full, random, urandom, tty, ptmx and pts (136:*).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtime import errors

# the kernel's bpf_cgroup_dev_ctx encodings (include/uapi/linux/bpf.h)
ACC_MKNOD = 1
ACC_READ = 2
ACC_WRITE = 4
DEV_BLOCK = 1
DEV_CHAR = 2

_ACCESS_BITS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}
# the largest major and minor Linux device numbers (12 and 20 bits)
_MAX_MAJOR = (1 << 12) - 1
_MAX_MINOR = (1 << 20) - 1


@dataclass(frozen=True)
class DeviceRule:
    """One rule: `type` is "a" (char and block), "c" or "b"; None as major/minor is the wildcard `*`."""

    allow: bool
    type: str = "a"
    major: int | None = None
    minor: int | None = None
    access: str = "rwm"

    def __post_init__(self) -> None:
        if self.type not in ("a", "c", "b"):
            raise errors.InvalidArgument(f"device rule {self}: type must be a, c or b")
        if not self.access or set(self.access) - set("rwm"):
            raise errors.InvalidArgument(f"device rule {self}: access must be a non-empty subset of 'rwm'")
        for name, value, top in (("major", self.major, _MAX_MAJOR), ("minor", self.minor, _MAX_MINOR)):
            if value is not None and not 0 <= value <= top:
                raise errors.InvalidArgument(f"device rule {self}: {name} {value} out of range 0..{top}")

    @property
    def access_bits(self) -> int:
        bits = 0
        for ch in self.access:
            bits |= _ACCESS_BITS[ch]
        return bits

    @property
    def is_wildcard_all(self) -> bool:
        """`a *:* rwm`: decides every access to every device (rules before it no longer matter)."""
        return self.type == "a" and self.major is None and self.minor is None and set(self.access) == set("rwm")

    def __str__(self) -> str:
        major = "*" if self.major is None else str(self.major)
        minor = "*" if self.minor is None else str(self.minor)
        return f"{'allow' if self.allow else 'deny'} {self.type} {major}:{minor} {self.access}"


def _char(major: int | None, minor: int | None, access: str = "rwm") -> DeviceRule:
    return DeviceRule(allow=True, type="c", major=major, minor=minor, access=access)


# runc's default allowed devices (libcontainer/specconv AllowedDevices), appended after a container's own rules
DEFAULT_RULES: tuple[DeviceRule, ...] = (
    _char(None, None, "m"),  # mknod of any char device
    DeviceRule(allow=True, type="b", access="m"),  # mknod of any block device
    _char(1, 3),  # /dev/null
    _char(1, 8),  # /dev/random
    _char(1, 7),  # /dev/full
    _char(5, 0),  # /dev/tty
    _char(1, 5),  # /dev/zero
    _char(1, 9),  # /dev/urandom
    _char(136, None),  # /dev/pts/*
    _char(5, 2),  # /dev/ptmx
)


def _number(rule: Mapping[str, Any], key: str) -> int | None:
    value = rule.get(key)
    if value is None or value == -1:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise errors.InvalidArgument(f"device rule {dict(rule)}: {key} must be an integer")
    return value


def rules_from_oci(devices: Iterable[Mapping[str, Any]]) -> list[DeviceRule]:
    """The OCI `linux.resources.devices` list as rules (type defaults to "a", access to "rwm", -1/absent is `*`)."""
    rules = []
    for rule in devices:
        if not isinstance(rule, Mapping) or not isinstance(rule.get("allow"), bool):
            raise errors.InvalidArgument(f"device rule {rule!r}: needs a boolean 'allow'")
        rules.append(
            DeviceRule(
                allow=rule["allow"],
                type=rule.get("type") or "a",
                major=_number(rule, "major"),
                minor=_number(rule, "minor"),
                access=rule.get("access") or "rwm",
            )
        )
    return rules


def with_default_rules(rules: Sequence[DeviceRule]) -> list[DeviceRule]:
    """A container's rules followed by runc's defaults (which therefore always win)."""
    return [*rules, *DEFAULT_RULES]


def effective_rules(rules: Sequence[DeviceRule]) -> tuple[bool, list[DeviceRule]]:
    """(allow by default, the rules that still matter): everything before the last `a *:* rwm` is dropped, and
    that rule becomes the default. Without one, the default is deny."""
    default_allow = False
    start = 0
    for i, rule in enumerate(rules):
        if rule.is_wildcard_all:
            default_allow = rule.allow
            start = i + 1
    return default_allow, list(rules[start:])


def decide(rules: Sequence[DeviceRule], dev_type: str, major: int, minor: int, access: str) -> bool:
    """The rules' verdict for one access, in Python: the reference the eBPF program is tested against."""
    default_allow, effective = effective_rules(rules)
    for ch in access:
        bit = _ACCESS_BITS[ch]
        verdict = default_allow
        for rule in reversed(effective):
            if rule.access_bits & bit and _covers(rule, dev_type, major, minor):
                verdict = rule.allow
                break
        if not verdict:
            return False
    return True


def _covers(rule: DeviceRule, dev_type: str, major: int, minor: int) -> bool:
    return (
        (rule.type == "a" or rule.type == dev_type)
        and (rule.major is None or rule.major == major)
        and (rule.minor is None or rule.minor == minor)
    )
