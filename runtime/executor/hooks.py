"""OCI hooks: parsing `hooks` of config.json and running one list of them with the container's state on stdin.

Where each list runs (runtime-spec 1.3 "POSIX-platform Hooks", with runc's choices where the spec leaves room):
  prestart (deprecated), createRuntime  `create`, in the executor (the runtime namespace), once the init has
                                        mounted the container's filesystem and before it pivots; status
                                        "creating", pid as the host sees it. prestart first, as runc does.
  createContainer                       `create`, in the init (the container's namespaces), before pivot_root, with
                                        the rootfs as cwd; pid as the container sees it.
  startContainer                        `start`, in the init after pivot_root, just before the exec; status
                                        "created"; without an env of its own it gets the process's (runc's habit).
  poststart                             `start`, in the executor once the program runs; status "running". A failure
                                        kills the container and fails `start` (the spec and runc >= 1.2 agree;
                                        runc 1.1 ran poststart at the end of `create`).
  poststop                              `delete` (and a failed `create`), in the executor after the container is
                                        gone; status "stopped", no pid. A failure is a warning (the spec; runc
                                        fails `delete` instead).
A hook without `env` inherits the executor's environment, and those of `create` and `start` in the runtime
namespace run in the bundle dir (those of `delete` where the executor was started), as runc's do. `timeout` kills
the hook and whatever it started (its process group; runc waits for the output of what the hook left running). A
failing hook is an error naming the list, the index, the exit status and the hook's output. createContainer hooks
run within the executor's handshake timeout (launcher.HANDSHAKE_TIMEOUT), which bounds a hook without a timeout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime import errors

log = logging.getLogger(__name__)

KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
OUTPUT_LIMIT = 4096  # bytes of a failed hook's stdout and stderr kept in the error message


class HookError(errors.CrispError):
    """A hook could not run, exited non-zero, or ran past its timeout."""


@dataclass(frozen=True)
class Hook:
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] | None = None
    timeout: int | None = None


@dataclass(frozen=True)
class Hooks:
    lists: Mapping[str, tuple[Hook, ...]] = field(default_factory=dict)

    def get(self, kind: str) -> tuple[Hook, ...]:
        return self.lists.get(kind, ())

    def __bool__(self) -> bool:
        return any(self.lists.values())


def _strings(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise errors.InvalidArgument(f"{where}: expected an array of strings")
    return tuple(value)


def parse_hook(value: object, where: str) -> Hook:
    if not isinstance(value, dict):
        raise errors.InvalidArgument(f"{where}: expected an object")
    path = value.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise errors.InvalidArgument(f"{where}.path: must be an absolute path, got {path!r}")
    args = _strings(value["args"], f"{where}.args") if value.get("args") is not None else ()
    env = _strings(value["env"], f"{where}.env") if value.get("env") is not None else None
    timeout = value.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0):
        raise errors.InvalidArgument(f"{where}.timeout: must be a positive number of seconds, got {timeout!r}")
    return Hook(path, args, env, timeout)


def parse_hooks(value: object) -> Hooks:
    """config.json's `hooks` object (absent or null: no hooks)."""
    if value is None:
        return Hooks()
    if not isinstance(value, dict):
        raise errors.InvalidArgument("hooks: expected an object")
    lists: dict[str, tuple[Hook, ...]] = {}
    for kind, items in value.items():
        if kind not in KINDS:
            raise errors.InvalidArgument(f"hooks.{kind}: not a hook list of the runtime spec")
        if items is None:
            continue
        if not isinstance(items, list):
            raise errors.InvalidArgument(f"hooks.{kind}: expected an array")
        lists[kind] = tuple(parse_hook(item, f"hooks.{kind}[{i}]") for i, item in enumerate(items))
    return Hooks(lists)


def state_document(oci_version: str, container_id: str, status: str, bundle: str,
                   annotations: Mapping[str, str], pid: int = 0) -> dict[str, Any]:
    """The state a hook reads on stdin (runtime-spec "State"); `pid` is left out when there is none."""
    state: dict[str, Any] = {"ociVersion": oci_version or "1.0.2", "id": container_id, "status": status}
    if pid:
        state["pid"] = pid
    state["bundle"] = bundle
    if annotations:
        state["annotations"] = dict(annotations)
    return state


def _clip(data: bytes) -> str:
    text = data[:OUTPUT_LIMIT].decode(errors="replace")
    return text + ("..." if len(data) > OUTPUT_LIMIT else "")


def run_hook(hook: Hook, state: Mapping[str, Any], default_env: Mapping[str, str] | None = None,
             cwd: str | None = None) -> None:
    """Run one hook to completion; HookError when it fails (the message says how)."""
    if hook.env is not None:
        env = dict(item.partition("=")[::2] for item in hook.env)
    else:
        env = dict(default_env) if default_env is not None else dict(os.environ)
    argv = list(hook.args) or [hook.path]
    try:
        # a process group of its own, so that a timeout kills what the hook started too (else a child holding its
        # stdout would keep us waiting for as long as it lives)
        proc = subprocess.Popen(argv, executable=hook.path, env=env, cwd=cwd, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True, process_group=0)
    except OSError as exc:
        raise HookError(f"{hook.path}: {exc.strerror or exc}") from None
    try:
        out, err = proc.communicate(json.dumps(state).encode(), timeout=hook.timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise HookError(f"hook ran past specified timeout of {float(hook.timeout or 0):.1f}s") from None
    if proc.returncode != 0:
        status = (f"exit status {proc.returncode}" if proc.returncode > 0
                  else f"signal: {_signal_name(-proc.returncode)}")
        raise HookError(f"{status}, stdout: {_clip(out)}, stderr: {_clip(err)}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def run_hooks(hooks: Hooks, kind: str, state: Mapping[str, Any], default_env: Mapping[str, str] | None = None,
              cwd: str | None = None) -> None:
    """Run the hooks of one list in order; the first failure stops the list and is raised, naming the hook."""
    for i, hook in enumerate(hooks.get(kind)):
        try:
            run_hook(hook, state, default_env, cwd)
        except HookError as exc:
            raise HookError(f"error running {kind} hook #{i}: {exc}") from None


def run_hooks_warn(hooks: Hooks, kind: str, state: Mapping[str, Any], what: str, cwd: str | None = None) -> None:
    """Run every hook of a list whose failures are warnings (poststop): each failure is logged, none stops the
    list."""
    for i, hook in enumerate(hooks.get(kind)):
        try:
            run_hook(hook, state, cwd=cwd)
        except HookError as exc:
            log.warning("%s: %s hook #%d failed: %s", what, kind, i, exc)
