"""The held create of the systemd driver, between crispd and the shim and the built-in executor, with crispd's part
played by the test (crispd starts a systemd scope there: tests/vm/guest_systemd proves that part): the shim reports
the container's first process before it starts, the executor waits until that process is in the container's cgroup
and the cgroup is marked as crisp's, and a held process that is killed (no scope could be made) fails the create
and leaves nothing."""

from __future__ import annotations

import json
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import errors
from runtime.cgroups import CgroupV2Manager, paths
from tests.integration.shim.conftest import _env
from tests.integration.shim.helpers import ShimEnv, run


@pytest.fixture
def builtin_env(busybox_rootfs: Path) -> Iterator[ShimEnv]:
    yield from _env(busybox_rootfs, "builtin")


@pytest.fixture
def slice_path() -> Iterator[str]:
    """A slice-like parent, `crispshimtest<hex>.slice` (one level), made (and afterwards removed) by runtime.cgroups."""
    manager = CgroupV2Manager.discover()
    path = paths.expand_slice(f"crispshimtest{secrets.token_hex(4)}.slice")
    cg = manager.create(path)
    try:
        yield path
    finally:
        cg.kill(timeout=30)
        cg.remove(timeout=30)


def held_bundle(env: ShimEnv, cid: str, slice_path: str, args: list[str]) -> str:
    """A bundle whose cgroupsPath is the systemd form; returns the scope's cgroup path."""
    env.bundle(cid, args)
    spec_path = env.containers / cid / "config.json"
    spec = json.loads(spec_path.read_text())
    spec["linux"]["cgroupsPath"] = f"{paths.slice_of(slice_path)}:crisp:{cid}"
    spec_path.write_text(json.dumps(spec))
    return paths.from_oci(spec["linux"]["cgroupsPath"])


def own_cgroup(pid: int) -> str:
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return next(line[3:] for line in lines if line.startswith("0::"))


def test_held_create_waits_for_the_scope(builtin_env: ShimEnv, slice_path: str) -> None:
    cid = builtin_env.new_id()
    scope = held_bundle(builtin_env, cid, slice_path, ["sh", "-c", "exit 7"])
    manager = CgroupV2Manager.discover()
    seen: list[list[int]] = []

    async def held(pid: int) -> None:
        # what crispd does through systemd: the scope with this pid in it, then limits, then crisp's mark, last
        os.mkdir(manager.mount / scope.lstrip("/"))
        (manager.mount / scope.lstrip("/") / "cgroup.procs").write_text(str(pid))
        seen.append(manager.cgroup(scope).procs())
        manager.adopt(scope, {})  # limits need controllers this host may lack

    async def scenario() -> None:
        async with builtin_env.running_manager() as shims:
            config = builtin_env.config(cid, cgroup=scope)
            config = type(config)(**{**config.to_json(), "executor": [*config.executor, "--systemd-cgroup"]})
            client, pid = await shims.create(config, held=held)
            assert own_cgroup(pid) == scope
            assert len(seen) == 1 and len(seen[0]) == 1  # the held process alone: the executor never entered it
            await client.start()
            status = await shims.wait_exit(cid)
            assert status.exit_code == 7
            await client.shutdown()

    run(scenario(), check_slow_callbacks=False)
    # the executor's delete leaves the scope to whoever made it (crispd stops the unit)
    assert manager.cgroup(scope).exists()
    manager.cgroup(scope).remove(timeout=30)


def test_a_held_process_killed_fails_the_create_and_leaves_nothing(builtin_env: ShimEnv, slice_path: str) -> None:
    cid = builtin_env.new_id()
    scope = held_bundle(builtin_env, cid, slice_path, ["sh", "-c", "exit 0"])

    async def held(pid: int) -> None:
        os.kill(pid, signal.SIGKILL)  # crispd could not start the scope
        raise errors.FailedPrecondition("systemd could not start the scope")

    async def scenario() -> None:
        async with builtin_env.running_manager() as shims:
            config = builtin_env.config(cid, cgroup=scope)
            config = type(config)(**{**config.to_json(), "executor": [*config.executor, "--systemd-cgroup"]})
            with pytest.raises(errors.FailedPrecondition, match="could not start the scope"):
                await shims.create(config, held=held)

    run(scenario(), check_slow_callbacks=False)
    assert not CgroupV2Manager.discover().cgroup(scope).exists()
    assert not (builtin_env.executor_root / cid).exists()
