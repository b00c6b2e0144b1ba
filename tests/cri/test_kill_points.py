"""crispd killed (kill -9) at every step of the RPCs that change state, restarted, the RPC retried: the retry
gets what it asked for, and once everything is removed nothing is left (tests/cri/killpoints.py).

`make test` runs the points in FAST (the steps that hold the most: pins, a pod init, the network, a shim, a
container, layers); `make test-extended` runs every other point of runtime/failpoints.py as well.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cri.conftest import TestImages
from tests.cri.killpoints import RPC_POINTS, kill_at

pytestmark = pytest.mark.root

FAST = [
    "run_pod_sandbox.pod_init", "run_pod_sandbox.network", "run_pod_sandbox.record",
    "create_container.spec", "create_container.shim", "create_container.record",
]


@pytest.mark.parametrize("point", FAST)
def test_kill_at(tmp_path: Path, test_images: TestImages, point: str) -> None:
    kill_at(point, tmp_path, test_images)


@pytest.mark.extended
@pytest.mark.parametrize("point", [p for p in RPC_POINTS if p not in FAST])
def test_kill_at_every_other_point(tmp_path: Path, test_images: TestImages, point: str) -> None:
    kill_at(point, tmp_path, test_images)
