"""Sampling containers and pods for the CRI stats and metrics RPCs.

One `collect` reads everything a call needs, off the event loop: the cgroup files of every pod and container in one
worker thread (cgroup v2 `Cgroup.stats()`, plus process counts and the limits the metrics report), the writable
layers (walked in a worker thread, each at most every `[stats] disk_usage_cache_seconds`), and the pods' interface
counters (one network helper request for all pods; crispd never enters a namespace). What the host cannot tell
stays None all the way to the CRI messages, where it becomes an unset value.

CPU "nano cores" is a rate: each container and pod keeps its previous sample here (in memory), and a new sample at
least MIN_RATE_WINDOW later gives the average over the window between them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from runtime import errors
from runtime.cgroups import Cgroup, CgroupStats, CgroupV2Manager
from runtime.cgroups import fs as cgroup_fs
from runtime.image.gc import usage as tree_usage
from runtime.network.manager import NetworkManager
from runtime.network.netstats import InterfaceCounters
from runtime.procstats import ProcessCounts, count_processes

log = logging.getLogger(__name__)

# samples closer together than this give no new rate (the previous one is kept)
MIN_RATE_NS = 100_000_000


@dataclass(frozen=True)
class CgroupLimits:
    """What the cgroup enforces, as its files say (None: the file, or the controller, is missing)."""

    cpu_max: str | None = None  # "quota period" or "max period"
    cpu_weight: int | None = None
    memory_max: str | None = None  # bytes or "max"
    memory_swap_max: str | None = None
    memory_low: str | None = None
    pids_max: str | None = None


@dataclass(frozen=True)
class CgroupSample:
    """One cgroup read at `timestamp` (wall clock ns); `stats` None when the cgroup does not exist."""

    timestamp: int
    stats: CgroupStats | None = None
    processes: ProcessCounts | None = None
    limits: CgroupLimits | None = None
    # io.stat devices "maj:min" -> device name (/dev/...), for the per-device metrics
    devices: dict[str, str] | None = None
    nano_cores: int | None = None


@dataclass(frozen=True)
class DiskUsage:
    timestamp: int  # when the walk started (wall clock ns)
    used_bytes: int
    inodes_used: int
    # the file system the layer is on (statvfs): for the container_fs_* metrics
    capacity_bytes: int | None = None
    inodes_total: int | None = None
    inodes_free: int | None = None


@dataclass(frozen=True)
class NetworkSample:
    timestamp: int
    interfaces: list[InterfaceCounters]


@dataclass(frozen=True)
class CgroupRequest:
    key: str  # the container or pod id whose rate state this sample updates
    path: str  # relative to the cgroup2 mount
    processes: bool = False
    open_files: bool = False
    limits: bool = False


def _read_cgroup(mount: Path, request: CgroupRequest, clock_ns: Callable[[], int]) -> CgroupSample:
    timestamp = clock_ns()
    cg = Cgroup(mount, request.path)
    try:
        stats = cg.stats()
    except errors.NotFound:
        return CgroupSample(timestamp=timestamp)
    processes = count_processes(cg.dir, with_files=request.open_files) if request.processes else None
    limits = _read_limits(cg.dir) if request.limits else None
    devices = _device_names(stats.io.devices) if request.limits and stats.io is not None else None
    return CgroupSample(timestamp=timestamp, stats=stats, processes=processes, limits=limits, devices=devices)


def _text(path: Path) -> str | None:
    try:
        text = cgroup_fs.read(path)
    except OSError:
        return None
    return None if text is None else text.strip()


def _read_limits(cgroup_dir: Path) -> CgroupLimits:
    weight = _text(cgroup_dir / "cpu.weight")
    return CgroupLimits(
        cpu_max=_text(cgroup_dir / "cpu.max"), cpu_weight=int(weight) if weight and weight.isdigit() else None,
        memory_max=_text(cgroup_dir / "memory.max"), memory_swap_max=_text(cgroup_dir / "memory.swap.max"),
        memory_low=_text(cgroup_dir / "memory.low"), pids_max=_text(cgroup_dir / "pids.max"))


def _device_names(devices: Iterable[str]) -> dict[str, str]:
    names = {}
    for dev in devices:
        try:
            text = Path(f"/sys/dev/block/{dev}/uevent").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("DEVNAME="):
                names[dev] = "/dev/" + line.split("=", 1)[1]
    return names


def _disk_usage(path: str, clock_ns: Callable[[], int]) -> DiskUsage:
    timestamp = clock_ns()
    used, inodes = tree_usage(path)
    try:
        st = os.statvfs(path)
    except OSError:
        return DiskUsage(timestamp=timestamp, used_bytes=used, inodes_used=inodes)
    return DiskUsage(timestamp=timestamp, used_bytes=used, inodes_used=inodes,
                     capacity_bytes=st.f_blocks * st.f_frsize, inodes_total=st.f_files, inodes_free=st.f_ffree)


class StatsCollector:
    """Reads stats for the RPCs and keeps what rates and caches need between calls."""

    def __init__(self, cgroups: Callable[[], CgroupV2Manager], network: NetworkManager | None,
                 disk_cache_seconds: float, network_timeout: float,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._cgroups = cgroups
        self._network = network
        self._disk_cache_ns = int(disk_cache_seconds * 1e9)
        self._network_timeout = network_timeout
        self._clock_ns = clock_ns
        # id -> (monotonic ns, usage ns, last rate): the previous CPU sample of each container and pod
        self._cpu: dict[str, tuple[int, int, int | None]] = {}
        # container id -> (monotonic ns of the walk, usage)
        self._disk: dict[str, tuple[int, DiskUsage]] = {}
        self._disk_lock = asyncio.Lock()

    async def cgroups(self, requests: list[CgroupRequest], rates: bool = True) -> dict[str, CgroupSample]:
        """Read these cgroups (one worker thread for all); key -> sample, with nano cores where a rate exists
        (`rates` false: no nano cores, and the samples kept for the rates stay as they are)."""
        if not requests:
            return {}
        try:
            mount = self._cgroups().mount
        except errors.FailedPrecondition:
            now = self._clock_ns()
            return {r.key: CgroupSample(timestamp=now) for r in requests}

        def read_all() -> list[tuple[CgroupSample, int]]:
            return [(_read_cgroup(mount, r, self._clock_ns), time.monotonic_ns()) for r in requests]

        samples = await asyncio.to_thread(read_all)
        if not rates:
            return {request.key: sample for request, (sample, _) in zip(requests, samples, strict=True)}
        out = {}
        for request, (sample, mono) in zip(requests, samples, strict=True):
            out[request.key] = self._with_rate(request.key, sample, mono)
        return out

    def _with_rate(self, key: str, sample: CgroupSample, mono: int) -> CgroupSample:
        cpu = sample.stats.cpu if sample.stats is not None else None
        if cpu is None or cpu.usage_usec is None:
            return sample
        usage = cpu.usage_usec * 1000
        previous = self._cpu.get(key)
        if previous is None or usage < previous[1]:  # first sample, or a new cgroup under the same id
            self._cpu[key] = (mono, usage, None)
            return sample
        then, used, rate = previous
        if mono - then >= MIN_RATE_NS:
            rate = (usage - used) * 1_000_000_000 // (mono - then)
            self._cpu[key] = (mono, usage, rate)
        return CgroupSample(timestamp=sample.timestamp, stats=sample.stats, processes=sample.processes,
                            limits=sample.limits, devices=sample.devices, nano_cores=rate)

    async def disk_usage(self, layers: dict[str, str]) -> dict[str, DiskUsage]:
        """container id -> usage of its writable layer dir; walked in a worker thread when the cached one is older
        than the cache time."""
        async with self._disk_lock:
            now = time.monotonic_ns()
            stale = {cid: path for cid, path in layers.items()
                     if cid not in self._disk or now - self._disk[cid][0] >= self._disk_cache_ns}
            if stale:
                def walk() -> dict[str, DiskUsage]:
                    return {cid: _disk_usage(path, self._clock_ns) for cid, path in stale.items()}

                fresh = await asyncio.to_thread(walk)
                done = time.monotonic_ns()
                for cid, usage in fresh.items():
                    self._disk[cid] = (done, usage)
            return {cid: self._disk[cid][1] for cid in layers if cid in self._disk}

    async def network(self, netns: dict[str, str]) -> dict[str, NetworkSample]:
        """pod id -> its interfaces' counters (pods whose namespace cannot be read are left out, and logged)."""
        if not netns or self._network is None:
            return {}
        timestamp = self._clock_ns()
        try:
            found = await self._network.interface_stats(sorted(set(netns.values())), self._network_timeout)
        except Exception as exc:  # no network stats is no reason to fail the call
            log.warning("pod network stats: %s", exc)
            return {}
        out = {}
        for pod_id, path in netns.items():
            entry = found.get(path)
            if isinstance(entry, list):
                out[pod_id] = NetworkSample(timestamp=timestamp, interfaces=entry)
            elif entry is not None:
                log.debug("pod %s: no network stats: %s", pod_id, entry)
        return out

    def forget_except(self, ids: Iterable[str]) -> None:
        """Drop the state of containers and pods that are gone."""
        keep = set(ids)
        for table in (self._cpu, self._disk):
            for key in [k for k in table if k not in keep]:
                del table[key]
