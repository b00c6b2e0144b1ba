"""A pod's shared PID namespace: a pinned namespace with `podinit.py` as its PID 1."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from runtime import errors
from runtime.mounts import unmount
from runtime.namespaces import podinit
from runtime.procs import ProcessRef

START_TIMEOUT = 30.0


async def start_pod_init(pin: Path) -> ProcessRef:
    """Start the pod's PID 1 in a new PID namespace pinned at `pin`; returns it once it runs."""
    pin.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pin.touch(mode=0o400)
    log_path = pin.parent / "podinit.log"
    read_fd, write_fd = os.pipe()
    try:
        with open(log_path, "ab") as log:  # the detached processes outlive any pipe to crispd
            proc = await asyncio.create_subprocess_exec(
                "setsid", "-f", "unshare", f"--pid={pin}", "--fork", "--kill-child", "--",
                sys.executable, "-I", "-S", podinit.__file__, str(write_fd),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(write_fd,), close_fds=True)
        os.close(write_fd)
        write_fd = -1
        # `setsid -f` exits as soon as it has forked; the pod init reports on the pipe (EOF: it died)
        await asyncio.wait_for(proc.wait(), START_TIMEOUT)
        line = await asyncio.wait_for(asyncio.to_thread(_read_line, read_fd), START_TIMEOUT)
    except BaseException:
        await unmount(pin)
        pin.unlink(missing_ok=True)
        raise
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)
    ref = ProcessRef.of(int(line)) if line.strip().isdigit() else None
    if ref is None:
        await unmount(pin)
        pin.unlink(missing_ok=True)
        message = log_path.read_text(errors="replace").strip() or "it exited before it was ready"
        raise errors.CrispError(f"pod init did not start: {message}")
    return ref


def _read_line(fd: int) -> str:
    """One line, or what came before EOF (the pod init died). `unshare` holds the write end open, so no EOF
    arrives after a successful start: stop at the newline."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk
    return data.decode()


async def stop_pod_init(ref: ProcessRef | None, pin: Path, *, timeout: float = 10.0) -> None:
    """Kill the pod init (and with it every process of the namespace) and wait until it is gone."""
    if ref is not None and ref.signal():
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while ref.alive() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if ref.alive():
            raise errors.Unavailable(f"pod init {ref.pid} did not exit within {timeout}s")


async def remove_pid_pin(pin: Path) -> None:
    await unmount(pin)
    pin.unlink(missing_ok=True)
