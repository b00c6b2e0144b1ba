"""Test support for NRI over crispd: its `[nri]` config in a temporary place, and test plugins (tests/nri/
plugin_main.py) run as external processes, their recorded events read back."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cri import api as cri
from tests.cri.crispd import Crispd

REPO = Path(__file__).resolve().parents[2]


def nri_config(base: Path, request_timeout: float = 2.0) -> str:
    """`[nri]` enabled, everything under `base` (never the host's /var/run/nri or /opt/nri)."""
    for d in ("plugins", "conf.d"):
        (base / d).mkdir(parents=True, exist_ok=True)
    return (f'[nri]\nenable = true\nsocket_path = "{base}/nri.sock"\nplugin_path = "{base}/plugins"\n'
            f'plugin_config_path = "{base}/conf.d"\nplugin_request_timeout_seconds = {request_timeout}\n')


def nri_status(daemon: Crispd) -> dict[str, Any]:
    info = daemon.runtime.Status(cri.StatusRequest(verbose=True)).info
    return dict(json.loads(info["nri"]))


def plugin_names(daemon: Crispd) -> list[str]:
    return [p["name"] for p in nri_status(daemon).get("plugins", [])]


class TestPlugin:
    __test__ = False

    def __init__(self, daemon: Crispd, base: Path, name: str, idx: str, **config: Any) -> None:
        self.daemon, self.name, self.idx = daemon, name, idx
        self.record = base / f"{idx}-{name}.events.jsonl"
        self.record.touch()
        self.config = {"socket": str(base / "nri.sock"), "name": name, "idx": idx, "record": str(self.record),
                       **config}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> TestPlugin:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.nri.plugin_main", json.dumps(self.config)],
                                     cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + timeout
        while f"{self.idx}-{self.name}" not in plugin_names(self.daemon):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"plugin {self.idx}-{self.name} did not join: {nri_status(self.daemon)}")
            time.sleep(0.05)
        return self

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def names(self, **match: str) -> list[str]:
        return [e["event"] for e in self.events() if all(e.get(k) == v for k, v in match.items())]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def plugins(*started: TestPlugin) -> Iterator[None]:
    try:
        yield
    finally:
        for plugin in started:
            plugin.stop()


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())
