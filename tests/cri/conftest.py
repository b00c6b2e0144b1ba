from __future__ import annotations

import signal
from collections.abc import Iterator
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
