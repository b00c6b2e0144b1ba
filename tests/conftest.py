"""Shared test setup: tests marked `root` skip cleanly when not run as root; the VM tier's plugin decides where
tests marked `vm` run (tests/vm/plugin.py)."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.vm.plugin", "pytester"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
