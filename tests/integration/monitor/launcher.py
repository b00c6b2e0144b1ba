"""Process P of the monitor tests: it does what crisp's Python shim does before it execs crisp-monitor.

Run as `python launcher.py <spec json>` (by tests/integration/monitor/harness.py, as root). It becomes the shim:
child subreaper, its own session, cwd = the bundle, stdin/stdout /dev/null, stderr = shim.log, the signals a shim
ignores ignored; forks the container's "init" (`/bin/sh -c <script>`) on pipes (or a pty) it made, binds and
listens on shim.sock, accepts the connections it is told to hand over (and reads their request, as the Python
shim would have), writes the state JSON into a memfd and execs the monitor with it.

Standard library only; it imports nothing from crisp (it stands in for the Python shim, it is not it).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGQUIT)


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise SystemExit("launcher: a handed-over connection closed before its request")
        data += chunk
    return data


def main() -> None:
    spec = json.loads(sys.argv[1])
    bundle = spec["bundle"]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit("launcher: cannot become a child subreaper")
    os.setsid()
    os.chdir(bundle)
    devnull = os.open(os.devnull, os.O_RDWR)
    own_log = os.open("shim.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(own_log, 2)
    os.close(own_log)
    for signum in IGNORED:
        signal.signal(signum, signal.SIG_IGN)

    # the container's stdio
    master = -1
    stdin_w = -1
    outputs: list[dict[str, int]] = []
    if spec["tty"]:
        master, slave = os.openpty()
        child_stdio = (slave, slave, slave)
        outputs.append({"fd": os.dup(master), "stream": 1})
        stdin_w = master
        to_close = [slave]
    else:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        stdin_r = devnull
        to_close = [out_w, err_w]
        if spec["stdin"]:
            stdin_r, stdin_w = os.pipe()
            to_close.append(stdin_r)
        child_stdio = (stdin_r, out_w, err_w)
        outputs += [{"fd": out_r, "stream": 1}, {"fd": err_r, "stream": 2}]

    # closed by the init's exec (close-on-exec): from then on its signals are the default ones, not P's ignored
    execed_r, execed_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the "init": default signals, its stdio, nothing else
        try:
            os.close(execed_r)
            for signum in IGNORED:
                signal.signal(signum, signal.SIG_DFL)
            if spec["tty"]:
                os.login_tty(child_stdio[0])  # a session of its own with the pty as its terminal and stdio
            else:
                for target, fd in enumerate(child_stdio):
                    os.dup2(fd, target)
            os.closerange(3, execed_w)
            os.closerange(execed_w + 1, 65536)
            os.execv("/bin/sh", ["/bin/sh", "-c", spec["script"]])
        finally:
            os._exit(127)
    os.close(execed_w)
    os.read(execed_r, 1)
    os.close(execed_r)
    for fd in to_close:
        os.close(fd)
    with open("init.pid", "w") as f:
        f.write(str(pid))
    with open("shim.json", "w") as f:  # stands in for the Python shim's shim.json: shutdown removes it
        json.dump({"pid": os.getpid()}, f)

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    listener.bind("shim.sock")
    os.umask(old)
    listener.listen(64)

    conns = []
    for handed in spec["conns"]:
        sock, _ = listener.accept()
        mode = handed["mode"]
        if mode == "wait":
            request = json.loads(read_line(sock))
            assert request["op"] == "wait", request
        elif mode == "attach":
            request = json.loads(read_line(sock))
            assert request["op"] == "attach", request
            sock.sendall(b'{"v":1,"ok":true,"tty":%s}\n' % (b"true" if spec["tty"] else b"false"))
        entry = {"fd": sock.detach(), "mode": mode}
        if mode == "attach":
            entry.update(stdin=bool(handed.get("stdin")), streams=handed.get("streams", [1, 2]))
        conns.append(entry)

    log_fd = -1
    if spec["log_path"]:
        log_fd = os.open(spec["log_path"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    config = {"id": spec["id"], "bundle": bundle, "log_path": spec["log_path"], "log_max_line": spec["log_max_line"],
              "stdin": spec["stdin"], "stdin_once": spec["stdin_once"], "cgroup2_mount": "", "cgroup": "",
              "zygote_socket": spec["zygote_socket"], "hang_points": spec["hang_points"],
              # keys the monitor does not know: it ignores them
              "executor": ["runc"], "executor_root": "/run/nowhere", "resident": 0}
    state = {"config": config, "listener": listener.detach(), "log_fd": log_fd, "outputs": outputs,
             "stdin_fd": stdin_w, "master": master, "state": "running", "pid": pid,
             "started_at": time.time_ns(), "status": None,
             "oom": spec["oom"] or {"cgroup_dir": "", "before": 0, "parent_before": 0},
             "rootfs_mounted": spec["rootfs_mounted"], "conns": conns}
    state.update(spec.get("override") or {})
    memfd = os.memfd_create("crisp-monitor-state", 0)
    os.write(memfd, json.dumps(state).encode())
    os.lseek(memfd, 0, os.SEEK_SET)
    fds = [memfd, state["listener"], log_fd, stdin_w, master] + [o["fd"] for o in outputs] + \
        [c["fd"] for c in conns]
    for fd in fds:
        if fd >= 0:
            os.set_inheritable(fd, True)
    os.execv(spec["monitor"], ["crisp-shim", spec["id"], str(memfd)])


if __name__ == "__main__":
    main()
