"""A pod's shared PID namespace: a pinned namespace whose PID 1 is Debian's `catatonit -P` (a pause process that
reaps, and exits on SIGTERM), forked off the warm zygote (runtime/namespaces/forked.py) and exec'd."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from runtime import errors
from runtime.mounts import bind_mount, is_mountpoint, unmount
from runtime.namespaces.pin import Forker
from runtime.procs import ProcessRef

START_TIMEOUT = 30.0


@dataclass(frozen=True)
class PodInit:
    """A running pod init; `born_in_cgroup`: it was born in the cgroup `start_pod_init` was given (nobody needs to
    move it there)."""

    ref: ProcessRef
    born_in_cgroup: bool


async def start_pod_init(pin: Path, pod_id: str, forker: Forker, userns: str = "", cgroup: str = "") -> PodInit:
    """Start the pod's PID 1 in a new PID namespace pinned at `pin`; returns it once it runs. A process forked from
    the zygote makes the namespace and forks PID 1 into it; crispd pins it once PID 1 runs. With the pod's own user
    namespace (`userns`, its pin), that process joins it first, so that the PID namespace is owned by it. With
    `cgroup` (a cgroup v2 directory) PID 1 is born there, if the kernel lets it (`born_in_cgroup` says whether it
    was)."""
    log_path = _log_path(pin)
    await asyncio.to_thread(_prepare, pin)
    ref = None
    try:
        answer = await forker.fork_work("start_pod_init", {"log": str(log_path), "userns": userns, "cgroup": cgroup},
                                        START_TIMEOUT, f"pod {pod_id}: pod init")
        ref = ProcessRef.of(int(answer["pid"]))
        if ref is None:
            message = (await asyncio.to_thread(log_path.read_text, errors="replace")).strip()
            raise errors.CrispError(f"pod init did not start: {message or 'it exited before it was ready'}")
        await bind_mount(Path(f"/proc/{ref.pid}/ns/pid"), pin)
        if not ref.alive():  # the pid was another process's by the time of the bind
            raise errors.CrispError("pod init did not start: it exited before its namespace was pinned")
    except BaseException:
        if ref is not None:
            ref.signal()
        await remove_pid_pin(pin)
        raise
    return PodInit(ref, bool(answer.get("born_in_cgroup")))


def _prepare(pin: Path) -> None:
    pin.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pin.touch(mode=0o400)


def _log_path(pin: Path) -> Path:
    """Where a pod init's output goes (its stdout and stderr for as long as it runs)."""
    return pin.parent / "podinit.log"


def find_pod_init(pin: Path) -> ProcessRef | None:
    """PID 1 of the PID namespace pinned at `pin`, found in /proc (for a pod init that no record names: crispd
    died before it wrote one); without a pin (crispd pins the init once it runs: crispd died before), the PID 1
    whose output goes to the pod's init log. None if there is no such process."""
    wanted = ""
    if is_mountpoint(pin):
        try:
            wanted = f"pid:[{os.stat(pin).st_ino}]"
        except OSError:
            return None
    log_path = str(_log_path(pin))
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if wanted and os.readlink(f"/proc/{entry.name}/ns/pid") != wanted:
                continue
            if not wanted and os.readlink(f"/proc/{entry.name}/fd/2") != log_path:
                continue
            with open(f"/proc/{entry.name}/status") as f:
                nspid = next((line.split()[1:] for line in f if line.startswith("NSpid:")), [])
        except OSError:
            continue
        if nspid and nspid[-1] == "1":
            return ProcessRef.of(int(entry.name))
    return None


STOP_TIMEOUT = 10.0


async def stop_pod_init(ref: ProcessRef | None) -> None:
    """Kill the pod init (and with it every process of the namespace) and wait until it is gone.

    It is not crispd's child, so there is nothing to wait on but /proc: poll it, briefly.
    """
    if ref is None or not ref.signal():
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STOP_TIMEOUT
    while ref.alive():
        if loop.time() > deadline:
            raise errors.Unavailable(f"pod init {ref.pid} did not exit within {STOP_TIMEOUT}s")
        await asyncio.sleep(0.005)


async def remove_pid_pin(pin: Path) -> None:
    await unmount(pin)
    await asyncio.to_thread(pin.unlink, missing_ok=True)
