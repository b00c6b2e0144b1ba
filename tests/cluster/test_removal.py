"""A deleted Deployment leaves nothing of its pods in crisp once the kubelet has collected them (its container GC runs
every minute): no sandbox or container, mount, network namespace pin, cgroup, shim, veth or row; their images stay
pulled, used by no container."""

from __future__ import annotations

import time
from collections.abc import Callable

from cri import api as cri
from tests.cluster.onenode import Cluster
from tests.cluster.workloads import container, deployment, pods
from tests.kubelet.support import wait_until
from tests.leaks import cgroups_under, mounts_under, processes_mentioning, store_rows


def test_a_deleted_deployment_leaves_nothing(cluster: Cluster, record_property: Callable[[str, object], None]) -> None:
    kubectl, crisp = cluster.kubectl, cluster.crisp
    runtime = crisp.daemon.runtime
    kubectl.apply(deployment("doomed", 3, [container("nginx", cluster.nginx, None)]))
    kubectl.run("rollout", "status", "deployment/doomed", "--timeout=180s", timeout=200)
    uids = [p["metadata"]["uid"] for p in pods(kubectl, "doomed")]
    sandboxes = [s for uid in uids for s in runtime.ListPodSandbox(cri.ListPodSandboxRequest(
        filter=cri.PodSandboxFilter(label_selector={"io.kubernetes.pod.uid": uid}))).items]
    containers = [c for s in sandboxes for c in runtime.ListContainers(cri.ListContainersRequest(
        filter=cri.ContainerFilter(pod_sandbox_id=s.id))).containers]
    assert len(sandboxes) == len(containers) == 3
    image = containers[0].image_id
    ids = [*uids, *(s.id for s in sandboxes), *(c.id for c in containers)]

    deleted = time.monotonic()
    kubectl.run("delete", "deployment/doomed")
    wait_until(lambda: pods(kubectl, "doomed") == [], 120, "the pods gone from the API server")

    def collected() -> bool:
        left = {s.id for s in runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items}
        left |= {c.id for c in runtime.ListContainers(cri.ListContainersRequest()).containers}
        return not left & set(ids)

    wait_until(collected, 120, "the pods' sandboxes and containers removed by the kubelet", interval=2)
    record_property("summary", f"the kubelet removed the deleted Deployment's pods from crisp "
                               f"{time.monotonic() - deleted:.0f} s after the deletion")

    assert crisp.daemon.proc is not None
    mounts = mounts_under(crisp.daemon.base, crisp.daemon.proc.pid)  # in crispd's (the node's) mount namespace
    assert [m for m in mounts if any(i in m for i in ids)] == []
    assert [d for d in (crisp.daemon.state / "sandboxes").iterdir() if d.name in ids] == []  # netns pins live there
    assert [c for c in cgroups_under(crisp.cgroup_base) if any(i in c for i in ids)] == []
    assert [p for i in ids for p in processes_mentioning(i)] == []
    assert store_rows(crisp.daemon.root / "crisp.db", ids) == []
    ready = [s for s in runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items
             if s.state == cri.PodSandboxState.SANDBOX_READY]
    assert len(crisp.veths()) == len(ready)  # the pods' veths went with them

    held = runtime.ListContainers(cri.ListContainersRequest()).containers
    assert image in {i.id for i in crisp.daemon.images.ListImages(cri.ListImagesRequest()).images}
    assert [c.id for c in held if c.image_id == image] == []
