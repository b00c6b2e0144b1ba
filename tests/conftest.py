"""Shared test setup: tests marked `root` skip cleanly when not run as root; tests marked `extended` run only with
--extended (make test-extended); the VM tier's plugin decides where tests marked `vm` run (tests/vm/plugin.py); a
test's `record_property("summary", line)` is printed at the end of the run (critest's counts, in the VM tier too)."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.vm.plugin", "pytester"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--extended", action="store_true",
                     help="also run the tests marked `extended` (make test-extended), left out otherwise")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--extended"):
        extended = [item for item in items if item.get_closest_marker("extended")]
        if extended:
            config.hook.pytest_deselected(items=extended)
            items[:] = [item for item in items if not item.get_closest_marker("extended")]
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines: dict[str, None] = {}  # in order, once (a report may be filed under two categories)
    for reports in list(terminalreporter.stats.values()):
        for report in reports:
            if getattr(report, "when", "") == "call":
                for key, value in getattr(report, "user_properties", []):
                    if key == "summary":
                        lines[f"{report.nodeid}: {value}"] = None
    for line in lines:
        terminalreporter.write_line(line)
