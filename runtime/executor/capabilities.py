"""Linux capabilities by name, and applying the five sets of an OCI process (bounding, effective, permitted,
inheritable, ambient) in the order the kernel allows."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from runtime import errors
from runtime.executor.oci import Capabilities
from runtime.linux import syscalls as sc

NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
NUMBERS = {name: i for i, name in enumerate(NAMES)}


def last_cap() -> int:
    """The highest capability this kernel knows."""
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return len(NAMES) - 1


def mask(names: Iterable[str], where: str, top: int) -> int:
    """A bit mask of capability names; names the kernel does not know (newer than it) are skipped, as runc does."""
    bits = 0
    for name in names:
        number = NUMBERS.get(name.upper())
        if number is None:
            raise errors.InvalidArgument(f"process.capabilities.{where}: unknown capability {name!r}")
        if number <= top:
            bits |= 1 << number
    return bits


class CapabilityPlan:
    """The five sets as masks, checked before anything is changed."""

    def __init__(self, caps: Capabilities) -> None:
        self.top = last_cap()
        self.bounding = mask(caps.bounding, "bounding", self.top)
        self.effective = mask(caps.effective, "effective", self.top)
        self.permitted = mask(caps.permitted, "permitted", self.top)
        self.inheritable = mask(caps.inheritable, "inheritable", self.top)
        self.ambient = mask(caps.ambient, "ambient", self.top)

    def drop_bounding(self, sys: sc.Syscalls) -> None:
        """Drop from the bounding set every capability not in it (needs CAP_SETPCAP, so it comes first)."""
        for number in range(self.top + 1):
            if not self.bounding & (1 << number):
                sys.prctl(sc.PR_CAPBSET_DROP, number)

    def set_process_sets(self, sys: sc.Syscalls) -> None:
        """effective/permitted/inheritable, then ambient (which needs its caps permitted and inheritable)."""
        sys.capset(self.effective, self.permitted, self.inheritable)
        sys.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
        for number in range(self.top + 1):
            if self.ambient & (1 << number):
                try:
                    sys.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_RAISE, number)
                except OSError as exc:
                    raise errors.InvalidArgument(
                        f"cannot raise ambient capability {NAMES[number]}: it must also be permitted and "
                        f"inheritable ({exc.strerror})") from None
