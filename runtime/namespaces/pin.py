"""Pod namespaces held open by bind mounts, without a pause process (as CRI-O's pinns does).

`pin_namespaces` has a process forked from the warm zygote (a `Forker`: runtime/namespaces/forked.py) make the
new namespaces, set them up (`nsinit.set_up`: hostname, lo up, sysctls) and bind-mount each one onto a file under
the pod's dir; no program starts. A pod with its own user namespace still takes the older path of short-lived
helpers (util-linux `unshare`, `nsinit.py` run as a program, `usernsexec`): crispd must pin its namespaces and
write its id maps between the unshare and the setup, which a forked worker could do only with another round trip
through the zygote. `unpin_namespaces` unmounts the pins, and the namespaces die with their last user.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from runtime import errors
from runtime.command import run_command
from runtime.linux import idmap
from runtime.mounts import bind_mount, unmount
from runtime.namespaces import nsinit
from runtime.namespaces.sysctl import sysctl_path

log = logging.getLogger(__name__)

KINDS = ("net", "ipc", "uts", "user")
PIN_TIMEOUT = 30.0


class Forker(Protocol):
    """The warm process that forks a pod's namespace work (the shim zygote: cri/shims/manager.ShimManager)."""

    async def fork_work(self, work: str, request: dict[str, Any], time_limit: float, what: str) -> dict[str, Any]:
        """The answer of `forked.<work>(request)` run in a forked process; raises the error it names, and
        DeadlineExceeded after `time_limit`."""
        ...


@dataclass(frozen=True)
class NamespaceSetup:
    """What to create for a pod and what to set inside it."""

    kinds: frozenset[str]  # a subset of KINDS
    hostname: str = ""  # set only when the pod has its own UTS namespace
    sysctls: tuple[tuple[str, str], ...] = ()
    # with "user": its uid and gid mappings (container id, host id, length); the others are made owned by it
    uid_mappings: tuple[tuple[int, int, int], ...] = ()
    gid_mappings: tuple[tuple[int, int, int], ...] = ()


def pin_paths(pin_dir: Path, kinds: Iterable[str]) -> dict[str, Path]:
    return {kind: pin_dir / kind for kind in kinds}


async def pin_namespaces(pin_dir: Path, setup: NamespaceSetup, forker: Forker) -> dict[str, Path]:
    """Create and pin the namespaces; on failure nothing stays mounted. Returns kind -> pin path."""
    unknown = set(setup.kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"cannot pin namespaces {sorted(unknown)}")
    if not setup.kinds:
        return {}
    paths = pin_paths(pin_dir, sorted(setup.kinds))
    await asyncio.to_thread(_prepare, pin_dir, list(paths.values()))
    request = {
        "hostname": setup.hostname if "uts" in setup.kinds else "",
        "loopback": "net" in setup.kinds,
        "sysctls": [(sysctl_path(key), value) for key, value in setup.sysctls],
    }
    helper = [sys.executable, "-I", "-S", nsinit.__file__]
    try:
        if "user" in setup.kinds:
            # unshare cannot pin namespaces it makes with a user namespace (its pinning child gets EPERM), and
            # what it execs has no capabilities there (it is nobody until the maps exist): the first helper only
            # holds the new namespaces while crispd pins and maps them, the second sets them up as their root
            argv = ["unshare", *(f"--{kind}" for kind in paths), "--", *helper, json.dumps({"await_maps": True})]
            await asyncio.to_thread(_run_mapping_helper, argv, setup, paths)
            await _run_helper([*usernsexec_argv(paths["user"]), "nsenter",
                               *(f"--{kind}={path}" for kind, path in paths.items() if kind != "user"), "--",
                               *helper, json.dumps(request)])
        else:
            # the worker's alarm ends it at PIN_TIMEOUT; crispd waits a little longer, so nothing lands after it
            await forker.fork_work("pin_namespaces", {**request, "pins": {k: str(p) for k, p in paths.items()},
                                                      "timeout": PIN_TIMEOUT},
                                   PIN_TIMEOUT + 5, "pod namespace setup")
    except BaseException:
        await unpin_namespaces(paths.values())
        raise
    return paths


def usernsexec_argv(userns: Path | str) -> list[str]:
    """The command prefix that runs a program in a pod's user namespace with its capabilities (usernsexec.py)."""
    return [sys.executable, "-I", "-m", "runtime.namespaces.usernsexec", str(userns), "--"]


def _prepare(pin_dir: Path, files: list[Path]) -> None:
    pin_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in files:
        path.touch(mode=0o400)


async def _run_helper(argv: list[str]) -> None:
    result = await run_command(argv, kill_after=PIN_TIMEOUT, what="pod namespace setup")
    if result.returncode != 0:
        raise _helper_error(result.stderr.decode(errors="replace").strip(), result.returncode)


def _run_mapping_helper(argv: list[str], setup: NamespaceSetup, paths: dict[str, Path]) -> None:
    """The helper with a new user namespace: once it says it is in its namespaces, pin them, write the user
    namespace's id maps (the helper's pid is unshare's: unshare execs it), then let it go on. Blocking: runs in a
    worker thread."""
    helper = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert helper.stdin is not None and helper.stdout is not None
        ready = helper.stdout.readline()
        if ready.strip() == b"ready":
            for kind, path in paths.items():
                pinned = subprocess.run(["mount", "--bind", f"/proc/{helper.pid}/ns/{kind}", str(path)],
                                        capture_output=True, text=True, timeout=PIN_TIMEOUT)
                if pinned.returncode != 0:
                    raise errors.CrispError(f"pinning the pod's {kind} namespace: {pinned.stderr.strip()}")
            try:
                idmap.write_maps(helper.pid, setup.uid_mappings, setup.gid_mappings)
            except OSError as exc:
                raise errors.InvalidArgument(f"pod user namespace: the kernel refused its id maps: "
                                             f"{exc.strerror}") from None
            helper.stdin.write(b"go\n")
            helper.stdin.flush()
        _, stderr = helper.communicate(timeout=PIN_TIMEOUT)
    except BaseException:
        helper.kill()
        helper.wait()
        raise
    if helper.returncode != 0:
        raise _helper_error(stderr.decode(errors="replace").strip(), helper.returncode)


def _helper_error(stderr: str, code: int) -> Exception:
    last = stderr.splitlines()[-1] if stderr else ""
    try:
        report = json.loads(last)
        return errors.from_kind(report["kind"], f"pod namespace setup: {report['message']}")
    except (ValueError, KeyError, TypeError):
        return errors.CrispError(f"pod namespace setup failed (exit status {code}): {stderr or 'no message'}")


async def publish_netns(pin: Path, target: Path) -> Path:
    """Bind the pinned network namespace `pin` on `target` too (/run/netns/crisp-<pod id>: `ip netns exec` then
    works); undone by `unpin_namespaces([target])`. AlreadyExists when something is there."""
    def prepare() -> None:
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            target.touch(mode=0o444, exist_ok=False)
        except FileExistsError:
            raise errors.AlreadyExists(f"{target} already exists") from None

    await asyncio.to_thread(prepare)
    try:
        await bind_mount(pin, target)
    except BaseException:
        await unpin_namespaces([target])
        raise
    return target


async def unpin_namespaces(paths: Iterable[Path]) -> None:
    """Unmount every pin and remove its file; missing ones are fine (idempotent)."""
    for path in paths:
        await unmount(path)
        await asyncio.to_thread(path.unlink, missing_ok=True)
