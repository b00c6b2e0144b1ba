"""A private cgroup subtree per test: `/crisp-test-<unique>` under the host's cgroup2 mount, created by crisp and
removed afterwards with every process in it, also when the test fails. Nothing outside it is ever touched."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from runtime.cgroups import Cgroup, CgroupV2Manager


@dataclass
class Sandbox:
    manager: CgroupV2Manager
    base: Cgroup
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def path(self, *names: str) -> str:
        return "/".join([self.base.path, *names])

    def spawn(self, *argv: str, stdin: bool = False) -> subprocess.Popen[str]:
        """A child process we own (killed and reaped by the fixture)."""
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdin else subprocess.DEVNULL,
            text=True,
            close_fds=True,
        )
        self.procs.append(proc)
        return proc

    def python(self, code: str) -> subprocess.Popen[str]:
        """A Python child that waits for one line on stdin before running `code` (so it can be moved first)."""
        return self.spawn(sys.executable, "-c", "import sys\nsys.stdin.readline()\n" + code, stdin=True)


@pytest.fixture
def cgroups() -> Iterator[Sandbox]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    manager = CgroupV2Manager.discover()
    base = manager.create(f"/crisp-test-{uuid.uuid4().hex[:12]}")
    box = Sandbox(manager, base)
    try:
        yield box
    finally:
        try:
            base.kill(timeout=10)  # SIGKILL reaches frozen processes too
        finally:
            for proc in box.procs:
                if proc.poll() is None:
                    proc.kill()
                proc.communicate()
            base.remove(timeout=10)
    assert not base.dir.exists()
