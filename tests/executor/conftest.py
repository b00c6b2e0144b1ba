"""Fixtures for executor tests: a busybox rootfs built once, bundles, and runtimes (built-in, runc, crun)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runtime.linux import syscalls as sc
from tests.executor.rootfs import build_busybox_rootfs

REPO = Path(__file__).resolve().parents[2]


def executor_command() -> list[str]:
    script = Path(sys.executable).parent / "crisp-executor"
    return [str(script)] if script.exists() else [sys.executable, "-m", "runtime.executor"]


@pytest.fixture(autouse=True)
def _need_root(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("root") and os.geteuid() != 0:
        pytest.skip("needs root")


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    return build_busybox_rootfs(tmp_path_factory.mktemp("rootfs") / "rootfs")


@dataclass
class Result:
    create: int
    exit: int | None
    out: str
    err: str
    raw: dict[str, Any]


@dataclass
class Runtime:
    name: str
    argv: list[str]
    root: Path

    def command(self, *args: str) -> list[str]:
        return [*self.argv, "--root", str(self.root), *args]

    def run(self, bundle: Path, cid: str | None = None) -> Result:
        """create + start + wait + delete, as the shim does (the runner is the child subreaper)."""
        cid = cid or f"crisp-t-{uuid.uuid4().hex[:10]}"
        out, err = bundle / "out.txt", bundle / "err.txt"
        proc = subprocess.run(
            [sys.executable, "-m", "tests.executor.runner", json.dumps([*self.argv, "--root", str(self.root)]),
             cid, str(bundle), str(out), str(err)],
            capture_output=True, text=True, cwd=REPO, timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        raw = json.loads(proc.stdout.strip().splitlines()[-1])
        assert raw["delete"] == 0, raw
        return Result(raw["create"], raw["exit"], out.read_text(), err.read_text(), raw)


class Bundles:
    def __init__(self, base: Path, rootfs: Path) -> None:
        self.base = base
        self.rootfs = rootfs
        self.count = 0

    def make(self, spec: dict[str, Any], copy_rootfs: bool = True) -> Path:
        self.count += 1
        bundle = self.base / f"bundle{self.count}"
        bundle.mkdir()
        if copy_rootfs:
            shutil.copytree(self.rootfs, bundle / "rootfs", symlinks=True)
        (bundle / "config.json").write_text(json.dumps(spec))
        return bundle


@pytest.fixture
def bundles(tmp_path: Path, busybox_rootfs: Path) -> Bundles:
    return Bundles(tmp_path, busybox_rootfs)


@pytest.fixture
def builtin(tmp_path: Path) -> Iterator[Runtime]:
    """The built-in executor; the test process is the child subreaper of what it starts outside the runner
    (as the shim is), and reaps it at the end."""
    runtime = Runtime("crisp", executor_command(), tmp_path / "state-crisp")
    before = set(_children())  # the session's own children (a registry of tests/cri): never this test's orphans
    sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
    try:
        yield runtime
    finally:
        _cleanup(runtime)
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 0)
        _reap_orphans(before)


def _reap_orphans(before: set[int], timeout: float = 10.0) -> None:
    """Reap the containers' processes re-parented to us (never a child some Popen still owns, nor one the session
    had before the test). Never blocks on one pid: a dying PID-namespace init waits for its namespace's zombies,
    which may be ours to reap first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        orphans = [pid for pid in _children()
                   if pid not in before and "crisp-executor" not in _cmdline(Path(f"/proc/{pid}"))]
        if not orphans:
            return
        for pid in orphans:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.01)


def _children() -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == os.getpid():
            out.append(int(entry.name))
    return out


def _cmdline(entry: Path) -> str:
    try:
        return (entry / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _cleanup(runtime: Runtime) -> None:
    """Force-delete whatever a failed test left in this runtime's root."""
    if not runtime.root.exists():
        return
    for entry in runtime.root.iterdir():
        if entry.is_dir():
            subprocess.run(runtime.command("delete", "--force", entry.name), capture_output=True)


@pytest.fixture
def runtimes(builtin: Runtime, tmp_path: Path) -> Iterator[list[Runtime]]:
    """crisp-executor, runc and crun, each with its own --root."""
    others = []
    for name in ("runc", "crun"):
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} is not installed: run `make test`")
        argv = [found]
        if name == "crun":
            # crun 1.8 refuses this hybrid host ("cgroups in hybrid mode not supported") whenever it sees the
            # cgroup2 mount with a controller: run it without cgroups, in a private mount namespace without that
            # mount (the host's mounts are untouched)
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'umount -l "$(findmnt -n -t cgroup2 -o TARGET | head -n1)" && exec "$0" "$@"',
                    found, "--cgroup-manager=disabled"]
        others.append(Runtime(name, argv, tmp_path / f"state-{name}"))
    try:
        yield [builtin, *others]
    finally:
        for runtime in others:
            _cleanup(runtime)
