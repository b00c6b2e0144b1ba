"""crispd killed (kill -9) at every step of the RPCs that change state, restarted, the RPC retried: the retry
gets what it asked for, and once everything is removed nothing is left (tests/cri/killpoints.py).

`make test` runs the points in FAST, one or two per RPC (the steps that hold the most: pins and a pod init, a
shim, a container its shim made but crisp did not record yet, a started container, a cgroup kill, a removed
container's remains after the answer, layers; and the records whose answer never left);
`make test-extended` runs every other point of runtime/failpoints.py as well (about 40 more, ~15 s each).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cri import api as cri
from tests.cri.conftest import TestImages
from tests.cri.killpoints import RPC_POINTS, World, kill_at

pytestmark = pytest.mark.root

FAST = [
    "run_pod_sandbox.pod_init", "run_pod_sandbox.record", "create_container.shim", "create_container.record",
    "start_container.created", "start_container.shim", "stop_container.kill", "remove_container.record",
    "container_cleanup.shim", "stop_pod_sandbox.processes",
    "remove_pod_sandbox.pod_init", "pull_image.layer_unpacked",
]


@pytest.mark.parametrize("point", FAST)
def test_kill_at(tmp_path: Path, test_images: TestImages, point: str) -> None:
    kill_at(point, tmp_path, test_images)


@pytest.mark.extended
@pytest.mark.parametrize("point", [p for p in RPC_POINTS if p not in FAST])
def test_kill_at_every_other_point(tmp_path: Path, test_images: TestImages, point: str) -> None:
    kill_at(point, tmp_path, test_images)


def _remove_instead(w: World) -> None:
    """The container its shim made before crispd was killed (its row has no pid yet) is removed, not started:
    its shim deletes it; nothing is left (kill_at checks) and its name is free."""
    w.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=w.container_id))
    assert w.containers() == []
    w.make_container(start=True)
    assert w.container_state() == cri.CONTAINER_RUNNING


def test_killed_before_the_made_container_is_recorded_then_removed(tmp_path: Path, test_images: TestImages) -> None:
    kill_at("start_container.created", tmp_path, test_images, retry=_remove_instead)
