"""Statistics read from a cgroup's interface files.

Every value is None when the file (or the key in it) does not exist on this host, never a made-up 0: the CRI
stats and the metrics layer leave such a value out. The raw key/value maps are kept (`memory.stat` has ~50 keys,
and new kernels add more) next to the fields the kubelet and cAdvisor use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CpuStats:
    usage_usec: int | None = None
    user_usec: int | None = None
    system_usec: int | None = None
    # these three exist only when the cpu controller is enabled
    nr_periods: int | None = None
    nr_throttled: int | None = None
    throttled_usec: int | None = None
    raw: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_keys(cls, keys: Mapping[str, int]) -> CpuStats:
        return cls(
            usage_usec=keys.get("usage_usec"),
            user_usec=keys.get("user_usec"),
            system_usec=keys.get("system_usec"),
            nr_periods=keys.get("nr_periods"),
            nr_throttled=keys.get("nr_throttled"),
            throttled_usec=keys.get("throttled_usec"),
            raw=dict(keys),
        )


@dataclass(frozen=True)
class MemoryStats:
    current: int | None = None  # memory.current
    peak: int | None = None  # memory.peak (kernel >= 5.19)
    limit: int | None = None  # memory.max; None when "max" (no limit) or missing
    swap_current: int | None = None  # memory.swap.current
    stat: Mapping[str, int] = field(default_factory=dict)  # memory.stat
    events: Mapping[str, int] = field(default_factory=dict)  # memory.events

    def _stat(self, key: str) -> int | None:
        return self.stat.get(key)

    @property
    def anon(self) -> int | None:
        return self._stat("anon")

    @property
    def file(self) -> int | None:
        return self._stat("file")

    @property
    def inactive_file(self) -> int | None:
        return self._stat("inactive_file")

    @property
    def active_file(self) -> int | None:
        return self._stat("active_file")

    @property
    def pgfault(self) -> int | None:
        return self._stat("pgfault")

    @property
    def pgmajfault(self) -> int | None:
        return self._stat("pgmajfault")

    @property
    def working_set(self) -> int | None:
        """memory.current minus inactive_file, floored at 0 (the kubelet's and cAdvisor's working set)."""
        if self.current is None or self.inactive_file is None:
            return None
        return max(0, self.current - self.inactive_file)

    @property
    def oom(self) -> int | None:
        return self.events.get("oom")

    @property
    def oom_kill(self) -> int | None:
        return self.events.get("oom_kill")


@dataclass(frozen=True)
class PidsStats:
    current: int | None = None
    limit: int | None = None  # None when "max" (no limit) or missing


@dataclass(frozen=True)
class IoStats:
    """io.stat per device ("maj:min" -> {"rbytes": ..., "wbytes": ..., "rios": ..., "wios": ..., ...})."""

    devices: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def total(self, key: str) -> int | None:
        values = [dev[key] for dev in self.devices.values() if key in dev]
        return sum(values) if values else None


@dataclass(frozen=True)
class PsiLine:
    avg10: float
    avg60: float
    avg300: float
    total: int  # microseconds


@dataclass(frozen=True)
class Pressure:
    """One PSI file (cpu.pressure, memory.pressure, io.pressure); `full` is absent in cpu.pressure on old kernels."""

    some: PsiLine | None = None
    full: PsiLine | None = None


@dataclass(frozen=True)
class CgroupStats:
    cpu: CpuStats | None = None
    memory: MemoryStats | None = None
    pids: PidsStats | None = None
    io: IoStats | None = None
    cpu_pressure: Pressure | None = None
    memory_pressure: Pressure | None = None
    io_pressure: Pressure | None = None
