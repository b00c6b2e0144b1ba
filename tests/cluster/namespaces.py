"""The cluster tier's node: a mount, network and UTS namespace of its own, in which crispd, the kubelet, etcd and the
control plane run, so that their fixed paths and ports collide with nothing on the host.

A small holder process makes both (`python -m tests.cluster.namespaces ...`) and lives until its stdin closes:
- mount namespace: private; every mount the host had other than /, /proc, /sys, /dev and the mounts holding a
  `--keep` path is detached (tests/kubelet/hostguard.py: the node holds no copy of another test's mounts); a tmpfs
  over each `--tmpfs` path (the dirs kubeadm writes at fixed paths); /proc/sys read-only but for the node's own
  /proc/sys/net (crispd's bridge needs ip_forward) and the facades of the sysctls the kubelet sets.
- network namespace: loopback and a veth pair whose first end carries the node's address (the advertise address:
  a control plane's endpoints may not be loopback) and the default route.
- UTS namespace: the node's name as hostname, which resolves to its address (an /etc/hosts of its own).

`Node.enter()` is the nsenter prefix that starts a program inside; `Node.network()` puts the calling thread there for
a moment (a socket made then stays there); `Node.path()` reads a file as the node sees it. `Node.stop()` kills whatever
process is left in the namespaces and ends the holder: with the last process gone, both namespaces go, with every
mount, veth, bridge and nft table made in them. The holder does the same when its stdin closes without that (the
test process died), and kills and removes the node's containers' cgroups too.

A missing mount point (/etc/kubernetes...) is made on the host as an empty dir (as kubeadm's packages would), and
stays: removing a dir that another run's node has a mount on would detach that mount.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from runtime.linux import syscalls
from tests.kubelet.hostguard import detach_foreign_mounts, guard_sysctls
from tests.leaks import cgroups_under, kill_cgroup_tree, remove_cgroup_tree

# an address of TEST-NET-1 (RFC 5737): routed nowhere, so no host network and no pod subnet (10.128.0.0/9) meets it
NODE_ADDRESS = "192.0.2.10"
NODE_PREFIX = 24
NODE_LINK = "node0"
READY = b"node ready\n"


# --------------------------------------------------------------------------------------------------- the holder


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _setup_network(address: str) -> None:
    _ip("link", "set", "lo", "up")
    _ip("link", "add", NODE_LINK, "type", "veth", "peer", "name", f"{NODE_LINK}-peer")
    _ip("addr", "add", address, "dev", NODE_LINK)
    _ip("link", "set", f"{NODE_LINK}-peer", "up")
    _ip("link", "set", NODE_LINK, "up")
    _ip("route", "add", "default", "dev", NODE_LINK)


def _hold(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.namespaces")
    parser.add_argument("--address", required=True, help="the node's address/prefix")
    parser.add_argument("--hostname", required=True, help="the node's name")
    parser.add_argument("--facades", type=Path, required=True, help="where the kubelet's sysctl facades go")
    parser.add_argument("--keep", action="append", default=[], help="a path the node's programs need")
    parser.add_argument("--tmpfs", action="append", default=[], help="a dir the node gets an empty tmpfs on")
    parser.add_argument("--cgroup", action="append", default=[],
                        help="a cgroup (v2 path) whose processes die with the node, and which is then removed")
    args = parser.parse_args(argv)
    args.facades.mkdir(parents=True, exist_ok=True)
    syscalls.unshare(syscalls.CLONE_NEWNS | syscalls.CLONE_NEWNET | syscalls.CLONE_NEWUTS)
    syscalls.sethostname(args.hostname)
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    detach_foreign_mounts([os.path.realpath(k) for k in [*args.keep, args.facades]])
    hosts = args.facades.parent / "hosts"  # the node's name resolves to its address without a DNS server
    hosts.write_text(f"127.0.0.1 localhost\n::1 localhost\n{args.address.split('/')[0]} {args.hostname}\n")
    syscalls.mount(str(hosts), "/etc/hosts", None, syscalls.MS_BIND)
    for path in args.tmpfs:
        os.makedirs(path, exist_ok=True)
        syscalls.mount("tmpfs", path, "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=0755")
    guard_sysctls(args.facades, writable=("net",))
    _setup_network(args.address)
    sys.stdout.buffer.write(READY)
    sys.stdout.flush()
    sys.stdin.buffer.read()  # until the test closes it, or dies: then nothing may outlive the node
    for pid in processes_in(namespace_ids(os.getpid())):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for cgroup in args.cgroup:  # the containers, which run in namespaces of their own
        kill_cgroup_tree(cgroup)
        deadline = time.monotonic() + 10
        while cgroups_under(cgroup) and time.monotonic() < deadline:
            remove_cgroup_tree(cgroup)
            time.sleep(0.1)
        remove_cgroup_tree(cgroup)


def namespace_ids(pid: int | str) -> set[tuple[int, int]]:
    """(dev, inode) of the network and mount namespaces of a process."""
    return {(found.st_dev, found.st_ino) for found in (os.stat(f"/proc/{pid}/ns/{kind}") for kind in ("net", "mnt"))}


def processes_in(ids: set[tuple[int, int]]) -> list[int]:
    """Every process (but the caller) in any of these namespaces."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if namespace_ids(entry) & ids:
                found.append(int(entry))
    return found


# --------------------------------------------------------------------------------------------------- the test's side


class Node:
    """The holder and the namespaces it made (see the module's doc)."""

    def __init__(self, base: Path, name: str, keep: list[Path], tmpfs: list[str], cgroups: list[str],
                 address: str = NODE_ADDRESS) -> None:
        """`cgroups`: where the node's containers run (crispd's cgroup base), for the holder's last resort."""
        self.base = base
        self.name = name
        self.address = address
        self.keep = keep
        self.tmpfs = tmpfs
        self.cgroups = cgroups
        self.proc: subprocess.Popen[bytes] | None = None
        self._netns: int | None = None  # an fd of the node's network namespace (Node.network)
        self._ids: set[tuple[int, int]] = set()  # its namespaces (Node.processes)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the node is not started"
        return self.proc.pid

    def start(self, timeout: float = 30) -> Node:
        self.base.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "tests.cluster.namespaces", "--address", f"{self.address}/{NODE_PREFIX}",
                   "--hostname", self.name, "--facades", str(self.base / "sysctl")]
        command += [arg for path in self.keep for arg in ("--keep", str(path))]
        command += [arg for path in self.tmpfs for arg in ("--tmpfs", path)]
        command += [arg for path in self.cgroups for arg in ("--cgroup", path)]
        with open(self.base / "holder.log", "ab") as log:
            self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         close_fds=True, start_new_session=True,
                                         cwd=Path(__file__).resolve().parents[2])
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        deadline, seen = time.monotonic() + timeout, b""
        while seen != READY:
            seen += self.proc.stdout.read() or b""
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node's namespaces were not made: {seen!r}\n"
                                   f"{(self.base / 'holder.log').read_text(errors='replace')[-3000:]}")
            time.sleep(0.02)
        self._netns = os.open(f"/proc/{self.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._ids = namespace_ids(self.pid)
        return self

    def enter(self) -> list[str]:
        """The prefix of a command that runs inside the node (in its root dir; give absolute paths)."""
        return ["nsenter", f"--target={self.pid}", "--mount", "--net", "--uts", "--wd=/"]

    def run(self, argv: list[str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.enter(), *argv], capture_output=True, text=True, timeout=timeout, check=check)

    def path(self, path: str) -> Path:
        """A path as the node sees it, readable from the host (through the holder's root)."""
        return Path(f"/proc/{self.pid}/root") / path.lstrip("/")

    @contextlib.contextmanager
    def network(self) -> Iterator[None]:
        """The calling thread in the node's network namespace for the block: sockets it makes (and processes it
        starts) belong there, and stay there after it."""
        assert self._netns is not None, "the node is not started"
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.setns(self._netns, syscalls.CLONE_NEWNET)
            try:
                yield
            finally:
                syscalls.setns(own, syscalls.CLONE_NEWNET)
        finally:
            os.close(own)

    def processes(self) -> list[int]:
        """Every process in the node's mount or network namespace, the holder excepted."""
        return [pid for pid in processes_in(self._ids) if self.proc is None or pid != self.proc.pid]

    def stop(self, timeout: float = 10) -> list[str]:
        """End the holder and kill what is left in the namespaces; returns the command lines it had to kill (none
        after a clean teardown)."""
        killed = []
        if self.proc is not None:
            for pid in self.processes():
                with contextlib.suppress(OSError):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    os.kill(pid, signal.SIGKILL)
                    killed.append(f"{pid}: {cmdline.strip()}")
            stdin: IO[bytes] | None = self.proc.stdin
            if stdin is not None:
                stdin.close()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        if self._netns is not None:
            os.close(self._netns)
            self._netns = None
        return killed


if __name__ == "__main__":
    _hold(sys.argv[1:])
