"""The hand-over to crisp-monitor: once the container runs (or has ended) and nothing is under way, the Python shim
execs the monitor (shim/monitor/monitor.c), which keeps the shim's pid, socket, files and client connections and
watches the container from then on in a fraction of the memory. What the monitor does not do itself (exec, update,
kill --all, the executor's delete) it hands to a delegate: a Python process crispd's zygote forks for that one
request (shim/delegate.py).

The state the monitor needs goes on an inherited memfd, as one JSON object; the fds it names are inherited too.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from shim.log import log

if TYPE_CHECKING:
    from shim.server import Shim

CHECK_EVERY = 0.1  # how often a shim that could hand over looks whether it is quiet


class Handoff:
    def __init__(self, shim: Shim) -> None:
        self.shim = shim
        self.enabled = bool(shim.config.monitor and shim.config.zygote_socket)
        self._scheduled = False

    def soon(self) -> None:
        """The container runs or has ended: hand over as soon as the shim is quiet."""
        if self.enabled and not self._scheduled:
            self._scheduled = True
            self.shim.loop.call_later(0, self._check)

    def _check(self) -> None:
        self._scheduled = False
        if not self.enabled:
            return
        self.shim.loop.reap()  # an exit that is waiting is handled here, not lost in the hand-over
        if self._scheduled:  # it was (the exit calls `soon`): look again then
            return
        state = self.state()
        if state is None:
            self._scheduled = True
            self.shim.loop.call_later(CHECK_EVERY, self._check)
            return
        self._exec(state)

    def state(self) -> dict[str, Any] | None:
        """What the monitor takes over, or None while something is under way."""
        shim = self.shim
        container = shim.container
        if container.state not in ("running", "stopped") or container.busy or shim.execs.sessions:
            return None
        if not shim.loop.quiet({container.pid} if container.status is None else set()):
            return None
        stdin = container.stdin
        if stdin is not None and (stdin.buf or stdin.on_drained is not None):
            return None
        conns = []
        for conn in shim.conns:
            if conn.closed:
                continue
            if conn.rbuf or conn.wbuf or conn.paused:
                return None
            attacher = shim.attach.attachers.get(conn)
            if attacher is not None:
                if conn.pending:
                    return None
                conns.append({"fd": conn.fd, "mode": "attach", "stdin": attacher.stdin,
                              "streams": sorted(attacher.streams)})
            elif conn.framed:
                return None
            elif not conn.pending:
                conns.append({"fd": conn.fd, "mode": "idle", "stdin": False, "streams": []})
            elif conn.pending == ["wait"] and container.status is None:
                conns.append({"fd": conn.fd, "mode": "wait", "stdin": False, "streams": []})
            else:
                return None
        return {
            "config": shim.config.to_json(),
            "listener": shim.listener.fileno() if shim.listener is not None else -1,
            "log_fd": shim.log.fd,
            "outputs": [{"fd": out.fd, "stream": out.stream_id} for out in container.outputs if out.open],
            "stdin_fd": stdin.fd if stdin is not None and not stdin.closed else -1,
            "master": container.master,
            "state": container.state,
            "pid": container.pid,
            "started_at": container.started_at,
            "status": container.status.to_json() if container.status is not None else None,
            "oom": {"cgroup_dir": container.oom.cgroup_dir, "before": container.oom.before,
                    "parent_before": container.oom.parent_before},
            "rootfs_mounted": container.rootfs_mounted,
            "conns": conns,
        }

    def _exec(self, state: dict[str, Any]) -> None:
        fds = [state["listener"], state["log_fd"], state["stdin_fd"], state["master"],
               *(out["fd"] for out in state["outputs"]), *(conn["fd"] for conn in state["conns"])]
        fds = [fd for fd in fds if fd >= 0]
        memfd = os.memfd_create("crisp-shim-state", 0)  # inherited: the monitor reads it and closes it
        try:
            os.write(memfd, json.dumps(state).encode())
            os.lseek(memfd, 0, os.SEEK_SET)
            for fd in fds:
                os.set_inheritable(fd, True)
            log(f"container {self.shim.config.id} is {state['state']}: handing over to {self.shim.config.monitor}")
            os.execv(self.shim.config.monitor, ["crisp-shim", self.shim.config.id, str(memfd)])
        except OSError as exc:  # the Python shim goes on watching the container
            log(f"cannot hand over to {self.shim.config.monitor}: {exc}; the shim stays")
            self.enabled = False
            for fd in fds:
                os.set_inheritable(fd, False)
        finally:
            os.close(memfd)
