from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cri.crispd import Crispd


@pytest.fixture
def crispd(tmp_path: Path) -> Iterator[Crispd]:
    """A started crispd on a temporary root; stopped afterwards, and it must not have blocked its loop."""
    daemon = Crispd(tmp_path).start()
    try:
        yield daemon
    finally:
        code = daemon.stop(signal.SIGTERM)
    assert code == 0, daemon.log()
    assert daemon.slow_callbacks() == [], daemon.log()


from tests.cri.pods import pods  # noqa: E402,F401 - the `pods` fixture for every test here


@dataclass(frozen=True)
class TestImages:
    __test__ = False  # a fixture's value, not a test class

    registry: str  # host:port
    busybox: str  # a reference crispd can pull


@pytest.fixture(scope="session")
def test_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestImages]:
    """A loopback registry (Debian's docker-registry) holding a busybox image built from busybox-static."""
    from tests.imagetools import busybox_image
    from tests.registrytools import Pusher, running_registry

    if os.geteuid() != 0 or shutil.which("docker-registry") is None:
        pytest.skip("needs root and docker-registry (make test installs it)")
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        Pusher(reg.url).image("crisp/busybox", busybox_image(), "latest")
        yield TestImages(registry=reg.host, busybox=f"{reg.host}/crisp/busybox:latest")
