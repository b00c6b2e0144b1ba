"""Fixtures for tests that run inside the VM. Every test under tests/vm/guest/ is marked `vm` automatically
(tests/vm/plugin.py): on the host it becomes a proxy for its run in the VM, so it never touches the host."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runtime import cgroups
from tests.vm.guest.support import Cgroup, OciRuntime, cgroup2_mount, unique_name


@pytest.fixture(scope="session")
def cgroup_root() -> Path:
    """The cgroup2 mount of a pure v2 kernel, with every controller enabled for its children."""
    root = cgroup2_mount()
    controllers = set((root / "cgroup.subtree_control").read_text().split())
    missing = {"cpu", "memory", "pids", "io", "cpuset"} - controllers
    if missing:
        pytest.fail(f"{root} does not delegate {sorted(missing)}: not the VM tier's kernel?")
    return root


@pytest.fixture
def cgroup(cgroup_root: Path) -> Iterator[Cgroup]:
    """A fresh cgroup `crisp-vmtest-<hex>` under the root; killed and removed afterwards, also on failure."""
    made = Cgroup(cgroup_root / unique_name())
    made.path.mkdir()
    try:
        yield made
    finally:
        made.remove()


@pytest.fixture
def base() -> Iterator[cgroups.Cgroup]:
    """A pod-like parent for a test's containers, made by crisp (runtime.cgroups) and killed and removed by it
    afterwards, also on failure."""
    cg = cgroups.CgroupV2Manager.discover().create(f"/{unique_name()}")
    try:
        yield cg
    finally:
        cg.kill(timeout=30)
        cg.remove(timeout=30)


@pytest.fixture(params=["runc", "crun"])
def oci_runtime(request: pytest.FixtureRequest, tmp_path: Path) -> OciRuntime:
    """Each of the OCI runtimes the Debian guest has, with a private state dir."""
    binary = shutil.which(request.param)
    if binary is None:
        pytest.fail(f"{request.param} is missing from the VM image")
    return OciRuntime(binary, tmp_path / f"{request.param}-state")


@pytest.fixture
def container_ids(request: pytest.FixtureRequest) -> Iterator[Callable[[OciRuntime], str]]:
    """Hands out container ids and force-deletes every container made with them at the end."""
    made: list[tuple[OciRuntime, str]] = []

    def new(runtime: OciRuntime) -> str:
        container_id = unique_name("crisp-ctr")
        made.append((runtime, container_id))
        return container_id

    try:
        yield new
    finally:
        for runtime, container_id in reversed(made):
            runtime.delete(container_id)
