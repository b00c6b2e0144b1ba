"""Start a program (the test's kubelet) in a mount namespace of its own in which it can change nothing the host
shares with other tests: `python -m tests.kubelet.hostguard --facades DIR [--keep PATH ...] -- <argv...>`.

- Every mount other than /, /proc, /sys and /dev (and what is below those) and the mounts that hold a `--keep` path
  is detached there, so the kubelet holds no copy of a mount that another test, or crispd, makes and later removes
  (a copied netns pin would keep that netns, and its veth, alive for as long as the kubelet lives).
- /proc/sys is read-only there. The kernel settings the kubelet's container manager insists on (vm.overcommit_memory,
  kernel.panic, kernel.panic_on_oops, ...: it writes them unless `protectKernelDefaults` makes it refuse to start)
  are files in the facade dir, bind-mounted over their /proc/sys entries, holding the host's values: the kubelet
  writes its values there, and any other sysctl write it attempted would fail loudly.

Mounts made there die with the namespace when the kubelet exits, also on SIGKILL.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from runtime.linux import syscalls

# the sysctls the kubelet's container manager sets at start (k8s.io/component-helpers node/util/sysctl)
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
KEEP = ("/proc", "/sys", "/dev")


def _under(path: str, top: str) -> bool:
    return top == "/" or path == top or path.startswith(top + "/")


def _kept(target: str, needed: list[str]) -> bool:
    return target == "/" or any(_under(target, k) for k in KEEP) or any(_under(n, target) for n in needed)


def _mount_targets() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4].replace("\\040", " ") for line in f]


def detach_foreign_mounts(needed: list[str]) -> None:
    # parents before children: detaching a parent takes its children along
    for target in sorted(set(_mount_targets()), key=len):
        if not _kept(target, needed) and target in _mount_targets():
            try:
                syscalls.umount2(target, syscalls.MNT_DETACH)
            except OSError as e:
                # another test removed the dir it was mounted on meanwhile, which detached our copy too
                if e.errno not in (errno.EINVAL, errno.ENOENT) or target in _mount_targets():
                    raise


def guard_sysctls(facades: Path, writable: tuple[str, ...] = ()) -> None:
    """/proc/sys read-only but for the `writable` subtrees (e.g. "net": the sysctls of the caller's own network
    namespace) and the facades of KUBELET_SYSCTLS."""
    syscalls.mount("/proc/sys", "/proc/sys", None, syscalls.MS_BIND | syscalls.MS_REC)
    syscalls.mount(None, "/proc/sys", None, syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY)
    for subtree in writable:
        path = f"/proc/sys/{subtree}"
        syscalls.mount(path, path, None, syscalls.MS_BIND)  # a copy of the read-only mount...
        syscalls.mount(None, path, None, syscalls.MS_REMOUNT | syscalls.MS_BIND)  # ...made writable
    for name in KUBELET_SYSCTLS:
        facade = facades / name.replace("/", ".")
        facade.write_text(Path("/proc/sys", name).read_text())
        syscalls.mount(str(facade), f"/proc/sys/{name}", None, syscalls.MS_BIND)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.kubelet.hostguard")
    parser.add_argument("--facades", type=Path, required=True, help="where the sysctl facade files go")
    parser.add_argument("--keep", action="append", default=[], help="a path the program needs (its mounts stay)")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    args.facades.mkdir(parents=True, exist_ok=True)
    syscalls.unshare(syscalls.CLONE_NEWNS)
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    detach_foreign_mounts([os.path.realpath(k) for k in [*args.keep, args.facades]])
    guard_sysctls(args.facades)
    os.execv(args.command[0], args.command)


if __name__ == "__main__":
    main(sys.argv[1:])
