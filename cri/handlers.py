"""The CRI runtime handlers crispd serves (Kubernetes RuntimeClass): the built-in default "" and the configured
ones, each resolved to its executor (runtime/executor/handlers.py) and probed for what it really does."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import stat
from pathlib import Path

from cri.config import RuntimeConfig
from runtime import errors
from runtime.executor import handlers
from runtime.linux import idmap
from runtime.linux import syscalls as sc

log = logging.getLogger(__name__)


# handlers whose user namespaces are tested here: the built-in executor and runc (Debian's 1.1.5 joins the pod's
# user namespace by path; the shim stages the id-mapped mounts it cannot make). crun is not claimed.
USERNS_RUNTIMES = ("runc",)


def idmapped_dirs(state_dir: Path, root_dir: Path | None) -> list[Path]:
    """Where user-namespaced pods need id-mapped mounts to work: the state dir's parent (its filesystem, where critest
    looks too) and, with a root dir, the image snapshots (the rootfs layers)."""
    dirs = [state_dir.parent]
    if root_dir is not None:
        dirs.append(root_dir / "images" / "snapshots")
    return dirs


class RuntimeHandlers:
    def __init__(self, config: RuntimeConfig, state_dir: Path, root_dir: Path | None = None) -> None:
        self._config = config
        self._state_dir = state_dir
        self._root_dir = root_dir
        self._idmap: str | None = None  # "" when id-mapped mounts work for crisp's dirs, else why not

    def names(self) -> list[str]:
        """The built-in default "" first, then the configured ones."""
        return ["", *sorted(self._config.handlers)]

    def resolve(self, name: str) -> handlers.Handler:
        """The executor of a CRI runtime_handler (RunPodSandbox, CreateContainer); unknown -> INVALID_ARGUMENT."""
        return handlers.resolve_handler(name, self._config.handlers, self._state_dir)

    async def features(self, name: str) -> handlers.HandlerFeatures:
        """What a handler's executor really does (its `--version`, cached per binary, in a worker thread)."""
        return await asyncio.to_thread(self.features_blocking, name)

    def features_blocking(self, name: str) -> handlers.HandlerFeatures:
        """`features`, for code already in a worker thread."""
        return self._features(self.resolve(name))

    def _features(self, handler: handlers.Handler) -> handlers.HandlerFeatures:
        features = handlers.handler_features(handler)
        if handler.kind == handlers.BUILTIN:
            features = dataclasses.replace(features, user_namespaces=self.idmap_problem() == "")
        elif handler.kind == "oci" and self._runtime_name(handler) in USERNS_RUNTIMES:
            features = dataclasses.replace(features, user_namespaces=self.idmap_problem() == ""
                                           and self.unreachable_state() == "")
        return features

    def unreachable_state(self) -> str:
        """runc prepares the rootfs, and binds the pod's files, as the container's root, a host uid that must
        be able to walk to them: the directory of the state dir that others cannot search, "" when none."""
        path = self._state_dir.absolute()
        for directory in (path, *path.parents):
            try:
                if not directory.stat().st_mode & stat.S_IXOTH:
                    return str(directory)
            except OSError:
                continue  # not made yet (crispd makes the state dir searchable)
        return ""

    @staticmethod
    def _runtime_name(handler: handlers.Handler) -> str:
        version = handlers.oci_runtime_version(handler.argv[0])
        return version[0] if version is not None else ""

    def idmap_problem(self) -> str:
        """Why user-namespaced pods cannot work on this host ("" when they can): the image snapshots (the rootfs
        layers) and the state dir's parent (where critest looks) must be id-mappable. Probed once; blocking."""
        if self._idmap is None:
            if not sc.has_mount_setattr():
                self._idmap = "the kernel has no mount_setattr (Linux 5.12+)"
            else:
                paths = idmapped_dirs(self._state_dir, self._root_dir)
                for path in paths[1:]:
                    path.mkdir(parents=True, exist_ok=True)
                problems = [p for p in idmap.probe([str(p) for p in paths]).values() if p]
                self._idmap = "; ".join(problems)
                if self._idmap:
                    log.warning("user namespaces are not available: %s", self._idmap)
        return self._idmap

    async def probe(self) -> list[tuple[str, handlers.HandlerFeatures]]:
        """Every handler's features; one that cannot be resolved is logged and reported with none."""
        return await asyncio.to_thread(self._probe)

    def _probe(self) -> list[tuple[str, handlers.HandlerFeatures]]:
        out = []
        for name in self.names():
            try:
                features = self._features(self.resolve(name))
            except errors.CrispError as exc:
                log.warning("runtime handler %r: %s", name, exc)
                features = handlers.HandlerFeatures()
            out.append((name, features))
        return out
