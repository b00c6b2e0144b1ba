"""Container logs through the kubelet's /containerLogs: the CRI log files crisp's shim writes where the kubelet said,
read back by the kubelet (also following them), across the kubelet's own log rotation (it renames the file when it
passes containerLogMaxSize, 1Ki here, and calls ReopenContainerLog so that crisp writes a new one)."""

from __future__ import annotations

import gzip
import re
import time
from pathlib import Path

from tests.kubelet.conftest import Node, StaticPod
from tests.kubelet.support import container, is_ready, pod_manifest, wait_pod, wait_until

# a line every 20 ms: the 1Ki limit is passed between two of the kubelet's 3 s checks
TICKER = ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.02; done"]
NUMBER = re.compile(rb"\btick (\d+)$", re.M)  # in the kubelet's output and in CRI log lines


def _numbers(text: bytes) -> list[int]:
    return [int(n) for n in NUMBER.findall(text)]


def _log_dir(node: Node, pod: dict[str, object], ctr: str) -> Path:
    meta = pod["metadata"]
    assert isinstance(meta, dict)
    return node.kubelet.pod_logs / f"default_{meta['name']}_{meta['uid']}" / ctr


def _rotated(directory: Path) -> list[Path]:
    """The kubelet's rotated files, oldest first (named `0.log.<timestamp>`, older ones gzipped; a `.tmp` is a gzip
    being written, renamed to `.gz` when done, which the kubelet itself does not count as a log)."""
    return sorted((p for p in directory.iterdir() if p.name.startswith("0.log.") and not p.name.endswith(".tmp")),
                  key=lambda p: p.name.removesuffix(".gz"))


def _read(path: Path) -> bytes:
    """A rotated file's lines; the kubelet may have gzipped it meanwhile (once a newer one exists)."""
    if not path.name.endswith(".gz"):
        try:
            return path.read_bytes()
        except FileNotFoundError:
            path = path.with_name(path.name + ".gz")
    return gzip.decompress(path.read_bytes())


def test_logs_and_following_them(node: Node, static_pod: StaticPod) -> None:
    # apart in time: a runtime reads the two pipes independently, so only time orders their lines in the log
    script = "echo to-stdout; sleep 0.5; echo to-stderr >&2; sleep 0.5; echo later; exec sleep 1000"
    name = static_pod(pod_manifest("talker", [container("app", node.busybox, ["sh", "-c", script])]))
    wait_pod(node.kubelet, name, is_ready, 60, "Running")
    follow = node.kubelet.follow_logs(name, "app")
    seen = b""
    for chunk in follow:
        seen += chunk
        if b"later\n" in seen:
            break
    follow.close()
    assert seen == b"to-stdout\nto-stderr\nlater\n"
    assert node.kubelet.logs(name, "app", tailLines="1") == b"later\n"
    stamped = node.kubelet.logs(name, "app", timestamps="true").splitlines()
    assert [line.split(b" ", 1)[1] for line in stamped] == [b"to-stdout", b"to-stderr", b"later"]


def test_logs_after_the_kubelet_rotates_them(node: Node, static_pod: StaticPod) -> None:
    name = static_pod(pod_manifest("ticker", [container("app", node.busybox, TICKER)]))
    pod = wait_pod(node.kubelet, name, is_ready, 60, "Running")
    directory = _log_dir(node, pod, "app")
    wait_until(lambda: _rotated(directory), 20, "a log rotated by the kubelet")

    # the current file starts where the newest rotated one ends: crisp reopened the log at the rename, nothing lost
    def consistent() -> tuple[list[int], list[int]] | None:
        """The newest rotated file's lines and the current file's, unless the kubelet rotated in between (or the
        new file has no line yet)."""
        before = _rotated(directory)
        last_rotated = _numbers(_read(before[-1]))
        current = _numbers(node.kubelet.logs(name, "app"))
        return (last_rotated, current) if current and _rotated(directory) == before else None

    last_rotated, current = wait_until(consistent, 20, "the current log and the newest rotated one read together")
    assert last_rotated and current[0] == last_rotated[-1] + 1, (last_rotated[-3:], current[:3])
    assert current == list(range(current[0], current[0] + len(current)))

    # following across the next rotation: the kubelet switches to the new file and goes on
    start = {p.name.removesuffix(".gz") for p in _rotated(directory)}
    deadline = time.monotonic() + 30
    seen = b""
    follow = node.kubelet.follow_logs(name, "app")
    newer: list[Path] = []
    for chunk in follow:
        seen += chunk
        newer = [p for p in _rotated(directory) if p.name.removesuffix(".gz") not in start]
        if newer and _numbers(seen) and _numbers(seen)[-1] > _numbers(_read(newer[0]))[-1]:
            break
        assert time.monotonic() < deadline, f"no line after a rotation while following; rotated: {newer}"
    follow.close()
    numbers = _numbers(seen)
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
