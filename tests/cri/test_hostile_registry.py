"""Registries that stream for ever or drip, against a real crispd: every request of a pull ends (size caps,
deadlines, progress timeouts, the pull's abort), and one slow registry does not hold up pulls from another."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri import api as cri
from tests.cri.conftest import TestImages
from tests.cri.crispd import Crispd
from tests.hostile_registry import HostileRegistry
from tests.imagetools import busybox_layer, file, image, layer

pytestmark = pytest.mark.root

FAST = "[image]\nrequest_timeout_seconds = 2.0\npull_progress_timeout_seconds = 4.0\n"
PATIENT = "[image]\nrequest_timeout_seconds = 120.0\npull_progress_timeout_seconds = 120.0\n"


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileRegistry]:
    reg = HostileRegistry().start()
    try:
        yield reg
    finally:
        reg.stop()


def _image(name: str) -> object:
    return image([busybox_layer(), layer([file("marker", name.encode())])], labels={"case": name})


def _daemon(tmp_path: Path, config: str) -> Crispd:
    return Crispd(tmp_path, config=config).start()


def _stop(daemon: Crispd) -> None:
    assert daemon.stop() == 0, daemon.log()
    assert daemon.slow_callbacks() == [], daemon.log()


def _pull(daemon: Crispd, ref: str, timeout: float = 60) -> str:
    return str(daemon.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)),
                                       timeout=timeout).image_ref)


def _pull_error(daemon: Crispd, ref: str, timeout: float = 60) -> tuple[grpc.RpcError, float]:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        _pull(daemon, ref, timeout)
    return info.value, time.monotonic() - started


def _store_empty(daemon: Crispd) -> bool:
    images = daemon.root / "images"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not any(any((images / d).iterdir()) for d in ("blobs/sha256", "snapshots", "tmp")):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("behaviour", ["endless-manifest", "huge-manifest"])
def test_a_manifest_is_cut_at_its_size_cap(tmp_path: Path, hostile: HostileRegistry, behaviour: str) -> None:
    ref = hostile.add(f"crisp/{behaviour}", _image(behaviour), behaviour)  # type: ignore[arg-type]
    daemon = _daemon(tmp_path, PATIENT)
    try:
        err, seconds = _pull_error(daemon, ref)
        assert err.code() is grpc.StatusCode.UNAVAILABLE, err.details()
        assert "larger than 4194304 bytes" in (err.details() or ""), err.details()
        assert seconds < 30
        assert _store_empty(daemon)
    finally:
        _stop(daemon)


@pytest.mark.parametrize("behaviour", ["drip-manifest", "drip-headers", "drip-config", "drip-token"])
def test_a_dripping_small_response_ends_at_the_request_timeout(tmp_path: Path, hostile: HostileRegistry,
                                                               behaviour: str) -> None:
    ref = hostile.add(f"crisp/{behaviour}", _image(behaviour), behaviour)  # type: ignore[arg-type]
    daemon = _daemon(tmp_path, FAST)
    try:
        err, seconds = _pull_error(daemon, ref)
        assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION), err.details()
        assert "within 2 s" in (err.details() or ""), err.details()
        assert seconds < 15  # 2 s per request, https then http
        assert _store_empty(daemon)
        _pull_error(daemon, ref)  # and again: nothing of the first pull holds a thread
    finally:
        _stop(daemon)


def test_a_blob_stops_at_its_descriptor_size(tmp_path: Path, hostile: HostileRegistry) -> None:
    ref = hostile.add("crisp/endless-blob", _image("endless-blob"), "endless-blob")  # type: ignore[arg-type]
    daemon = _daemon(tmp_path, FAST)
    try:
        err, seconds = _pull_error(daemon, ref)
        assert err.code() is grpc.StatusCode.UNAVAILABLE, err.details()
        assert "more data than its size" in (err.details() or ""), err.details()
        assert seconds < 30
        assert _store_empty(daemon)
    finally:
        _stop(daemon)


@pytest.mark.parametrize("behaviour", ["drip-manifest", "drip-headers", "drip-config", "drip-token", "drip-blob"])
def test_a_cancelled_pull_drops_every_request(tmp_path: Path, hostile: HostileRegistry, behaviour: str) -> None:
    """The caller goes away (its deadline): crispd must hang up on the registry at once, whatever the request
    is blocked in, not when the registry is done dripping."""
    repo = f"crisp/cancel-{behaviour}"
    ref = hostile.add(repo, _image(repo), behaviour)  # type: ignore[arg-type]
    daemon = _daemon(tmp_path, PATIENT)
    try:
        err, _ = _pull_error(daemon, ref, timeout=3)
        assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        cancelled = time.monotonic()
        deadline = cancelled + 10
        while not hostile.closed[repo] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hostile.closed[repo], f"crispd still holds the {behaviour} request 10 s after the cancel"
        assert hostile.closed[repo][0] - cancelled < 5
        assert _store_empty(daemon)
    finally:
        _stop(daemon)


def test_slow_registries_do_not_starve_a_healthy_one(tmp_path: Path, hostile: HostileRegistry,
                                                     test_images: TestImages) -> None:
    """Four pulls dripping manifests and four dripping layers from one registry; a pull from another one still
    goes through while they drip."""
    refs = [hostile.add(f"crisp/starve-{kind}-{i}", _image(f"starve-{kind}-{i}"), f"drip-{kind}")  # type: ignore[arg-type]
            for kind in ("manifest", "blob") for i in range(4)]
    daemon = _daemon(tmp_path, PATIENT)
    results: list[grpc.StatusCode] = []

    def slow(ref: str) -> None:
        try:
            _pull(daemon, ref, timeout=40)
        except grpc.RpcError as exc:
            results.append(exc.code())

    threads = [threading.Thread(target=slow, args=(ref,)) for ref in refs]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 15
        while sum(hostile.requests[f"crisp/starve-blob-{i}"] for i in range(4)) < 4 * 3 \
                and time.monotonic() < deadline:
            time.sleep(0.1)  # every dripping pull is at its layers (manifest, config, layer requests made)
        started = time.monotonic()
        assert _pull(daemon, test_images.busybox, timeout=30).startswith("sha256:")
        assert time.monotonic() - started < 20
        assert all(t.is_alive() for t in threads), "the slow pulls were meant to be still dripping"
    finally:
        for t in threads:
            t.join()
        _stop(daemon)
    assert results == [grpc.StatusCode.DEADLINE_EXCEEDED] * len(refs)


def test_a_manifest_nested_too_deep_is_invalid(tmp_path: Path, hostile: HostileRegistry) -> None:
    ref = hostile.add("crisp/nested-manifest", _image("nested-manifest"), "nested-manifest")  # type: ignore[arg-type]
    daemon = _daemon(tmp_path, FAST)
    try:
        err, _ = _pull_error(daemon, ref)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert "nested too deep" in (err.details() or "")
        assert _store_empty(daemon)
    finally:
        _stop(daemon)
