from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.monitor.harness import Monitor, Zygote, build


@pytest.fixture(scope="session")
def monitor_binary() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("needs a C compiler to build crisp-monitor")
    build()


@pytest.fixture
def base(monitor_binary: None) -> Iterator[Path]:
    # short: unix socket paths in it must stay below 108 bytes
    path = Path(tempfile.mkdtemp(prefix="crisp-mon-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def zygote(base: Path) -> Iterator[Zygote]:
    stand_in = Zygote(base / "z.sock")
    try:
        yield stand_in
    finally:
        stand_in.stop()
    assert stand_in.errors == [], f"the zygote stand-in failed: {stand_in.errors!r}"


@pytest.fixture
def monitors(base: Path) -> Iterator[Callable[..., Monitor]]:
    """monitors(script, **options): a started monitor; every one is stopped (killed) after the test."""
    started: list[Monitor] = []

    def start(script: str, **options: Any) -> Monitor:
        monitor = Monitor(base, script, name=options.pop("name", f"b{len(started)}"), **options)
        started.append(monitor)
        return monitor.start()

    try:
        yield start
    finally:
        for monitor in started:
            monitor.stop()
