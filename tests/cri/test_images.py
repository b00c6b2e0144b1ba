"""ImageService over crispd's real socket, against Debian's docker-registry on loopback.

The images are built here (real tar layers from busybox-static, gzip, zstd and plain, whiteouts, hardlinks,
setuid files, file capabilities, a multi-platform index with an attestation entry) and pushed with our own code.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cri import api as cri
from runtime.image.manifest import host_platform
from tests.cri.crispd import Crispd
from tests.imagetools import (
    DOCKER_LIST,
    OCI_INDEX,
    Entry,
    Image,
    busybox_layer,
    directory,
    file,
    hardlink,
    image,
    index,
    layer,
    symlink,
)
from tests.registrytools import Pusher, Registry, SlowProxy, TokenServer, hosts_toml, running_registry

pytestmark = pytest.mark.root

CAP_NET_BIND = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (layer ownership, device nodes, trusted.* xattrs)")
    if shutil.which("docker-registry") is None and not Path("/usr/bin/docker-registry").exists():
        pytest.skip("docker-registry is not installed (make test installs it)")


@dataclass
class Images:
    registry: Registry
    busybox: Image
    features: Image
    www: Image
    amd64: Image
    arm64: Image
    multi_digest: str
    shared_a: Image
    shared_b: Image
    big: Image
    evil: dict[str, Image]


def _features(base: Image) -> Image:
    return image([
        base.layers[0],
        layer([
            directory("etc"), file("etc/motd", b"hello\n"), file("etc/old", b"old"),
            directory("data"), file("data/a", b"a"), file("data/b", b"b"),
            file("usr/bin/su-ish", b"#!/bin/sh\n", 0o4755), file("usr/bin/ping", b"ELF", 0o755,
                                                               xattrs={"security.capability": CAP_NET_BIND}),
            hardlink("etc/motd-link", "etc/motd"), symlink("motd", "/etc/motd"),
            Entry("dev/crisp-null", "char", mode=0o666, dev=(1, 3)),
        ], "zstd"),
        layer([file("etc/.wh.old"), directory("data"), file("data/.wh..wh..opq"), file("data/c", b"c")], "plain"),
    ], user="1000:1000", env=["PATH=/bin", "CRISP=1"], labels={"crisp": "features"})


EVIL: dict[str, list[Entry]] = {
    "dotdot": [file("../../../crisp-evil-dotdot", b"x")],
    "absolute": [file("/tmp/crisp-evil-absolute", b"x")],
    "symlinked-parent": [symlink("tmp-link", "/tmp"), file("tmp-link/crisp-evil-symlink", b"x")],
    "hardlink-outside": [hardlink("passwd-copy", "/etc/passwd")],
    "hardlink-dotdot": [hardlink("passwd-copy", "../../../../etc/passwd")],
}


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    if os.geteuid() != 0 or shutil.which("docker-registry") is None:
        pytest.skip("needs root and docker-registry")
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        push = Pusher(reg.url)
        base = busybox_layer("gzip")
        busybox = image([base], docker=True)
        push.image("crisp/busybox", busybox, "latest")
        features = _features(busybox)
        push.image("crisp/features", features, "v1")
        www = image([base, layer([file("www", b"w")], "plain")], user="www-data")
        push.image("crisp/features", www, "www")
        arm64 = image([layer([file("arm64-marker", b"arm")])], arch="arm64")
        attestation = image([layer([file("statement.json", b"{}")])], arch="unknown")
        amd64 = image([base, layer([file("amd64-marker", b"amd")], "zstd")], arch="amd64")
        for img in (arm64, attestation, amd64):
            push.image("crisp/multi", img)
        here = host_platform()
        own, other = (amd64, arm64) if here.architecture == "amd64" else (arm64, amd64)
        multi = index([
            other.descriptor({"os": "linux", "architecture": "s390x"}),
            own.descriptor({"os": "linux", "architecture": here.architecture,
                            **({"variant": here.variant} if here.variant else {})}),
            attestation.descriptor({"os": "unknown", "architecture": "unknown"},
                                   annotations={"vnd.docker.reference.type": "attestation-manifest",
                                                "vnd.docker.reference.digest": own.digest}),
        ])
        multi_digest = push.manifest("crisp/multi", "v1", multi, OCI_INDEX)
        shared_a = image([base, layer([file("a", b"a")])], labels={"v": "a"})
        shared_b = image([base, layer([file("b", b"b")])], labels={"v": "b"})
        push.image("crisp/shared", shared_a, "a")
        push.image("crisp/shared", shared_b, "b")
        big = image([base, layer([file("big", os.urandom(3 * 1024 * 1024))], "plain")], labels={"v": "big"})
        push.image("crisp/big", big, "v1")
        evil = {}
        for name, entries in EVIL.items():
            evil[name] = image([base, layer([file("fine", b"ok")]), layer(entries)], labels={"evil": name})
            push.image("crisp/evil", evil[name], name)
        yield Images(reg, busybox, features, www, own, other, multi_digest, shared_a, shared_b, big, evil)


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    d = tmp_path / "certs.d"
    d.mkdir()
    return d


def _start(base: Path, certs: Path, extra: str = "", name: str = "crispd") -> Crispd:
    base.mkdir(parents=True, exist_ok=True)
    return Crispd(base, config=f'[image]\nregistry_config_path = "{certs}"\n{extra}', name=name).start()


def _stop(daemon: Crispd) -> None:
    code = daemon.stop()
    assert code == 0, daemon.log()
    assert daemon.slow_callbacks() == [], daemon.log()


@pytest.fixture
def daemon(tmp_path: Path, certs: Path) -> Iterator[Crispd]:
    d = _start(tmp_path / "crispd", certs)
    try:
        yield d
    finally:
        _stop(d)


def pull(daemon: Crispd, ref: str, auth: cri.AuthConfig | None = None, timeout: float = 60) -> str:
    request = cri.PullImageRequest(image=cri.ImageSpec(image=ref), auth=auth)
    return str(daemon.images.PullImage(request, timeout=timeout).image_ref)


def status(daemon: Crispd, ref: str, verbose: bool = False) -> cri.ImageStatusResponse:
    return daemon.images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=ref), verbose=verbose))


def listed(daemon: Crispd, ref: str = "") -> list[cri.Image]:
    """ListImages; StreamImages (the kubelet's CRIListStreaming) must give the same images."""
    flt = cri.ImageFilter(image=cri.ImageSpec(image=ref)) if ref else None
    images = list(daemon.images.ListImages(cri.ListImagesRequest(filter=flt)).images)
    pages = daemon.images.StreamImages(cri.StreamImagesRequest(filter=flt), timeout=10)
    assert [i for page in pages for i in page.images] == images
    return images


def remove(daemon: Crispd, ref: str) -> None:
    daemon.images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=ref)))


def rpc_error(fn: object, *args: object, **kw: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kw)  # type: ignore[operator]
    return info.value


def image_dir(daemon: Crispd) -> Path:
    return daemon.root / "images"


def contents(daemon: Crispd) -> tuple[set[str], set[str], list[str]]:
    d = image_dir(daemon)
    return ({p.name for p in (d / "blobs/sha256").iterdir()}, {p.name for p in (d / "snapshots").iterdir()},
            [p.name for p in (d / "tmp").iterdir()])


def assert_nothing_left(daemon: Crispd) -> None:
    """No image, no blob, no snapshot, no temp file (waits a little: a cancelled pull cleans up behind the RPC)."""
    deadline = time.monotonic() + 20
    while True:
        state = (listed(daemon), *contents(daemon))
        if state == ([], set(), set(), []) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert state == ([], set(), set(), [])


def test_pull_by_tag_status_and_snapshots(daemon: Crispd, images: Images) -> None:
    host = images.registry.host
    ref = f"{host}/crisp/features:v1"
    image_id = pull(daemon, ref)
    assert image_id == images.features.id  # the CRI's image_ref of a pull is the image id
    img = status(daemon, ref).image
    assert img.id == image_id
    assert list(img.repo_tags) == [ref]
    assert list(img.repo_digests) == [f"{host}/crisp/features@{images.features.digest}"]
    assert img.uid.value == 1000 and img.username == ""
    assert img.size >= sum(len(lay.blob) for lay in images.features.layers)
    for other in (image_id, image_id[len("sha256:"):], image_id[:19], image_id[7:19],
                  f"{host}/crisp/features@{images.features.digest}"):
        assert status(daemon, other).image.id == image_id, other
    info = json.loads(status(daemon, ref, verbose=True).info["info"])
    assert info["imageSpec"]["config"]["Env"] == ["PATH=/bin", "CRISP=1"]
    assert len(info["chainIDs"]) == 3
    # the snapshots, topmost first, are what an overlay of this image is made of
    top, middle, bottom = (Path(p) for p in info["snapshots"])
    assert (bottom / "bin/busybox").stat().st_size > 100_000 and os.readlink(bottom / "bin/sh") == "busybox"
    assert (middle / "usr/bin/su-ish").stat().st_mode & 0o7777 == 0o4755
    assert os.getxattr(middle / "usr/bin/ping", "security.capability") == CAP_NET_BIND
    assert (middle / "etc/motd-link").stat().st_ino == (middle / "etc/motd").stat().st_ino
    assert os.readlink(middle / "motd") == "/etc/motd"
    assert (top / "etc/old").lstat().st_rdev == 0 and not (top / "etc/old").is_file()  # a whiteout
    assert os.getxattr(top / "data", "trusted.overlay.opaque") == b"y"
    fs = daemon.images.ImageFsInfo(cri.ImageFsInfoRequest()).image_filesystems
    assert len(fs) == 1 and fs[0].fs_id.mountpoint == str(image_dir(daemon))
    assert fs[0].used_bytes.value > 1_000_000 and fs[0].inodes_used.value > 10
    assert contents(daemon)[2] == []


def test_pull_by_digest_and_docker_manifest(daemon: Crispd, images: Images) -> None:
    host = images.registry.host
    digest_ref = f"{host}/crisp/busybox@{images.busybox.digest}"
    assert pull(daemon, digest_ref) == images.busybox.id
    img = status(daemon, digest_ref).image
    assert list(img.repo_tags) == [] and list(img.repo_digests) == [digest_ref]
    assert img.uid.value == 0 and not img.HasField("uid") and img.username == ""
    # the same image by tag gains the tag, keeps its digest
    pull(daemon, f"{host}/crisp/busybox")
    img = status(daemon, images.busybox.id).image
    assert list(img.repo_tags) == [f"{host}/crisp/busybox:latest"] and list(img.repo_digests) == [digest_ref]
    assert status(daemon, f"{host}/crisp/busybox:latest").image.id == images.busybox.id


def test_multi_platform_index(daemon: Crispd, images: Images) -> None:
    host = images.registry.host
    ref = f"{host}/crisp/multi:v1"
    assert pull(daemon, ref) == images.amd64.id  # the host's platform, never the attestation entry
    img = status(daemon, ref).image
    # the repo digest is the index's digest, not the per-platform manifest's
    assert list(img.repo_digests) == [f"{host}/crisp/multi@{images.multi_digest}"]
    assert status(daemon, f"{host}/crisp/multi@{images.multi_digest}").image.id == images.amd64.id
    assert json.loads(status(daemon, ref, verbose=True).info["info"])["platform"].startswith("linux/")


def test_username_list_filter_remove_and_gc(daemon: Crispd, images: Images) -> None:
    host = images.registry.host
    pull(daemon, f"{host}/crisp/features:www")
    assert status(daemon, f"{host}/crisp/features:www").image.username == "www-data"
    remove(daemon, f"{host}/crisp/features:www")
    a, b = f"{host}/crisp/shared:a", f"{host}/crisp/shared:b"
    pull(daemon, a)
    pull(daemon, b)
    assert {i.id for i in listed(daemon)} == {images.shared_a.id, images.shared_b.id}
    assert [i.id for i in listed(daemon, b)] == [images.shared_b.id]
    assert listed(daemon, f"{host}/crisp/shared:none") == []
    _, snapshots, _ = contents(daemon)
    assert len(snapshots) == 3  # the shared base is unpacked once
    remove(daemon, a)
    assert [i.id for i in listed(daemon)] == [images.shared_b.id]
    blobs_after, snapshots_after, _ = contents(daemon)
    assert len(snapshots_after) == 2 and snapshots_after < snapshots
    assert images.shared_a.id.split(":")[1] not in blobs_after and images.shared_b.id.split(":")[1] in blobs_after
    assert images.shared_a.layers[0].digest.split(":")[1] in blobs_after  # the shared base layer stays
    remove(daemon, a)  # again: OK
    remove(daemon, images.shared_b.id[7:19])  # by short id
    assert_nothing_left(daemon)


def test_a_pull_moves_a_tag_from_the_image_that_had_it(daemon: Crispd, certs: Path, images: Images) -> None:
    """The registry moved a tag: pulling it again gives the tag to the new image, and the old one keeps only its
    other name (its digest), at once and after a restart."""
    push, host = Pusher(images.registry.url), images.registry.host
    moving = f"{host}/crisp/moving:t"
    push.image("crisp/moving", images.shared_a, "t")
    pull(daemon, moving)
    assert [(i.id, list(i.repo_tags)) for i in listed(daemon)] == [(images.shared_a.id, [moving])]
    push.image("crisp/moving", images.shared_b, "t")
    pull(daemon, moving)
    old_digest = f"{host}/crisp/moving@{images.shared_a.digest}"

    def check(seen: Crispd) -> None:
        assert status(seen, moving).image.id == images.shared_b.id
        assert status(seen, old_digest).image.id == images.shared_a.id
        assert {i.id: (list(i.repo_tags), list(i.repo_digests)) for i in listed(seen)} == {
            images.shared_a.id: ([], [old_digest]),
            images.shared_b.id: ([moving], [f"{host}/crisp/moving@{images.shared_b.digest}"])}

    check(daemon)
    assert daemon.stop() == 0, daemon.log()
    again = _start(daemon.base, certs, name="again")
    try:
        check(again)
    finally:
        _stop(again)
    daemon.start()  # the fixture's, which stops it


def test_concurrent_removes_all_succeed(daemon: Crispd, images: Images) -> None:
    ref = f"{images.registry.host}/crisp/shared:a"
    pull(daemon, ref)
    errors: list[BaseException] = []

    def rm(name: str) -> None:
        try:
            remove(daemon, name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=rm, args=(n,)) for n in (ref, images.shared_a.id, ref, ref)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert_nothing_left(daemon)


def test_restart_keeps_images(tmp_path: Path, certs: Path, images: Images) -> None:
    ref = f"{images.registry.host}/crisp/features:v1"
    first = _start(tmp_path / "c", certs)
    try:
        pull(first, ref)
        before = listed(first)
    finally:
        _stop(first)
    # leftovers of a crash: a half download in tmp/, a snapshot nothing references
    (tmp_path / "c/root/images/tmp/blob-half").write_bytes(b"partial")
    (tmp_path / "c/root/images/snapshots" / ("ab" * 32) / "fs").mkdir(parents=True)
    again = _start(tmp_path / "c", certs, name="again")
    try:
        assert listed(again) == before
        assert status(again, ref).image.id == images.features.id
        _, snapshots, tmp = contents(again)
        assert tmp == [] and "ab" * 32 not in snapshots and len(snapshots) == 3
        assert pull(again, ref) == images.features.id  # a second pull is served from what is stored
    finally:
        _stop(again)


def test_bad_and_missing_references(daemon: Crispd, images: Images) -> None:
    host = images.registry.host
    for bad in ("Bad:Ref", "busybox:", f"{host}/crisp/busybox@sha256:123"):
        assert rpc_error(pull, daemon, bad).code() is grpc.StatusCode.INVALID_ARGUMENT
        assert rpc_error(status, daemon, bad).code() is grpc.StatusCode.INVALID_ARGUMENT
    err = rpc_error(pull, daemon, f"{host}/crisp/busybox:no-such-tag")
    assert err.code() is grpc.StatusCode.NOT_FOUND and "no-such-tag" in (err.details() or "")
    assert rpc_error(pull, daemon, f"{host}/crisp/nothing-here").code() is grpc.StatusCode.NOT_FOUND
    assert not status(daemon, f"{host}/crisp/busybox:latest").HasField("image")
    assert not status(daemon, "sha256:" + "0" * 64).HasField("image")
    remove(daemon, f"{host}/crisp/busybox:latest")  # missing: OK
    err = rpc_error(pull, daemon, "")
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert_nothing_left(daemon)


@pytest.mark.parametrize("case", sorted(EVIL))
def test_malicious_layers_fail_and_leave_nothing(daemon: Crispd, images: Images, case: str) -> None:
    err = rpc_error(pull, daemon, f"{images.registry.host}/crisp/evil:{case}")
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert images.evil[case].layers[2].digest in (err.details() or "")
    assert_nothing_left(daemon)
    for name in ("crisp-evil-dotdot", "crisp-evil-absolute", "crisp-evil-symlink"):
        assert not Path("/tmp", name).exists()


def test_corrupted_blob_fails_and_leaves_nothing(tmp_path: Path, daemon: Crispd, images: Images) -> None:
    push = Pusher(images.registry.url)
    bad = image([images.busybox.layers[0], layer([file("to-corrupt", os.urandom(4096))], "plain")],
                labels={"corrupt": str(time.time())})
    push.image("crisp/corrupt", bad, "v1")
    blob = images.registry.blob_file(bad.layers[1].digest)
    data = bytearray(blob.read_bytes())
    data[2000] ^= 0xFF  # same size, different digest
    blob.write_bytes(bytes(data))
    err = rpc_error(pull, daemon, f"{images.registry.host}/crisp/corrupt:v1")
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert bad.layers[1].digest in (err.details() or "") and "digest" in (err.details() or "")
    assert_nothing_left(daemon)


def test_mirrors_from_hosts_toml(daemon: Crispd, certs: Path, images: Images) -> None:
    with socket.socket() as s:  # a port nobody listens on: the first mirror fails, the next one serves
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    hosts_toml(certs, "mirror.crisp.test", f"http://127.0.0.1:{dead}", images.registry.url)
    ref = "mirror.crisp.test/crisp/features:v1"
    assert pull(daemon, ref) == images.features.id
    img = status(daemon, ref).image
    # names stay the upstream's, never the mirror's
    assert list(img.repo_tags) == [ref]
    assert list(img.repo_digests) == [f"mirror.crisp.test/crisp/features@{images.features.digest}"]
    hosts_toml(certs, "down.crisp.test", f"http://127.0.0.1:{dead}", server=f"http://127.0.0.1:{dead}")
    err = rpc_error(pull, daemon, "down.crisp.test/crisp/features:v1")
    assert err.code() is grpc.StatusCode.UNAVAILABLE and str(dead) in (err.details() or "")
    # a loopback registry mirrored to itself: each endpoint is asked once (the error names each one tried)
    hosts_toml(certs, f"127.0.0.1:{dead}", f"http://127.0.0.1:{dead}")
    err = rpc_error(pull, daemon, f"127.0.0.1:{dead}/crisp/features:v1")
    assert (err.details() or "").count(f"http://127.0.0.1:{dead}/v2") == 1, err.details()
    assert (err.details() or "").count(f"https://127.0.0.1:{dead}/v2") == 1, err.details()


# ---------------------------------------------------------------------------------------------------- auth


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory, images: Images) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("basic"), htpasswd={"alice": "wonderland"}) as reg:
        Pusher(reg.url, "alice", "wonderland").image("crisp/busybox", images.busybox, "latest")
        yield reg


def test_basic_auth(tmp_path: Path, certs: Path, daemon: Crispd, basic_registry: Registry, images: Images) -> None:
    ref = f"{basic_registry.host}/crisp/busybox:latest"
    err = rpc_error(pull, daemon, ref)
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION and "credentials" in (err.details() or "")
    err = rpc_error(pull, daemon, ref, cri.AuthConfig(username="alice", password="n0t-Th3-Passw0rd"))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "n0t-Th3-Passw0rd" not in daemon.log()
    assert pull(daemon, ref, cri.AuthConfig(username="alice", password="wonderland")) == images.busybox.id
    remove(daemon, ref)
    token = base64.b64encode(b"alice:wonderland").decode()
    auth = cri.AuthConfig(auth=token, server_address=basic_registry.host)
    assert pull(daemon, ref, auth) == images.busybox.id
    assert "wonderland" not in daemon.log()
    # credentials for another registry are not sent
    err = rpc_error(pull, daemon, ref, cri.AuthConfig(username="alice", password="wonderland",
                                                      server_address="other.example.com"))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    # default credentials per registry from crisp.toml
    configured = _start(tmp_path / "configured", certs,
                        f'[image.auths."{basic_registry.host}"]\nusername = "alice"\npassword = "wonderland"\n')
    try:
        assert pull(configured, ref) == images.busybox.id
        verbose = configured.runtime.Status(cri.StatusRequest(verbose=True)).info["config"]
        assert "wonderland" not in verbose and "<redacted>" in verbose
    finally:
        _stop(configured)


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory, images: Images) -> Iterator[Registry]:
    work = tmp_path_factory.mktemp("token")
    server = TokenServer(work, {"bob": "builder"})
    with running_registry(work / "registry", token=server) as reg:
        Pusher(reg.url, "bob", "builder").image("crisp/busybox", images.busybox, "latest")
        yield reg


def test_bearer_token_auth(daemon: Crispd, token_registry: Registry, images: Images) -> None:
    server = token_registry.token
    assert server is not None
    ref = f"{token_registry.host}/crisp/busybox:latest"
    err = rpc_error(pull, daemon, ref)
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION and "token server" in (err.details() or "")
    server.requests.clear()
    assert pull(daemon, ref, cri.AuthConfig(username="bob", password="builder")) == images.busybox.id
    assert {"scope": "repository:crisp/busybox:pull", "service": "crisp-test"} in server.requests
    remove(daemon, ref)
    # a registry token from the kubelet is used as is
    token = server.token("repository:crisp/busybox:pull")
    assert pull(daemon, ref, cri.AuthConfig(registry_token=token)) == images.busybox.id
    assert token not in daemon.log() and "builder" not in daemon.log()


# ---------------------------------------------------------------------------------------------------- slow pulls


@pytest.fixture
def slow_proxy(images: Images, certs: Path) -> Iterator[SlowProxy]:
    proxy = SlowProxy(images.registry.url, rate=1024 * 1024).start()  # the 3 MiB layer takes ~3 s
    hosts_toml(certs, "slow.crisp.test", f"http://{proxy.host}")
    try:
        yield proxy
    finally:
        proxy.stop()


def test_concurrent_pulls_fetch_once(daemon: Crispd, slow_proxy: SlowProxy, images: Images) -> None:
    ref = "slow.crisp.test/crisp/big:v1"
    results: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(pull(daemon, ref))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [images.big.id] * 3
    assert slow_proxy.blob_requests == 2  # the base layer and the big one, each fetched once
    assert daemon.log().count("joining the pull of slow.crisp.test/crisp/big:v1") == 2


def test_cancelled_pull_leaves_nothing(daemon: Crispd, slow_proxy: SlowProxy, images: Images) -> None:
    ref = "slow.crisp.test/crisp/big:v1"
    err = rpc_error(pull, daemon, ref, timeout=1.0)
    assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert_nothing_left(daemon)
    assert "its last caller went away" in daemon.log()


def test_cancelled_caller_detaches_only_itself(daemon: Crispd, slow_proxy: SlowProxy, images: Images) -> None:
    ref = "slow.crisp.test/crisp/big:v1"
    results: list[str] = []
    patient = threading.Thread(target=lambda: results.append(pull(daemon, ref)))
    patient.start()
    time.sleep(0.3)
    assert rpc_error(pull, daemon, ref, timeout=1.0).code() is grpc.StatusCode.DEADLINE_EXCEEDED
    patient.join()
    assert results == [images.big.id]
    assert status(daemon, ref).image.id == images.big.id
    assert contents(daemon)[2] == []


def test_pull_without_progress_is_aborted(tmp_path: Path, certs: Path, images: Images) -> None:
    proxy = SlowProxy(images.registry.url, stall=True).start()
    hosts_toml(certs, "stall.crisp.test", f"http://{proxy.host}")
    daemon = _start(tmp_path / "c", certs, "pull_progress_timeout_seconds = 2.0\n")
    try:
        err = rpc_error(pull, daemon, "stall.crisp.test/crisp/big:v1")
        assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED and "no progress" in (err.details() or "")
        assert_nothing_left(daemon)
    finally:
        proxy.stop()
        _stop(daemon)


def test_docker_manifest_list(daemon: Crispd, images: Images) -> None:
    push = Pusher(images.registry.url)
    here = host_platform()
    plain = image([images.busybox.layers[0]], docker=True, labels={"list": "docker"})
    push.image("crisp/dockerlist", plain)
    digest = push.manifest("crisp/dockerlist", "v1", index(
        [plain.descriptor({"os": "linux", "architecture": here.architecture})], docker=True), DOCKER_LIST)
    ref = f"{images.registry.host}/crisp/dockerlist:v1"
    assert pull(daemon, ref) == plain.id
    assert list(status(daemon, ref).image.repo_digests) == [f"{images.registry.host}/crisp/dockerlist@{digest}"]
