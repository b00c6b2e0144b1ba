"""A failed test leaves nothing on the host either. Its crispd stops with pods still running, and their shims outlive
crispd by design. `Pods.cleanup_host`, the last step of every test that runs a crispd, kills what crispd left
running (containers, pod inits, shims) and removes its cgroups."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cri import api as cri
from runtime.cgroups import CgroupV2Manager
from tests.cri.conftest import TestImages
from tests.cri.pods import Pods, pod_config
from tests.leaks import cgroups_under, mounts_under, processes_mentioning, wait_until


def _in_cgroups(base: str) -> list[int]:
    mount = CgroupV2Manager.discover().mount
    return [int(pid) for cgroup in cgroups_under(base)
            for pid in (mount / cgroup / "cgroup.procs").read_text().split()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Running, not dead (a zombie waits for PID 1 of the host to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_cleanup_host_after_a_test_that_failed_with_pods_running(tmp_path: Path, test_images: TestImages) -> None:
    p = Pods(tmp_path)
    p.daemon.start()
    try:
        p.daemon.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=test_images.busybox)), timeout=60)
        config = pod_config()  # a shared PID namespace: the pod has an init
        pod_id = p.run(config)
        container = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="app"), command=["sleep", "1000"],
                                        image=cri.ImageSpec(image=test_images.busybox))
        container_id = p.daemon.runtime.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=container, sandbox_config=config)).container_id
        p.daemon.runtime.StartContainer(cri.StartContainerRequest(container_id=container_id))
        # the test "fails" here: crispd stops, the pod and its container stay
        assert p.daemon.stop() == 0
        left = _in_cgroups(p.cgroup_base)
        assert {"catatonit", "sleep"} <= {_comm(pid) for pid in left}
        assert any(_comm(int(entry.split(":")[0])) == "crisp-shim"
                   for entry in processes_mentioning(str(p.daemon.state)))
        for m in reversed(mounts_under(tmp_path)):
            subprocess.run(["umount", "-l", m], check=False)
        p.cleanup_host()
        assert processes_mentioning(str(p.daemon.state)) == []
        assert cgroups_under(p.cgroup_base) == []
        # (a pod init killed as its PID namespace's PID 1 sleeps in its exit until the kernel reaped the rest)
        assert wait_until(lambda: [pid for pid in left if _alive(pid)] == [], 5)
    finally:
        p.daemon.stop()
        for m in reversed(mounts_under(tmp_path)):
            subprocess.run(["umount", "-l", m], check=False)
        p.cleanup_host()
