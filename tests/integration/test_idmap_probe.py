"""The id-mapping probe (runtime/linux/idmap.py) against the real kernel: it waits for its throwaway user namespace
for as long as a slow machine takes. It used to give up after 500 sched_yield()s, which under the VM tier's
emulated CPU came before `unshare` had made the namespace: user namespaces then counted as unsupported."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from runtime.linux import idmap

pytestmark = pytest.mark.root


def test_the_probe_waits_for_a_slow_unshare(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with tempfile.TemporaryDirectory(prefix="crisp-slow-unshare-") as bin_dir:
        # an `unshare` that takes half a second to start, as a loaded or emulated machine's may
        wrapper = Path(bin_dir) / "unshare"
        wrapper.write_text('#!/bin/sh\nsleep 0.5\nexec /usr/bin/unshare "$@"\n')
        wrapper.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
        root = str(Path(tempfile.gettempdir()).resolve())
        assert idmap.probe([root]) == {root: ""}
