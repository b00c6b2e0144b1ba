from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.shim.helpers import BUSYBOX, EXECUTORS, ShimEnv, build_busybox_rootfs


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not os.path.exists(BUSYBOX):
        pytest.skip("needs Debian's busybox-static")


@pytest.fixture(scope="session")
def busybox_rootfs() -> Iterator[Path]:
    _need_root()
    base = Path(tempfile.mkdtemp(prefix="crisp-shimtest-rootfs-", dir="/tmp"))
    try:
        build_busybox_rootfs(base / "rootfs")
        yield base / "rootfs"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _env(rootfs: Path, executor: str) -> Iterator[ShimEnv]:
    _need_root()
    if executor != "builtin" and shutil.which(executor) is None:
        pytest.skip(f"needs {executor}")
    env = ShimEnv(rootfs, executor)
    problems: list[str] = []
    try:
        yield env
    finally:
        problems = env.cleanup()
    assert problems == [], "the test left things behind:\n" + "\n".join(problems)


@pytest.fixture(params=EXECUTORS)
def shim_env(request: pytest.FixtureRequest, busybox_rootfs: Path) -> Iterator[ShimEnv]:
    """A shim environment for each OCI runtime (runc and crun)."""
    yield from _env(busybox_rootfs, request.param)


@pytest.fixture
def runc_env(busybox_rootfs: Path) -> Iterator[ShimEnv]:
    yield from _env(busybox_rootfs, "runc")


@pytest.fixture
def builtin_env(busybox_rootfs: Path) -> Iterator[ShimEnv]:
    yield from _env(busybox_rootfs, "builtin")
