"""CRI runtime handlers (Kubernetes RuntimeClass): a handler name -> the executor program and its --root.

The default handler "" is always the built-in executor (`crisp-executor`); configured handlers are either the
built-in one under another name or an OCI runtime binary (runc, crun) given the same bundle and command line.
Takes plain values (anything shaped like cri.config.HandlerConfig), so runtime/ never imports cri/.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from runtime import errors
from runtime.linux import syscalls as sc

log = logging.getLogger(__name__)

BUILTIN = "builtin"
VERSION_TIMEOUT = 5.0
# the first releases whose mounts honour "rro" (recursive read-only through mount_setattr)
RRO_MIN_VERSIONS = {"runc": (1, 1), "crun": (1, 8)}


class HandlerSettings(Protocol):
    @property
    def type(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def root(self) -> str: ...


@dataclass(frozen=True)
class Handler:
    name: str
    kind: str  # "builtin" or "oci"
    argv: tuple[str, ...]  # the program (and fixed arguments) before the global options
    root: Path  # its --root

    def command(self, *args: str) -> list[str]:
        return [*self.argv, "--root", str(self.root), *args]


@dataclass(frozen=True)
class HandlerFeatures:
    recursive_read_only_mounts: bool = False
    user_namespaces: bool = False


def builtin_argv() -> tuple[str, ...]:
    """The installed `crisp-executor` next to this interpreter, else the module run by this interpreter
    (isolated: never a checkout that happens to be the working directory)."""
    script = Path(sys.executable).parent / "crisp-executor"
    if script.exists():
        return (str(script),)
    return (sys.executable, "-I", "-m", "runtime.executor")


def handler_root(state_dir: Path, name: str, configured: str = "") -> Path:
    return Path(configured) if configured else state_dir / "runtimes" / (name or BUILTIN)


def resolve_handler(name: str, handlers: Mapping[str, HandlerSettings], state_dir: Path) -> Handler:
    """The handler for a CRI runtime_handler; an unknown name is InvalidArgument (RunPodSandbox calls this)."""
    if name == "":
        return Handler("", BUILTIN, builtin_argv(), handler_root(state_dir, ""))
    settings = handlers.get(name)
    if settings is None:
        known = ", ".join(repr(n) for n in ["", *sorted(handlers)])
        raise errors.InvalidArgument(f"unknown runtime handler {name!r} (configured: {known})")
    root = handler_root(state_dir, name, settings.root)
    if settings.type == BUILTIN:
        return Handler(name, BUILTIN, builtin_argv(), root)
    program = settings.path if "/" in settings.path else shutil.which(settings.path)
    if not program or not Path(program).exists():
        raise errors.FailedPrecondition(f"runtime handler {name!r}: {settings.path!r} is not installed")
    return Handler(name, "oci", (program,), root)


def parse_version(text: str) -> tuple[str, tuple[int, ...]] | None:
    """`runc version 1.1.5+ds1` / `crun version 1.8.1` -> ("runc", (1, 1, 5))."""
    match = re.search(r"^(\S+) version (\d+(?:\.\d+)*)", text, re.M)
    if match is None:
        return None
    return match.group(1), tuple(int(p) for p in match.group(2).split("."))


@functools.cache
def oci_runtime_version(program: str) -> tuple[str, tuple[int, ...]] | None:
    try:
        out = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT,
                             stdin=subprocess.DEVNULL, close_fds=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("runtime %s: cannot read its version: %s", program, exc)
        return None
    return parse_version(out.stdout)


def handler_features(handler: Handler) -> HandlerFeatures:
    """What a handler really does. Blocking (runs `--version` once per binary): call it from a worker thread."""
    kernel = sc.has_mount_setattr()
    if handler.kind == BUILTIN:
        return HandlerFeatures(recursive_read_only_mounts=kernel)
    version = oci_runtime_version(handler.argv[0])
    if version is None:
        return HandlerFeatures()
    name, numbers = version
    minimum = RRO_MIN_VERSIONS.get(name)
    return HandlerFeatures(recursive_read_only_mounts=kernel and minimum is not None and numbers >= minimum)
