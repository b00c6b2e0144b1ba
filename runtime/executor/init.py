"""What the forked container process does, inside its namespaces, up to execve.

`container_init` is a container's first process (`create`): it builds the filesystem, says Ready, waits on the
exec fifo until `start`, then execs. `exec_process` is a process `exec` adds to a running container: it is
already in every namespace of the container (mount included), so it only takes on the process identity.
Each runs in a forked child; errors travel back over the handshake socket (see launcher.py).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime import errors
from runtime.executor import console, hooks, procfs, protocol, sysctls
from runtime.executor.oci import Process, Spec
from runtime.executor.process import ProcessSetup, apply_rlimits, set_oom_score_adj
from runtime.executor.rootfs import Rootfs
from runtime.executor.state import FIFO_FAILED, FIFO_OK
from runtime.linux import syscalls as sc


@dataclass
class InitContext:
    spec: Spec
    setup: ProcessSetup
    fifo_fd: int
    console_sock: socket.socket | None
    new_uts: bool
    preserve_fds: int = 0
    # the hooks' state document without status and pid (id, bundle, annotations, ociVersion)
    hook_state: Mapping[str, Any] = field(default_factory=dict)
    rootfs_premounted: bool = False  # rootfs.before_userns mounted the overlay and bound the root


def container_init(sys: sc.Syscalls, ctx: InitContext, sock: socket.socket) -> None:
    spec = ctx.spec
    os.setsid()
    os.umask(0)
    set_oom_score_adj(spec.process.oom_score_adj)
    rootfs = Rootfs(sys, spec, premounted=ctx.rootfs_premounted)
    if spec.linux.namespace("user") is not None:
        # the container's mounts must be made as the user namespace's root: a filesystem it owns (/dev's tmpfs,
        # devpts, mqueue) refuses files of ids it does not map
        rootfs.hold_host_paths()
        sys.setresgid(0, 0, 0)
        sys.setresuid(0, 0, 0)
    rootfs.prepare()
    if spec.hooks.get("prestart") or spec.hooks.get("createRuntime"):
        protocol.send(sock, protocol.RunHooks())
        if not isinstance(protocol.receive(sock), protocol.HooksDone):
            os._exit(1)  # the executor went away (or a hook failed there and it is killing us)
    if spec.hooks.get("createContainer"):
        state = {**ctx.hook_state, "status": "creating", "pid": os.getpid()}
        hooks.run_hooks(spec.hooks, "createContainer", state, cwd=spec.root_path)
    rootfs.pivot()
    sysctls.apply_sysctls(sys, spec.linux.sysctl, rootfs.proc_fd)
    if spec.process.terminal:
        if ctx.console_sock is None:
            raise errors.InvalidArgument("process.terminal is set but no --console-socket was given")
        console.setup_console(sys, ctx.console_sock, mount_console=True, size=spec.process.console_size)
    rootfs.finish()
    if spec.hostname:
        if not ctx.new_uts:
            raise errors.InvalidArgument("cannot set the hostname without a UTS namespace of its own")
        sys.sethostname(spec.hostname)
    if spec.domainname:
        if not ctx.new_uts:
            raise errors.InvalidArgument("cannot set the domainname without a UTS namespace of its own")
        sys.setdomainname(spec.domainname)
    apply_rlimits(spec.process)
    # made while we may still mount; shows our own process dirs only, and closes at exec
    own_proc = procfs.open_private(sys, pid_only=True)
    ctx.setup.apply_identity()
    ctx.setup.chdir()
    path = ctx.setup.executable()
    ProcessSetup.close_fds(ctx.preserve_fds)
    protocol.send(sock, protocol.Ready())
    # blocks until `start` opens the fifo for reading
    fifo = procfs.reopen_own_fd(own_proc, ctx.fifo_fd, os.O_WRONLY)
    try:
        state = {**ctx.hook_state, "status": "created", "pid": os.getpid()}
        hooks.run_hooks(spec.hooks, "startContainer", state, default_env=ctx.setup.env)
    except hooks.HookError as exc:
        os.write(fifo, FIFO_FAILED + str(exc).encode()[:4000])
        os.write(2, f"crisp-executor: {exc}\n".encode())
        os._exit(1)
    os.write(fifo, FIFO_OK)
    os.close(fifo)
    os.close(ctx.fifo_fd)
    os.close(own_proc)
    try:
        ctx.setup.exec(path)
    except errors.CrispError as exc:
        # `create` has long returned: like runc, say it on the container's stderr
        os.write(2, f"crisp-executor: {exc}\n".encode())
        os._exit(127)


@dataclass
class ExecContext:
    process: Process
    setup: ProcessSetup
    console_sock: socket.socket | None
    preserve_fds: int = 0


def exec_process(sys: sc.Syscalls, ctx: ExecContext, sock: socket.socket) -> None:
    os.setsid()
    set_oom_score_adj(ctx.process.oom_score_adj)
    if ctx.process.terminal:
        if ctx.console_sock is None:
            raise errors.InvalidArgument("process.terminal is set but no --console-socket was given")
        console.setup_console(sys, ctx.console_sock, mount_console=False, size=ctx.process.console_size)
    apply_rlimits(ctx.process)
    ctx.setup.apply_identity()
    ctx.setup.chdir()
    path = ctx.setup.executable()
    ProcessSetup.close_fds(ctx.preserve_fds)
    protocol.send(sock, protocol.Ready())
    ctx.setup.exec(path)  # the handshake socket is close-on-exec: the executor sees end-of-file
