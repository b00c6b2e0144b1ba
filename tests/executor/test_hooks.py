"""OCI hooks under crisp-executor and runc: the same bundle, the same hooks, the same observations.

Each hook is a shell script that records its argv, cwd, uid, which root and which namespaces it sees, part of its
environment, and the state document on its stdin, then appends its name to a shared `order` file. The container
process records its own namespaces, so a hook's namespace is classified as the host's, the container's, or another.
crun is left out: on this hybrid host it runs inside an `unshare --mount` wrapper (tests/executor/conftest.py), so
its runtime-namespace hooks would see the wrapper's mount namespace.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.executor.conftest import REPO, Bundles, Runtime
from tests.executor.rootfs import make_spec

pytestmark = pytest.mark.root

NAMESPACES = ("mnt", "pid", "net", "uts", "ipc")
RECORD = """#!/bin/sh
# $1: the hook's name, $2: where to write (the host's path, or /hookout inside the container)
out="$2/$1.txt"
{
  echo "ARGV0=$0 ARGS=$*"
  echo "CWD=$(pwd)"
  echo "UID=$(id -u)"
  echo "ROOT=$(test -e /.crisp-rootfs && echo container || echo host)"
  for ns in mnt pid net uts ipc; do echo "NS $ns $(readlink /proc/self/ns/$ns)"; done
  echo "ENV $(env | grep -E '^(HOOKVAR|PATH|HOME)=' | sort | tr '\\n' ' ')"
  echo "STATE $(cat)"
} > "$out"
echo "$1" >> "$2/order"
exit "${HOOK_EXIT:-0}"
"""
HOOK_ENV = ["HOOKVAR=set", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
ORDER = ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"]


def _runtime(runtimes: list[Runtime], name: str) -> Runtime:
    return next(r for r in runtimes if r.name == name)


def _bundle(bundles: Bundles, out: Path, hooks: dict[str, list[dict[str, Any]]], args: list[str] | None = None
            ) -> Path:
    """A bundle whose container records its namespaces into /hookout (a bind of `out`) and then exits."""
    script = out.parent / "record-hook"
    script.write_text(RECORD)
    script.chmod(0o755)
    record_ns = "; ".join(f'echo "NS {ns} $(readlink /proc/self/ns/{ns})"' for ns in NAMESPACES)
    spec = make_spec(args or ["/bin/sh", "-c", f"{{ {record_ns}; }} > /hookout/process.txt"], hooks=hooks)
    spec["mounts"].append({"destination": "/hookout", "type": "bind", "source": str(out),
                           "options": ["rbind", "rw"]})
    bundle = bundles.make(spec)
    (bundle / "rootfs/.crisp-rootfs").touch()
    (bundle / "rootfs/record-hook").write_text(RECORD)  # startContainer's path resolves in the container
    (bundle / "rootfs/record-hook").chmod(0o755)
    return bundle


def _hook(out: Path, name: str, **extra: Any) -> dict[str, Any]:
    script = str(out.parent / "record-hook")
    return {"path": script, "args": ["record-hook", name, str(out)], "env": HOOK_ENV, **extra}


def _all_hooks(out: Path) -> dict[str, list[dict[str, Any]]]:
    hooks = {name: [_hook(out, name)] for name in ORDER}
    # resolved in the container after pivot_root, without an env of its own (it gets the process's)
    hooks["startContainer"] = [{"path": "/record-hook", "args": ["record-hook", "startContainer", "/hookout"]}]
    return hooks


def _ns_map() -> dict[str, str]:
    return {os.readlink(f"/proc/self/ns/{ns}"): "host" for ns in NAMESPACES}


def _observations(out: Path, bundle: Path) -> dict[str, list[str]]:
    """Each hook's record with host paths, namespaces and pids replaced by what they are."""
    names = _ns_map()
    for line in (out / "process.txt").read_text().splitlines():
        _, _, value = line.split(" ", 2)
        names.setdefault(value, "container")
    seen: dict[str, list[str]] = {}
    for name in ORDER:
        path = out / f"{name}.txt"
        if not path.exists():
            continue
        lines = []
        for line in path.read_text().splitlines():
            if line.startswith("NS "):
                _, ns, value = line.split(" ", 2)
                line = f"NS {ns} {names.get(value, 'other')}"
            elif line.startswith("STATE "):
                state = json.loads(line.removeprefix("STATE "))
                assert state.pop("id").startswith("crisp-t-")
                assert state.pop("bundle") == str(bundle)
                assert state.pop("ociVersion")
                pid = state.pop("pid", None)
                state["pid"] = "none" if pid is None else "1" if pid == 1 else "host"
                line = "STATE " + json.dumps(state, sort_keys=True)
            lines.append(line.replace(str(bundle), "<bundle>").replace(str(out), "<out>"))
        seen[name] = lines
    return seen


def test_hooks_run_where_and_when_runc_runs_them(runtimes: list[Runtime], bundles: Bundles, tmp_path: Path) -> None:
    results = {}
    for runtime in (_runtime(runtimes, "crisp"), _runtime(runtimes, "runc")):
        out = tmp_path / f"out-{runtime.name}"
        out.mkdir()
        bundle = _bundle(bundles, out, _all_hooks(out))
        result = runtime.run(bundle)
        assert result.create == 0, f"{runtime.name}: {result.err}"
        assert result.exit == 0, f"{runtime.name}: {result.out}{result.err}"
        order = (out / "order").read_text().split()
        # Debian 12's runc (1.1.5) runs poststart at the end of `create`, before startContainer; runc 1.2 moved it
        # to `start` ("Move poststart hook from runc create to runc start"), where the spec puts it and crisp has it
        assert order == ORDER if runtime.name == "crisp" else sorted(order) == sorted(ORDER), order
        results[runtime.name] = _observations(out, bundle)
    crisp, runc = results["crisp"], results["runc"]
    assert crisp.keys() == runc.keys() == set(ORDER)
    # runc 1.1 runs poststart during `create`, so its state says "created" there; the spec's (and crisp's) is
    # "running"
    runc["poststart"] = [line.replace('"status": "created"', '"status": "running"') for line in runc["poststart"]]
    for name in ORDER:
        assert crisp[name] == runc[name], f"{name}:\n" + "\n".join(difflib.unified_diff(runc[name], crisp[name]))
    # and what the runtime spec says, spelled out
    for name in ("prestart", "createRuntime", "poststart", "poststop"):
        assert {line for line in crisp[name] if line.startswith("NS ")} == {f"NS {ns} host" for ns in NAMESPACES}
        assert "ROOT=host" in crisp[name]
    for name in ("createContainer", "startContainer"):
        assert {line for line in crisp[name] if line.startswith("NS ")} == {
            f"NS {ns} container" for ns in NAMESPACES}
    assert "ROOT=host" in crisp["createContainer"] and "CWD=<bundle>/rootfs" in crisp["createContainer"]
    assert "ROOT=container" in crisp["startContainer"]
    assert "ENV HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin " in crisp[
        "startContainer"]
    statuses = {name: json.loads(next(line for line in crisp[name] if line.startswith("STATE "))[6:])
                for name in ORDER}
    assert {name: (s["status"], s["pid"]) for name, s in statuses.items()} == {
        "prestart": ("creating", "host"), "createRuntime": ("creating", "host"), "createContainer": ("creating", "1"),
        "startContainer": ("created", "1"), "poststart": ("running", "host"), "poststop": ("stopped", "none")}


def _create(runtime: Runtime, bundle: Path, cid: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(runtime.command("create", "--bundle", str(bundle), cid), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)


@pytest.mark.parametrize("failing", ["prestart", "createRuntime", "createContainer"])
def test_failing_create_hook_fails_create_and_leaves_nothing(
        runtimes: list[Runtime], bundles: Bundles, tmp_path: Path, failing: str) -> None:
    for runtime in (_runtime(runtimes, "crisp"), _runtime(runtimes, "runc")):
        out = tmp_path / f"out-{runtime.name}-{failing}"
        out.mkdir()
        hooks = {name: [_hook(out, name)] for name in ("prestart", "createRuntime", "createContainer", "poststop")}
        hooks[failing] = [_hook(out, failing, env=[*HOOK_ENV, "HOOK_EXIT=3"])]
        bundle = _bundle(bundles, out, hooks)
        cid = f"crisp-t-fail-{failing.lower()}"
        created = _create(runtime, bundle, cid)
        assert created.returncode != 0, runtime.name
        assert "exit status 3" in created.stderr, f"{runtime.name}: {created.stderr}"
        if runtime.name == "crisp":  # runc 1.1 says "error running hook #0" without the list's name
            assert f"error running {failing} hook #0" in created.stderr, created.stderr
        ran = (out / "order").read_text().split()
        assert ran[:ORDER.index(failing) + 1] == [n for n in ORDER if n in hooks][:ORDER.index(failing) + 1]
        assert ran[-1] == "poststop", f"{runtime.name}: a failed create is deleted, poststop runs: {ran}"
        assert not (runtime.root / cid).exists(), runtime.name
        state = subprocess.run(runtime.command("state", cid), capture_output=True, text=True)
        assert state.returncode != 0, runtime.name


def test_hook_timeout_kills_the_hook_and_fails_create(runtimes: list[Runtime], bundles: Bundles,
                                                     tmp_path: Path) -> None:
    for runtime in (_runtime(runtimes, "crisp"), _runtime(runtimes, "runc")):
        out = tmp_path / f"out-{runtime.name}"
        out.mkdir()
        marker = out / "slept"
        hooks = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", f"sleep 12; touch {marker}"],
                                    "timeout": 1}]}
        bundle = _bundle(bundles, out, hooks)
        started = time.monotonic()
        created = _create(runtime, bundle, "crisp-t-timeout")
        assert created.returncode != 0
        assert "ran past specified timeout of 1.0s" in created.stderr, f"{runtime.name}: {created.stderr}"
        assert not (runtime.root / "crisp-t-timeout").exists()
        if runtime.name == "runc":
            continue  # runc kills the hook but waits for its output, which the orphaned `sleep` holds for 12 s
        assert time.monotonic() - started < 9
        assert not marker.exists()


def test_failing_poststart_kills_the_container_and_fails_start(runtimes: list[Runtime], bundles: Bundles,
                                                              tmp_path: Path) -> None:
    for runtime in (_runtime(runtimes, "crisp"), _runtime(runtimes, "runc")):
        out = tmp_path / f"out-{runtime.name}"
        out.mkdir()
        hooks = {"poststart": [_hook(out, "poststart", env=[*HOOK_ENV, "HOOK_EXIT=1"])]}
        result = runtime.run(_bundle(bundles, out, hooks, args=["/bin/sleep", "60"]))
        if runtime.name == "runc" and result.create != 0:  # runc 1.1 runs poststart in `create`
            assert "exit status 1" in result.err, result.err
            continue
        assert result.create == 0, result.err
        assert result.raw["start"] != 0, runtime.name
        assert "error running poststart hook #0: exit status 1" in result.raw["start_err"], result.raw["start_err"]
        assert result.exit == -9, f"{runtime.name}: killed, got {result.exit}"
        assert result.raw["seconds"] < 30


def test_failing_start_container_hook_fails_start(builtin: Runtime, bundles: Bundles, tmp_path: Path) -> None:
    """runc's init exits after the hook fails while `runc start` reports success; crisp's start says why."""
    out = tmp_path / "out"
    out.mkdir()
    hooks = {"startContainer": [{"path": "/record-hook", "args": ["record-hook", "startContainer", "/hookout"],
                                 "env": ["HOOK_EXIT=4"]}]}
    result = builtin.run(_bundle(bundles, out, hooks, args=["/bin/sleep", "60"]))
    assert result.create == 0, result.err
    assert result.raw["start"] != 0
    assert "error running startContainer hook #0: exit status 4" in result.raw["start_err"]
    assert result.exit == 1 and result.raw["seconds"] < 30
    assert not (out / "process.txt").exists()


def test_failing_poststop_hook_is_a_warning(builtin: Runtime, bundles: Bundles, tmp_path: Path) -> None:
    """runtime-spec: a poststop failure is logged and delete goes on (runc fails delete instead)."""
    out = tmp_path / "out"
    out.mkdir()
    hooks = {"poststop": [_hook(out, "poststop", env=[*HOOK_ENV, "HOOK_EXIT=5"]), _hook(out, "poststop")]}
    result = builtin.run(_bundle(bundles, out, hooks))
    assert result.exit == 0
    assert result.raw["delete"] == 0
    assert "poststop hook #0 failed: exit status 5" in result.raw["delete_err"]
    assert (out / "order").read_text().split() == ["poststop", "poststop"]
    assert not (builtin.root / "crisp-t").exists()


def test_bad_hooks_are_refused_before_anything_is_made(builtin: Runtime, bundles: Bundles, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for hooks, message in (({"createRuntime": [{"path": "relative/hook"}]}, "must be an absolute path"),
                           ({"poststart": [{"path": "/bin/true", "timeout": 0}]}, "positive number of seconds"),
                           ({"preStart": [{"path": "/bin/true"}]}, "hooks.preStart: not a hook list")):
        created = _create(builtin, _bundle(bundles, out, hooks), "crisp-t-bad")
        assert created.returncode != 0 and message in created.stderr, created.stderr
        assert not (builtin.root / "crisp-t-bad").exists()
    assert REPO.exists()
