"""The rootfs overlay an OCI runtime (runc, crun) expects mounted: mounted on root.path in the host's mount
namespace before `create`, unmounted after `delete` (the built-in executor mounts it itself, inside the container).
What to mount is the bundle contract's (runtime.bundle); the mount and umount commands run without blocking."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from runtime.bundle import idmap_of, overlay_of, rootfs_path
from shim.executor import STEP_TIMEOUT
from shim.log import log
from shim.loop import Loop
from shim.spawn import CommandResult, run_command


def _idmap_command(action: str, bundle: str) -> list[str]:
    """runtime/linux/idmap.py as a program: stage or unstage a bundle's id-mapped mounts (user namespaces)."""
    return [sys.executable, "-I", "-m", "runtime.linux.idmap", action, bundle]


def mount_rootfs(loop: Loop, bundle: str, spec: dict[str, Any], done: Callable[[str, str], None]) -> bool:
    """Mount the spec's overlay annotation on its root.path; False (nothing done) when it has none. Then
    `done(target, "")`, or `done(target, why)` when the mount failed. With an idmap annotation (a pod's user
    namespace) its id-mapped mounts are staged first, the overlay's layers among them, and unstaged again when
    the overlay fails. Bad annotations raise InvalidArgument."""
    overlay = overlay_of(spec.get("annotations"))
    if overlay is None:
        return False
    staged = idmap_of(spec.get("annotations")) is not None
    target = rootfs_path(bundle, spec)
    os.makedirs(target, exist_ok=True)
    options, cwd = overlay.mount_data()
    argv = ["mount", "-t", "overlay", "overlay", "-o", options, target]
    if cwd:
        # the layers are named relative to their common parent: the mount runs there
        argv = ["/bin/sh", "-c", 'cd "$0" && exec "$@"', cwd, *argv]

    def mounted(result: CommandResult) -> None:
        if result.ok:
            done(target, "")
            return
        why = f"mounting the rootfs overlay on {target} failed ({result.describe()})"
        if staged:
            run_command(loop, _idmap_command("unstage", bundle), lambda _: done(target, why), timeout=STEP_TIMEOUT)
        else:
            done(target, why)

    def staged_them(result: CommandResult) -> None:
        if not result.ok:
            done(target, f"staging the id-mapped mounts failed ({result.describe()})")
            return
        run_command(loop, argv, mounted, timeout=STEP_TIMEOUT)

    if staged:
        run_command(loop, _idmap_command("stage", bundle), staged_them, timeout=STEP_TIMEOUT)
    else:
        run_command(loop, argv, mounted, timeout=STEP_TIMEOUT)
    return True


def unmount_rootfs(loop: Loop, target: str, done: Callable[[], None], bundle: str = "",
                   spec: dict[str, Any] | None = None) -> None:
    """Unmount it (lazily when it is busy), then the staged id-mapped mounts if the spec has some; `done()`
    either way, after logging what failed."""
    if bundle and spec is not None and idmap_of(spec.get("annotations")) is not None:
        inner = done

        def unstaged(result: CommandResult) -> None:
            if not result.ok:
                log(f"unstaging the id-mapped mounts of {bundle} failed ({result.describe()})")
            inner()

        def done() -> None:
            run_command(loop, _idmap_command("unstage", bundle), unstaged, timeout=STEP_TIMEOUT)

    def unmounted(result: CommandResult) -> None:
        if result.ok:
            done()
            return
        log(f"umount {target} failed ({result.describe()}); detaching it lazily")

        def lazy(result: CommandResult) -> None:
            if not result.ok:
                log(f"umount -l {target} failed too ({result.describe()})")
            done()
        run_command(loop, ["umount", "-l", target], lazy, timeout=STEP_TIMEOUT)

    run_command(loop, ["umount", target], unmounted, timeout=STEP_TIMEOUT)
