"""The test images (tests/images) as crisp sees them: every upstream name pulls from the loopback registry through
hosts.toml and keeps its upstream name, the lists' second platform is a real arm64 image, and nginx serves HTTP."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from cri import api as cri
from tests.cri.pods import Pods, pod_config, running_pods
from tests.images import BUSYBOX, NGINX, PAUSE, Served, serve
from tests.imagetools import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from tests.leaks import wait_until

pytestmark = pytest.mark.root

ANY_MANIFEST = ", ".join((DOCKER_LIST, OCI_INDEX, DOCKER_MANIFEST, OCI_MANIFEST))
ELF_MACHINE = {"amd64": 62, "arm64": 183}  # e_machine of x86-64 and AArch64


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if os.geteuid() != 0 or shutil.which("docker-registry") is None:
        pytest.skip("needs root and docker-registry (make test installs it)")
    with serve(tmp_path_factory.mktemp("images")) as s:
        yield s


@pytest.fixture
def crisp(tmp_path: Path, served: Served) -> Iterator[Pods]:
    # what is judged here is the images; whether crispd's loop blocks is tests/cri's to judge
    with running_pods(tmp_path, served.crisp_config, check_slow_callbacks=False) as p:
        yield p


def test_every_upstream_name_pulls_from_loopback_and_keeps_its_name(crisp: Pods, served: Served) -> None:
    images = crisp.daemon.images
    assert {BUSYBOX, NGINX, PAUSE} <= set(served.images.refs)
    for ref, digest in sorted(served.images.refs.items()):
        image_ref = images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=60).image_ref
        status = images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=ref))).image
        assert status.id == image_ref
        assert ref in status.repo_tags
        assert f"{ref.rsplit(':', 1)[0]}@{digest}" in status.repo_digests
    # one image under two registries' names (critest's "same image, different registries")
    same = {images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=name))).image.id
            for name in ("registry.k8s.io/pause:3.9", "k8s.gcr.io/pause:3.9")}
    assert len(same) == 1


def _get(served: Served, repo: str, ref: str, accept: str) -> urllib3.BaseHTTPResponse:
    response = urllib3.PoolManager().request("GET", f"http://{served.registry}/v2/{repo}/{ref}",
                                             headers={"Accept": accept})
    assert response.status == 200, (repo, ref, response.status)
    return response


def test_lists_hold_an_amd64_and_a_real_arm64_image(served: Served) -> None:
    lists = 0
    for ref in served.images.refs:
        name, tag = ref.rsplit(":", 1)
        repo = name.split("/", 1)[1]
        top = json.loads(_get(served, repo, f"manifests/{tag}", ANY_MANIFEST).data)
        if "manifests" not in top:
            continue
        lists += 1
        for entry in top["manifests"]:
            arch = entry["platform"]["architecture"]
            manifest = json.loads(_get(served, repo, f"manifests/{entry['digest']}", entry["mediaType"]).data)
            machines = set()
            for layer in manifest["layers"]:
                blob = _get(served, repo, f"blobs/{layer['digest']}", "*/*").data
                with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
                    for member in tar.getmembers():
                        data = tar.extractfile(member) if member.isfile() else None
                        head = data.read(20) if data else b""
                        if head[:4] == b"\x7fELF" and member.mode & 0o111:
                            machines.add(int.from_bytes(head[18:20], "little"))
            assert machines == {ELF_MACHINE[arch]}, (ref, arch, machines)
    assert lists >= 10


def _run(crisp: Pods, pod_id: str, pod: cri.PodSandboxConfig, image: str, name: str,
         command: list[str] | None = None) -> str:
    rt = crisp.daemon.runtime
    crisp.daemon.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=image)), timeout=60)
    # a PID namespace of the container's own, as the kubelet asks unless the pod shares one
    linux = cri.LinuxContainerConfig(security_context=cri.LinuxContainerSecurityContext(
        namespace_options=cri.NamespaceOption(pid=cri.CONTAINER)))
    config = cri.ContainerConfig(metadata=cri.ContainerMetadata(name=name), image=cri.ImageSpec(image=image),
                                 command=command or [], log_path=f"{name}.log", linux=linux)
    container_id = rt.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=config,
                                                                 sandbox_config=pod)).container_id
    rt.StartContainer(cri.StartContainerRequest(container_id=container_id))
    return str(container_id)


def test_nginx_serves_its_page_and_logs_to_the_container_log(crisp: Pods, tmp_path: Path) -> None:
    pod = pod_config("nginx")
    pod.log_directory = str(tmp_path / "logs")
    pod_id = crisp.run(pod)
    nginx = _run(crisp, pod_id, pod, NGINX, "nginx")
    ip = crisp.daemon.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status.network.ip
    http = urllib3.PoolManager(retries=False, timeout=2)
    pages: list[bytes] = []

    def fetched() -> bool:
        try:
            pages.append(http.request("GET", f"http://{ip}/").data)
            return True
        except urllib3.exceptions.HTTPError:
            return False

    assert wait_until(fetched, 20)
    assert b"Welcome to nginx" in pages[-1]
    # the master process is PID 1 and wrote its pid where critest's HostPID spec reads it
    answer = crisp.daemon.runtime.ExecSync(cri.ExecSyncRequest(
        container_id=nginx, cmd=["sh", "-c", "cat /var/run/nginx.pid; cat /proc/1/cmdline"], timeout=10))
    assert answer.exit_code == 0, answer.stderr
    assert answer.stdout.startswith(b"1\n") and b"master process" in answer.stdout
    log = tmp_path / "logs" / "nginx.log"
    assert wait_until(lambda: log.exists() and b"GET / HTTP/1.1" in log.read_bytes(), 10)


def test_busybox_applets_are_programs_of_their_own(crisp: Pods) -> None:
    """Every applet is exec'd (a hard link to busybox, not a builtin of the shell): what MaskedPaths relies on."""
    pod = pod_config("applets")
    pod_id = crisp.run(pod)
    container = _run(crisp, pod_id, pod, BUSYBOX, "busybox", ["sleep", "600"])
    time.sleep(0.2)
    rt = crisp.daemon.runtime
    script = "ls -i /bin/ls /bin/busybox | awk '{print $1}' | uniq | wc -l; pgrep sleep; ipcs -m | head -3"
    answer = rt.ExecSync(cri.ExecSyncRequest(container_id=container, cmd=["sh", "-c", script], timeout=10))
    assert answer.exit_code == 0, answer.stderr
    lines = answer.stdout.decode().splitlines()
    assert lines[0].strip() == "1"  # one inode
    assert lines[1] == "1"  # sleep is PID 1
    assert "Shared Memory Segments" in answer.stdout.decode()
