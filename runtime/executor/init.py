"""What the forked container process does, inside its namespaces, up to execve.

`container_init` is a container's first process (`create`): it builds the filesystem, says Ready, waits on the
exec fifo until `start`, then execs. `exec_process` is a process `exec` adds to a running container: it is
already in every namespace of the container (mount included), so it only takes on the process identity.
Each runs in a forked child; errors travel back over the handshake socket (see launcher.py).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from runtime import errors
from runtime.executor import console, protocol, sysctls
from runtime.executor.oci import Process, Spec
from runtime.executor.process import ProcessSetup, apply_rlimits, set_oom_score_adj
from runtime.executor.rootfs import Rootfs
from runtime.linux import syscalls as sc


@dataclass
class InitContext:
    spec: Spec
    setup: ProcessSetup
    fifo_fd: int
    console_sock: socket.socket | None
    new_uts: bool
    preserve_fds: int = 0
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
    rootfs.pivot()
    sysctls.apply_sysctls(spec.linux.sysctl)
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
    ctx.setup.apply_identity()
    ctx.setup.chdir()
    path = ctx.setup.executable()
    ProcessSetup.close_fds(ctx.preserve_fds)
    protocol.send(sock, protocol.Ready())
    # blocks until `start` opens the fifo for reading
    fifo = os.open(f"/proc/self/fd/{ctx.fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
    os.write(fifo, b"0")
    os.close(fifo)
    os.close(ctx.fifo_fd)
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
