"""Real containers for the shim tests: a busybox rootfs, OCI bundles, and a shim manager on a temporary state dir.

Everything made here is named crisp-shimtest-* and removed by `ShimEnv.cleanup`, also when a test fails; the
cleanup then checks that no process, mount or cgroup was left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from cri import slowcallbacks
from cri.shims.manager import ShimManager
from runtime.cgroups.paths import find_cgroup2_mount, oci_runtime_bind
from runtime.procs import process_start_time
from shim import protocol
from shim.protocol import ShimConfig

T = TypeVar("T")

BUSYBOX = "/bin/busybox"
CGROUP_PREFIX = "crisp-shimtest-"
# crisp's own executor, and the OCI runtimes a runtime handler may name (same command line)
EXECUTORS = ("builtin", "runc", "crun")


def executor_argv(name: str) -> list[str]:
    if name != "builtin":
        return [name]
    script = Path(sys.executable).parent / "crisp-executor"
    return [str(script)] if script.exists() else [sys.executable, "-m", "runtime.executor"]


# crispd's own tests use 50 ms; on this shared 2-core machine scheduling alone sometimes reaches that, so the shim
# tests catch real blocking (a synchronous subprocess or fsync takes longer) at 100 ms
SLOW_CALLBACK_SECONDS = 0.1


class _SlowCallbacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing ") and " took " in message:
            self.seen.append(message)


def run(coro: Coroutine[Any, Any, T], timeout: float = 120, check_slow_callbacks: bool = True) -> T:
    """Run a coroutine as crispd runs its loop in tests: asyncio debug on, and a slow callback (the manager or the
    client blocked the loop) fails the test; as in crispd, time spent waiting for a CPU is not counted. The VM
    tier turns the check off: its CPU is emulated."""
    async def bounded() -> T:
        asyncio.get_running_loop().slow_callback_duration = SLOW_CALLBACK_SECONDS if check_slow_callbacks else 3600
        return await asyncio.wait_for(coro, timeout)
    slow = _SlowCallbacks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(slow)
    try:
        with slowcallbacks.installed(SLOW_CALLBACK_SECONDS):
            result = asyncio.run(bounded(), debug=True)
    finally:
        logger.removeHandler(slow)
    assert slow.seen == [], "the event loop was blocked:\n" + "\n".join(slow.seen)
    return result


def cgroup2_mount() -> str:
    return str(find_cgroup2_mount(Path("/proc/self/mountinfo").read_text()))


def build_busybox_rootfs(target: Path) -> None:
    """A rootfs with Debian's busybox-static and a link per applet (a real binary: `busybox cat` is a new
    process, unlike a shell builtin)."""
    (target / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, target / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (target / "bin" / applet).symlink_to("busybox")
    for name in ("proc", "dev", "sys", "tmp", "etc", "root"):
        (target / name).mkdir(exist_ok=True)
    (target / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
    (target / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")


def oci_spec(args: list[str], cgroup: str, tty: bool = False, env: list[str] | None = None, uid: int = 0,
             gid: int = 0, caps: list[str] | None = None, seccomp: dict[str, Any] | None = None,
             no_new_privileges: bool = True, devices: bool = True, memory_limit: int = 0) -> dict[str, Any]:
    capabilities = caps if caps is not None else ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": tty,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env or ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: list(capabilities) for k in ("bounding", "effective", "permitted", "inheritable")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": no_new_privileges,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "crisp-shimtest",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": {
            "cgroupsPath": f"/{cgroup}",
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        },
    }
    if devices:
        # crun 1.8 raises RLIMIT_MEMLOCK for its eBPF device filter, which needs CAP_SYS_RESOURCE (not here)
        spec["linux"]["resources"] = {"devices": [{"allow": False, "access": "rwm"}]}
    if seccomp is not None:
        spec["linux"]["seccomp"] = seccomp
    if memory_limit:
        # memory+swap = memory: no swap
        spec["linux"].setdefault("resources", {})["memory"] = {"limit": memory_limit, "swap": memory_limit}
    return spec


class ShimEnv:
    """A temporary state dir with a manager, bundles and a log dir; `cleanup` removes every trace."""

    def __init__(self, rootfs: Path, executor: str = "runc") -> None:
        self.rootfs = rootfs
        self.executor = executor
        # short: unix socket paths in it must stay below 108 bytes
        self.base = Path(tempfile.mkdtemp(prefix="crisp-shimtest-", dir="/tmp"))
        self.containers = self.base / "c"
        self.containers.mkdir()
        self.executor_root = self.base / "r"
        self.logs = self.base / "logs"
        self.logs.mkdir()
        self.layers = self.base / "l"
        self.cgroup2 = cgroup2_mount()
        self.ids: list[str] = []

    def new_id(self) -> str:
        cid = f"t{uuid.uuid4().hex[:12]}"
        self.ids.append(cid)
        return cid

    def cgroup_dir(self, cid: str) -> Path:
        return Path(self.cgroup2) / f"{CGROUP_PREFIX}{cid}"

    def bundle(self, cid: str, args: list[str], overlay: bool = True, **spec_args: Any) -> Path:
        bundle = self.containers / cid
        bundle.mkdir()
        if self.executor == "crun":
            spec_args.setdefault("devices", False)
        spec = oci_spec(args, f"{CGROUP_PREFIX}{cid}", **spec_args)
        if overlay:
            upper = self.layers / cid / "upper"
            work = self.layers / cid / "work"
            upper.mkdir(parents=True)
            work.mkdir(parents=True)
            (bundle / "rootfs").mkdir()  # the mount point, made by whoever writes the bundle
            spec["annotations"] = {"io.crisp.rootfs.overlay": json.dumps(
                {"lowerdirs": [str(self.rootfs)], "upperdir": str(upper), "workdir": str(work)})}
        else:
            (bundle / "rootfs").symlink_to(self.rootfs)
        (bundle / "config.json").write_text(json.dumps(spec))
        return bundle

    @property
    def builtin(self) -> bool:
        return self.executor == "builtin"

    def config(self, cid: str, log: bool = True, **fields: Any) -> ShimConfig:
        # the built-in executor mounts the rootfs overlay and finds cgroup v2 itself; runc and crun need the shim
        argv = executor_argv(self.executor)
        return ShimConfig(id=cid, bundle=str(self.containers / cid), executor=argv,
                          executor_root=str(self.executor_root), resident=len(argv) if self.builtin else 0,
                          log_path=str(self.logs / f"{cid}.log") if log else "",
                          mount_rootfs=not self.builtin, cgroup2_mount=self.cgroup2,
                          cgroup=fields.pop("cgroup", f"/{CGROUP_PREFIX}{cid}"),
                          cgroup2_bind="" if self.builtin else oci_runtime_bind(self.cgroup2), **fields)

    def manager(self) -> ShimManager:
        return ShimManager(self.containers, call_timeout=60)

    async def started_manager(self) -> ShimManager:
        """A manager with its zygote running. Like crispd, whose slow-callback threshold applies once it serves,
        start-up (spawning the zygote is a fork+exec in the loop) is not held to the threshold."""
        loop = asyncio.get_running_loop()
        threshold, loop.slow_callback_duration = loop.slow_callback_duration, 10.0
        try:
            manager = self.manager()
            await manager.start()
        finally:
            loop.slow_callback_duration = threshold
        return manager

    @contextlib.asynccontextmanager
    async def running_manager(self) -> AsyncIterator[ShimManager]:
        """`started_manager`, closed at the end (as crispd closes it when it stops: the shims stay)."""
        manager = await self.started_manager()
        try:
            yield manager
        finally:
            await manager.close()

    def shim_pids(self) -> list[int]:
        pids = []
        for info in self.containers.glob(f"*/{protocol.INFO_NAME}"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                data = json.loads(info.read_text())
                if process_start_time(data["pid"]) == data["start_time"]:
                    pids.append(int(data["pid"]))
        return pids

    def processes_left(self) -> list[str]:
        """Processes that belong to this env: cwd inside it (shims) or in one of its cgroups (containers)."""
        left = []
        base = str(self.base)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
                cgroup = Path(f"/proc/{pid}/cgroup").read_text()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cwd.startswith(base) or any(f"{CGROUP_PREFIX}{cid}" in cgroup for cid in self.ids):
                left.append(f"{pid}: {cmdline.strip()} (cwd {cwd})")
        return left

    def mounts_left(self) -> list[str]:
        text = Path("/proc/self/mountinfo").read_text()
        return [line for line in text.splitlines() if str(self.base) in line]

    def cgroups_left(self) -> list[str]:
        return [str(self.cgroup_dir(cid)) for cid in self.ids if self.cgroup_dir(cid).exists()]

    def cleanup(self) -> list[str]:
        """Remove everything; returns what had been left behind (a test that leaves things fails)."""
        problems: list[str] = []
        for _ in range(50):
            procs = self.processes_left()
            if not procs:
                break
            time.sleep(0.1)  # shims that were told to shut down are on their way out
        procs = self.processes_left()
        if procs:
            problems += [f"process left: {p}" for p in procs]
        for pid in self.shim_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        bind = "" if self.builtin else oci_runtime_bind(self.cgroup2)
        for cid in self.ids:
            argv = [*executor_argv(self.executor), "--root", str(self.executor_root), "delete", "--force", cid]
            if bind:
                argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                        'mount --bind "$0" /sys/fs/cgroup && exec "$@"', bind, *argv]
            if (self.executor_root / cid).exists():
                subprocess.run(argv, capture_output=True, timeout=60)
        mounts = self.mounts_left()
        if mounts:
            problems += [f"mount left: {m}" for m in mounts]
        for line in reversed(mounts):
            subprocess.run(["umount", "-l", line.split()[4]], capture_output=True)
        cgroups = self.cgroups_left()
        if cgroups:
            problems += [f"cgroup left: {c}" for c in cgroups]
        for cgroup in cgroups:
            with contextlib.suppress(OSError):
                Path(cgroup, "cgroup.kill").write_text("1")
            time.sleep(0.2)
            with contextlib.suppress(OSError):
                os.rmdir(cgroup)
        for _ in range(20):
            if not self.processes_left():
                break
            time.sleep(0.1)
        shutil.rmtree(self.base, ignore_errors=True)
        return problems


def parse_cri_log(path: Path) -> list[tuple[str, str, str, bytes]]:
    """The kubelet's reading of a CRI log file: (timestamp, stream, tag, content) per line, strictly checked."""
    entries = []
    for raw in path.read_bytes().split(b"\n")[:-1]:
        timestamp, stream, tag, content = raw.split(b" ", 3) if raw.count(b" ") >= 3 else (*raw.split(b" "), b"")
        assert stream in (b"stdout", b"stderr"), raw[:100]
        assert tag in (b"P", b"F"), raw[:100]
        entries.append((timestamp.decode(), stream.decode(), tag.decode(), content))
    return entries


def joined_output(path: Path, stream: str = "stdout") -> bytes:
    """The container's output as the kubelet reassembles it: P parts joined, a newline after each F."""
    out = bytearray()
    for _, which, tag, content in parse_cri_log(path):
        if which == stream:
            out += content
            if tag == "F":
                out += b"\n"
    return bytes(out)
