"""The executor's operations (create, start, state, kill, delete, exec) on containers under one --root.

The command line (main.py) only parses arguments and calls these. Every operation that changes a container holds
the lock of its state dir. `create` registers the undo of each step as it goes, so a failed create leaves nothing
behind: no state dir, no cgroup, no process (and no mount: every mount lives in the container's own namespace).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.bundle import read_json
from runtime.executor import cgroup, console, hooks, launcher, lifecycle, rootfs, sysctls
from runtime.executor.init import ExecContext, InitContext, container_init, exec_process
from runtime.executor.oci import Process, Spec, load_spec, parse_process, parse_spec
from runtime.executor.process import ProcessSetup, apply_rlimits, set_oom_score_adj
from runtime.executor.state import (
    CREATED,
    RUNNING,
    ContainerDir,
    State,
    now_rfc3339,
)
from runtime.linux import syscalls as sc
from runtime.procs import process_start_time
from runtime.undo import undo_step

log = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0
_POLL = 0.01


@dataclass(frozen=True)
class ExecOptions:
    process_file: Path
    pid_file: Path | None = None
    console_socket: str | None = None
    detach: bool = False
    preserve_fds: int = 0


@dataclass
class PreparedExec:
    """An exec ready to fork (Executor.prepare_exec): launch `plan` with `child_main`, born in `cgroup_fd`'s cgroup
    (else moved into `cgroup`); `close` gives back the fds it holds."""

    plan: launcher.NamespacePlan
    cgroup: cgroup.ContainerCgroup | None
    cgroup_fd: int | None
    ctx: ExecContext
    child_main: Callable[[socket.socket], None]

    def close(self) -> None:
        self.plan.close()
        if self.cgroup_fd is not None:
            os.close(self.cgroup_fd)
            self.cgroup_fd = None
        if self.ctx.console_sock is not None:
            self.ctx.console_sock.close()


def parse_signal(value: str) -> signal.Signals:
    text = value.strip().upper()
    try:
        if text.isdigit():
            return signal.Signals(int(text))
        return signal.Signals[text if text.startswith("SIG") else "SIG" + text]
    except (KeyError, ValueError):
        raise errors.InvalidArgument(f"unknown signal {value!r}") from None


def write_pid_file(path: Path, pid: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(str(pid))
    os.replace(tmp, path)


def _wait_gone(pid: int, start: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_start_time(pid) != start:
            return True
        time.sleep(_POLL)
    return False


class Executor:
    def __init__(self, root: Path, sys: sc.Syscalls | None = None, systemd_cgroup: bool = False) -> None:
        """`systemd_cgroup`: containers live in scopes crispd makes (runtime/executor/cgroup.py)."""
        self.root = root
        self.sys = sys or sc.Syscalls()
        self.systemd_cgroup = systemd_cgroup

    def _dir(self, container_id: str) -> ContainerDir:
        return ContainerDir(self.root, container_id)

    def _load(self, container_id: str) -> tuple[ContainerDir, State, str]:
        cdir = self._dir(container_id)
        state = cdir.read()
        return cdir, state, cdir.status(state)

    # ------------------------------------------------------------------ create

    def create(self, container_id: str, bundle: Path, pid_file: Path | None = None,
               console_socket: str | None = None, preserve_fds: int = 0, held_pid_fd: int | None = None) -> int:
        bundle = bundle.absolute()
        spec, raw = load_spec(bundle)
        self._check(spec)
        if self.systemd_cgroup:
            if not spec.linux.cgroups_path or spec.linux.cgroups_path.count(":") != 2:
                raise errors.InvalidArgument(f"--systemd-cgroup needs linux.cgroupsPath as slice:prefix:name, not "
                                             f"{spec.linux.cgroups_path!r}")
            if held_pid_fd is None:
                raise errors.InvalidArgument("--systemd-cgroup needs --held-pid-fd: crispd makes the scope")
        cdir = self._dir(container_id)
        with contextlib.ExitStack() as undo:
            cdir.make()
            if spec.hooks.get("poststop"):
                # a failed create is a deleted container: its poststop hooks run last (runtime-spec step 13)
                stopped = hooks.state_document(spec.oci_version, container_id, "stopped", str(bundle),
                                               spec.annotations)
                undo.callback(hooks.run_hooks_warn, spec.hooks, "poststop", stopped, f"container {container_id}",
                              str(bundle))
            undo.callback(cdir.remove)
            with cdir.locked() as lock_fd:
                pid = self._create_locked(cdir, spec, raw, bundle, pid_file, console_socket, preserve_fds, undo,
                                          lock_fd, held_pid_fd)
            undo.pop_all()
        log.info("container %s: created, init pid %d", container_id, pid)
        return pid

    def _check(self, spec: Spec) -> None:
        """Refusals that need no process: sysctls that would reach the host, hostname without a UTS ns."""
        sysctls.check_sysctls(spec.linux)
        if spec.linux.namespace("mount") is None:
            raise errors.InvalidArgument("linux.namespaces: the built-in executor needs a mount namespace")
        if (spec.hostname or spec.domainname) and sysctls.shares_host(spec.linux, "uts"):
            raise errors.InvalidArgument("hostname: setting it needs a UTS namespace of its own")

    def _create_locked(self, cdir: ContainerDir, spec: Spec, raw: dict[str, Any], bundle: Path,
                       pid_file: Path | None, console_socket: str | None, preserve_fds: int,
                       undo: contextlib.ExitStack, lock_fd: int, held_pid_fd: int | None = None) -> int:
        raw_linux = raw.get("linux") or {}
        setup = ProcessSetup(self.sys, spec.process, spec.linux.seccomp)
        os.mkfifo(cdir.fifo, 0o622)
        os.chmod(cdir.fifo, 0o622)
        fifo_fd = os.open(cdir.fifo, os.O_PATH | os.O_CLOEXEC)
        undo.callback(os.close, fifo_fd)
        console_sock = None
        if console_socket:
            console_sock = console.connect_console_socket(console_socket)
            undo.callback(console_sock.close)
        elif spec.process.terminal:
            raise errors.InvalidArgument("process.terminal is set but no --console-socket was given")
        cgroup_path = spec.linux.cgroups_path or cgroup.default_path(cdir.id)
        launched_pids: list[int] = []
        cg: cgroup.ContainerCgroup
        if self.systemd_cgroup and held_pid_fd is not None:
            scope = cgroup.systemd_scope(cgroup_path)
            cg, made = scope, False
            fd = held_pid_fd

            def add_to_cgroup(pid: int) -> None:
                cgroup.hand_over(scope, pid, fd, spec.linux.resources)
        else:
            cg, made = cgroup.create_cgroup(cgroup_path, spec.linux.resources)
            add_to_cgroup = cg.add_process
        if made:
            undo.callback(undo_step("remove the cgroup", cg.remove))
        undo.callback(undo_step("kill the container's processes", _kill_processes, cg, launched_pids))
        # until create returns, the init is our child (so a failed one is reaped here, not left as a zombie that
        # keeps its cgroup populated); once we exit it passes to the nearest subreaper above us (the shim)
        self.sys.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        plan = launcher.plan_namespaces([(ns.type, ns.path) for ns in spec.linux.namespaces])
        new_uts = not sysctls.shares_host(spec.linux, "uts")
        in_userns = spec.linux.namespace("user") is not None
        if in_userns:
            plan.before_userns = lambda: _before_userns(self.sys, spec)
        hook_state = hooks.state_document(spec.oci_version, cdir.id, "creating", str(bundle), spec.annotations)
        ctx = InitContext(spec, setup, fifo_fd, console_sock, new_uts, preserve_fds, hook_state,
                          rootfs_premounted=in_userns)

        def runtime_hooks(init_pid: int) -> None:
            # prestart first, then createRuntime, both here in the runtime namespace (runc's order)
            state = {**hook_state, "pid": init_pid}
            hooks.run_hooks(spec.hooks, "prestart", state, cwd=str(bundle))
            hooks.run_hooks(spec.hooks, "createRuntime", state, cwd=str(bundle))

        # born in its cgroup (no migration) unless crispd's systemd driver hands the process over to a scope
        cgroup_fd = None if self.systemd_cgroup and held_pid_fd is not None else cg.open_for_new_process()
        try:
            launched = launcher.launch(self.sys, plan, lambda sock: container_init(self.sys, ctx, sock),
                                       add_to_cgroup,
                                       close_in_child=[lock_fd, *([held_pid_fd] if held_pid_fd else [])],
                                       run_hooks=runtime_hooks, cgroup_fd=cgroup_fd)
        finally:
            if cgroup_fd is not None:
                os.close(cgroup_fd)
        launched_pids.append(launched.pid)
        launched.sock.close()
        start = process_start_time(launched.pid)
        if start is None:
            raise errors.CrispError("the container's init died right after setup")
        cdir.write(State(
            id=cdir.id, bundle=str(bundle), rootfs=spec.root_path, pid=launched.pid, pid_start=start,
            created=now_rfc3339(), cgroup=cg.path, oci_version=spec.oci_version, annotations=dict(spec.annotations),
            linux={k: raw_linux[k] for k in ("seccomp", "namespaces") if k in raw_linux},
            hooks=raw.get("hooks") or {},
        ))
        if pid_file is not None:
            write_pid_file(pid_file, launched.pid)
        return launched.pid

    # ------------------------------------------------------------------ start, state (lifecycle.py: light)

    def start(self, container_id: str) -> None:
        lifecycle.start(self.root, container_id)

    def state(self, container_id: str) -> dict[str, object]:
        return lifecycle.state(self.root, container_id)

    # ------------------------------------------------------------------ kill

    def kill(self, container_id: str, sig: signal.Signals, all_processes: bool = False) -> None:
        cdir = self._dir(container_id)
        state = cdir.read()
        status = cdir.status(state)
        if all_processes:
            cg = cgroup.open_cgroup(state.cgroup) if state.cgroup else None
            pids = cg.procs() if cg is not None else []
            if status in (CREATED, RUNNING):
                pids = sorted({state.pid, *pids})
            if not pids:
                raise errors.FailedPrecondition(f"container {container_id} is not running")
            if sig == signal.SIGKILL and cg is not None:
                cg.kill()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            return
        if status not in (CREATED, RUNNING):
            raise errors.FailedPrecondition(f"container {container_id} is not running")
        pidfd = os.pidfd_open(state.pid)
        try:
            if process_start_time(state.pid) != state.pid_start:  # the pid was reused before we opened it
                raise errors.FailedPrecondition(f"container {container_id} is not running")
            signal.pidfd_send_signal(pidfd, sig)
        finally:
            os.close(pidfd)

    # ------------------------------------------------------------------ delete

    def delete(self, container_id: str, force: bool = False) -> None:
        cdir = self._dir(container_id)
        try:
            lock = cdir.locked()
            lock.__enter__()
        except errors.NotFound:
            if force:
                return
            raise
        try:
            try:
                state = cdir.read()
            except errors.NotFound:
                cdir.remove()  # a create that died before writing its state
                return
            status = cdir.status(state)
            if status == RUNNING and not force:
                raise errors.FailedPrecondition(
                    f"container {container_id} is running: stop it first, or delete --force")
            cg = cgroup.open_cgroup(state.cgroup) if state.cgroup else None
            if status in (CREATED, RUNNING):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(state.pid, signal.SIGKILL)
                if cg is not None:
                    cg.kill()
                if not _wait_gone(state.pid, state.pid_start, STOP_TIMEOUT):
                    raise errors.DeadlineExceeded(f"container {container_id}: init {state.pid} did not die")
            if cg is not None:
                cg.kill()
                if not self.systemd_cgroup:  # a scope goes when crispd stops its unit
                    cg.remove()
            cdir.remove()
        finally:
            lock.__exit__(None, None, None)
        log.info("container %s: deleted", container_id)
        spec_hooks = hooks.parse_hooks(state.hooks)
        if spec_hooks.get("poststop"):
            stopped = hooks.state_document(state.oci_version, state.id, "stopped", state.bundle, state.annotations)
            hooks.run_hooks_warn(spec_hooks, "poststop", stopped, f"container {container_id}")

    # ------------------------------------------------------------------ update

    def update(self, container_id: str, resources: Mapping[str, Any]) -> None:
        """Change the limits of a created or running container (an OCI `linux.resources` without devices, as
        `runc update --resources`); every limit given is required, as at create."""
        if "devices" in resources:
            raise errors.InvalidArgument("update: the device rules of a container cannot be changed")
        cdir = self._dir(container_id)
        with cdir.locked():
            state = cdir.read()
            status = cdir.status(state)
            if status not in (CREATED, RUNNING):
                raise errors.FailedPrecondition(f"container {container_id} is {status}: nothing to update")
            cg = cgroup.open_cgroup(state.cgroup) if state.cgroup else None
            if cg is None:
                raise errors.FailedPrecondition(f"container {container_id} has no cgroup")
            cg.apply(resources)
        log.info("container %s: resources updated", container_id)

    # ------------------------------------------------------------------ exec

    def exec(self, container_id: str, options: ExecOptions) -> int:
        """Run a process in the container; with detach return 0 once it is exec'd, else its exit status."""
        process = parse_process(read_json(str(options.process_file), f"--process {options.process_file}"),
                                "process.json")
        console_sock = console.connect_console_socket(options.console_socket) if options.console_socket else None
        prepared = self.prepare_exec(container_id, process, console_sock, options.preserve_fds)
        # the process is our child until we exit (then the shim's, the nearest subreaper above us): a failed one
        # is reaped here rather than left as a zombie in the container's cgroup
        self.sys.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        cg = prepared.cgroup
        try:
            launched = launcher.launch(self.sys, prepared.plan, prepared.child_main,
                                       cg.add_process if cg is not None else lambda pid: None,
                                       cgroup_fd=prepared.cgroup_fd, until_exec=True)
        except BaseException:
            _reap_children()
            raise
        finally:
            prepared.close()
        launched.sock.close()
        if options.pid_file is not None:
            write_pid_file(options.pid_file, launched.pid)
        if options.detach:
            return 0
        return _wait_and_forward(launched.pid)

    def prepare_exec(self, container_id: str, process: Process, console_sock: socket.socket | None = None,
                     preserve_fds: int = 0) -> PreparedExec:
        """Everything an exec needs before its fork, checked: the container runs, its namespaces (opened through
        its init's /proc entry), its cgroup, the process's setup (identity, capabilities, seccomp). Takes
        `console_sock` (closed with the result)."""
        try:
            return self._prepare_exec(container_id, process, console_sock, preserve_fds)
        except BaseException:
            if console_sock is not None:
                console_sock.close()
            raise

    def _prepare_exec(self, container_id: str, process: Process, console_sock: socket.socket | None,
                      preserve_fds: int) -> PreparedExec:
        _, state, status = self._load(container_id)
        if status != RUNNING:
            raise errors.FailedPrecondition(f"cannot exec in container {container_id}: it is {status}")
        seccomp = None
        if state.linux.get("seccomp") is not None:
            probe = parse_spec({"root": {"path": "/"}, "process": {"args": ["x"]},
                                "linux": {"seccomp": state.linux["seccomp"]}}, Path("/"))
            seccomp = probe.linux.seccomp
        setup = ProcessSetup(self.sys, process, seccomp)
        if process.terminal and console_sock is None:
            raise errors.InvalidArgument("process.terminal is set but no --console-socket was given")
        plan = self._exec_namespaces(state)
        cgroup_fd = None
        try:
            cg = cgroup.open_cgroup(state.cgroup) if state.cgroup else None
            cgroup_fd = cg.open_for_new_process() if cg is not None else None
        except BaseException:
            plan.close()
            raise
        ctx = ExecContext(process, setup, console_sock, preserve_fds)
        return PreparedExec(plan, cg, cgroup_fd, ctx, lambda sock: exec_process(self.sys, ctx, sock))

    def _exec_namespaces(self, state: State) -> launcher.NamespacePlan:
        """Every namespace the container's init is in (through its /proc entry, checked to still be it)."""
        types = [ns.get("type") for ns in state.linux.get("namespaces") or [] if isinstance(ns, dict)]
        pairs = []
        for ns_type in types:
            if ns_type in launcher.PROC_NS_NAMES:
                pairs.append((str(ns_type), f"/proc/{state.pid}/ns/{launcher.PROC_NS_NAMES[str(ns_type)]}"))
        plan = launcher.NamespacePlan()
        try:
            for ns_type in launcher.JOIN_ORDER:
                for t, path in pairs:
                    if t == ns_type:
                        plan.join.append((t, launcher.open_namespace(t, path)))
            if process_start_time(state.pid) != state.pid_start:
                raise errors.FailedPrecondition(f"container {state.id} stopped")
        except BaseException:
            plan.close()
            raise
        return plan


def _before_userns(sys: sc.Syscalls, spec: Spec) -> None:
    """Stage 1, before it joins the pod's user namespace: the mounts only the host's root may make, and the limits
    only it may raise (rlimits, a lower oom_score_adj), which the init inherits."""
    rootfs.before_userns(sys, spec)
    set_oom_score_adj(spec.process.oom_score_adj)
    apply_rlimits(spec.process)


def _kill_processes(cg: cgroup.ContainerCgroup, pids: list[int]) -> None:
    """Undo of a failed create: the init (if it got that far) and anything else in the container's cgroup; then
    reap what was our child (the init is, while create runs: we are its subreaper)."""
    for pid in {*pids, *cg.procs()}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _reap_children()


def _reap_children() -> None:
    """Wait for every child we have (all are dead or being killed when this is called)."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _wait_and_forward(pid: int) -> int:
    """Wait for an exec'd process we are the subreaper of; forward the usual signals; its status as ours."""
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                 signal.SIGWINCH)

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for sig in forwarded:
        signal.signal(sig, forward)
    while True:
        try:
            reaped, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 255
        if reaped == pid:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
