"""Pod namespace work done in a process forked from the warm zygote (shim/zygote.py), not in a new program.

crispd never forks; it asks the zygote, which forks a detached worker (as for a shim) and relays the dict that
the worker's function returns (`{"ok": true, ...}` or `{"ok": false, "error": {"kind", "message"}}`):
- `pin_namespaces`: the worker unshare()s the pod's namespaces, sets them up (`nsinit.set_up`: hostname, lo,
  sysctls) and bind-mounts its own /proc/self/ns/<kind> onto each pin file, then exits: the namespaces live on
  through the pins. With a user namespace the pins cannot be made from inside it (the host's mount namespace is
  not its to change), so a child of the worker unshare()s them all, the worker (still the host's root) pins them
  from outside and writes the id maps, and then the child, with every capability of its new user namespace (no
  exec drops them), sets them up.
- `start_pod_init`: the worker (inside the pod's user namespace when it has one) unshare()s a PID namespace and
  forks its PID 1, which execs Debian's `catatonit -P` (a pause process: it reaps and exits on SIGTERM/SIGINT),
  with its output on the pod's init log; the answer names PID 1's host pid once the exec succeeded.
Standard library only (and crisp's stdlib-only modules): the zygote imports this once, before any fork.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from runtime.linux import idmap
from runtime.linux import syscalls as sc
from runtime.namespaces import nsinit
from runtime.namespaces.userns import enter_user_namespace

NAMESPACE_FLAGS = {"net": sc.CLONE_NEWNET, "ipc": sc.CLONE_NEWIPC, "uts": sc.CLONE_NEWUTS, "user": sc.CLONE_NEWUSER}
POD_INIT = ("catatonit", "-P")  # pause mode: no program, PID 1 that reaps and exits on SIGTERM/SIGINT


def _failed(kind: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"kind": kind, "message": message}}


def pin_namespaces(request: dict[str, Any]) -> dict[str, Any]:
    """In a forked worker: make, set up and pin the namespaces `request["pins"]` ({kind: pin file}) names."""
    # the kernel ends a worker stuck past crispd's time limit: nothing it does after crispd gave up lands
    signal.alarm(max(1, int(request["timeout"])))
    pins: dict[str, str] = request["pins"]
    flags = 0
    for kind in pins:
        flags |= NAMESPACE_FLAGS[kind]
    if "user" in pins:
        return _pin_from_outside(request, flags)
    try:
        sc.unshare(flags)
    except OSError as exc:
        return _failed("Internal", f"pod namespace setup: unshare {sorted(pins)}: {exc.strerror}")
    try:
        nsinit.set_up(request)
    except nsinit.SetupFailed as exc:
        return _failed("InvalidArgument", f"pod namespace setup: {exc}")
    return _bind_pins(pins, "/proc/self/ns") or {"ok": True}


def _bind_pins(pins: dict[str, str], ns_dir: str) -> dict[str, Any] | None:
    """Bind each namespace file of `ns_dir` on its pin; the failure's answer, or None. crispd unmounts the pins
    made so far when one fails."""
    for kind, path in pins.items():
        try:
            sc.mount(f"{ns_dir}/{kind}", path, None, sc.MS_BIND)
        except OSError as exc:
            return _failed("Internal", f"pinning the pod's {kind} namespace: {exc.strerror}")
    return None


def _pin_from_outside(request: dict[str, Any], flags: int) -> dict[str, Any]:
    """With a new user namespace: a child makes the namespaces; once it says so, pin them and write the maps, then
    let it set them up. Its answer (one JSON line after "ready") is ours."""
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(report_r)
            os.close(go_w)
            _set_up_as_child(request, flags, report_w, go_r)
        finally:
            os._exit(0)
    os.close(report_w)
    os.close(go_r)
    try:
        with os.fdopen(report_r, "rb") as reports:
            if reports.readline() != b"ready\n":
                return _answer_of(reports.readline())
            failed = _bind_pins(request["pins"], f"/proc/{pid}/ns")
            if failed is not None:
                return failed
            try:
                idmap.write_maps(pid, _mappings(request["uids"]), _mappings(request["gids"]))
            except OSError as exc:
                return _failed("InvalidArgument", f"pod user namespace: the kernel refused its id maps: "
                                                  f"{exc.strerror}")
            os.write(go_w, b"go\n")
            return _answer_of(reports.readline())
    finally:
        os.close(go_w)  # a child still waiting gives up
        os.waitpid(pid, 0)


def _set_up_as_child(request: dict[str, Any], flags: int, report_w: int, go_r: int) -> None:
    try:
        sc.unshare(flags)
    except OSError as exc:
        answer = _failed("Internal", f"pod namespace setup: unshare {sorted(request['pins'])}: {exc.strerror}")
    else:
        os.write(report_w, b"ready\n")
        if os.read(go_r, 3) != b"go\n":
            return  # the worker could not pin or map: it says why
        try:
            # the namespace's root (mapped now): IPC sysctls are writable by it only, capabilities or not
            sc.setresgid(0, 0, 0)
            sc.setresuid(0, 0, 0)
            nsinit.set_up(request)
            answer = {"ok": True}
        except nsinit.SetupFailed as exc:
            answer = _failed("InvalidArgument", f"pod namespace setup: {exc}")
        except OSError as exc:
            answer = _failed("Internal", f"pod namespace setup: becoming the user namespace's root: {exc.strerror}")
    os.write(report_w, json.dumps(answer).encode() + b"\n")


def _answer_of(line: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(line)
    except ValueError:
        answer = None
    return answer if isinstance(answer, dict) else _failed("Internal", "pod namespace setup: its process died")


def _mappings(rows: list[list[int]]) -> list[tuple[int, int, int]]:
    return [(int(inside), int(outside), int(length)) for inside, outside, length in rows]


def start_pod_init(request: dict[str, Any]) -> dict[str, Any]:
    """In a forked worker: a new PID namespace (owned by the pod's user namespace `request["userns"]`, if any)
    with `catatonit -P` as its PID 1, writing to `request["log"]`, and born in the cgroup v2 directory
    `request["cgroup"]` if one is given and the kernel lets it (else where the worker is: crispd moves it). Answers
    PID 1's pid as the host sees it, and whether it was born in that cgroup."""
    cgroup_fd = -1
    try:
        log_fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        if request.get("cgroup"):
            cgroup_fd = os.open(request["cgroup"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if request.get("userns"):
            enter_user_namespace(request["userns"])
        sc.unshare(sc.CLONE_NEWPID)
        exec_r, exec_w = os.pipe2(os.O_CLOEXEC)
    except OSError as exc:
        return _failed("Internal", f"pod init did not start: {exc}")
    pid, born_in_cgroup = _fork_pod_init(cgroup_fd)
    if pid == 0:
        try:
            os.close(exec_r)
            _exec_pod_init(log_fd, exec_w)
        except OSError as exc:
            os.write(exec_w, f"{exc.errno} {exc.strerror}".encode())
        finally:
            os._exit(127)
    os.close(exec_w)
    os.close(log_fd)
    with os.fdopen(exec_r, "rb") as reader:
        failure = reader.read().decode(errors="replace")  # EOF without a word: the exec succeeded
    if failure:
        os.waitpid(pid, 0)
        code, _, words = failure.partition(" ")
        if code == str(2):  # ENOENT
            return _failed("FailedPrecondition", f"pod init: {POD_INIT[0]} is not installed (Debian: apt-get "
                                                 f"install {POD_INIT[0]})")
        return _failed("Internal", f"pod init did not start: exec {POD_INIT[0]}: {words}")
    return {"ok": True, "pid": pid, "born_in_cgroup": born_in_cgroup}


def _fork_pod_init(cgroup_fd: int) -> tuple[int, bool]:
    """os.fork(), the child born in the cgroup of `cgroup_fd` (>= 0, closed here) when the kernel lets it: no
    migration afterwards (sc.fork_born_in). (pid, whether it was born there)."""
    try:
        return sc.fork_born_in(cgroup_fd if cgroup_fd >= 0 else None)
    finally:
        if cgroup_fd >= 0:
            os.close(cgroup_fd)  # in the child too: PID 1 keeps no fd but its log


def _exec_pod_init(log_fd: int, exec_w: int) -> None:
    """PID 1 of the new namespace: stdin /dev/null, output to the pod's init log, no other fd, default signals."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    keep = max(2, exec_w)
    os.closerange(3, exec_w)
    os.closerange(keep + 1, 1 << 16)
    os.chdir("/")
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # Python ignores it, and an exec keeps what is ignored
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    os.execvp(POD_INIT[0], list(POD_INIT))
