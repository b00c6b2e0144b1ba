"""Pods over the real socket: pinned namespaces, pod cgroup, files, /dev/shm, shared PID namespace, rollback."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

import grpc
import pytest

from cri import api as cri
from runtime import failpoints
from runtime.cgroups import CgroupV2Manager
from runtime.procs import process_start_time
from tests.cri.pods import Pods, pod_config
from tests.leaks import mounts_under, processes_mentioning, store_rows, wait_until

pytestmark = pytest.mark.root

FAIL_POINTS = failpoints.STEPS["RunPodSandbox"]


def nsenter(*args: str) -> str:
    return subprocess.run(["nsenter", *args], check=True, capture_output=True, text=True).stdout.strip()


def ns_inode(path: str) -> int:
    return os.stat(path).st_ino


def test_run_status_stop_remove(pods: Pods) -> None:
    config = pod_config(dns_config=cri.DNSConfig(servers=["10.96.0.10"], searches=["default.svc", "svc"],
                                                  options=["ndots:5"]))
    config.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "80"
    config.linux.sysctls["kernel.shm_rmid_forced"] = "1"
    pod_id = pods.run(config)
    rt = pods.daemon.runtime

    response = rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
    status = response.status
    assert status.id == pod_id and status.state == cri.SANDBOX_READY
    assert status.metadata.name == "web" and status.labels["app"] == "web" and status.annotations["note"] == "x"
    assert status.created_at > 0 and response.timestamp >= status.created_at
    info = json.loads(response.info["info"])
    ns = info["namespaces"]
    assert set(ns) == {"net", "ipc", "uts", "pid"}

    # every namespace is new, and what the pod asked for is set inside it
    for kind in ("net", "ipc", "uts", "pid"):
        assert ns_inode(ns[kind]) != ns_inode(f"/proc/self/ns/{kind}")
    assert nsenter(f"--uts={ns['uts']}", "hostname") == "web-host"
    assert nsenter(f"--net={ns['net']}", "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start") == "80"
    assert "UP" in nsenter(f"--net={ns['net']}", "ip", "-o", "link", "show", "lo")
    assert nsenter(f"--ipc={ns['ipc']}", "cat", "/proc/sys/kernel/shm_rmid_forced") == "1"
    # the pod is on the pod network, with an address from the pod CIDR on eth0
    ip = status.network.ip
    assert ipaddress.ip_address(ip) in pods.subnet
    assert f"inet {ip}/" in nsenter(f"--net={ns['net']}", "ip", "-o", "-4", "addr", "show", "eth0")
    pod_dir = Path(info["dir"])
    assert (pod_dir / "resolv.conf").read_text() == (
        "search default.svc svc\nnameserver 10.96.0.10\noptions ndots:5\n")
    assert (pod_dir / "hostname").read_text() == "web-host\n"
    assert "localhost" in (pod_dir / "hosts").read_text()
    shm = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
           if line.split()[4] == str(pod_dir / "shm")]
    assert len(shm) == 1 and " tmpfs " in shm[0] and "size=65536k" in shm[0]
    assert all(opt in shm[0] for opt in ("nosuid", "nodev", "noexec"))

    # the pod's PID 1 lives in the new PID namespace, in its own leaf of the pod cgroup
    pid = info["pid"]
    assert pid > 0 and os.readlink(f"/proc/{pid}/ns/pid") == f"pid:[{ns_inode(ns['pid'])}]"
    cgroup = info["cgroup"]
    assert cgroup == f"{pods.cgroup_base}/poduid-web"
    assert Path(f"/proc/{pid}/cgroup").read_text().strip().endswith(f"{cgroup}/crisp-{pod_id}")

    # stop: everything in the pod dies, its network goes (address, veth and the netns pin), the record stays
    assert f"ip_leases {pod_id}" in store_rows(pods.daemon.root / "crisp.db", [pod_id])
    rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert process_start_time(pid) is None  # gone, or a zombie of the host's init (the pod init is nobody's child)
    status = rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    assert status.state == cri.SANDBOX_NOTREADY and status.network.ip == ""
    assert store_rows(pods.daemon.root / "crisp.db", [pod_id]) == [f"sandboxes {pod_id}",
                                                                  f"name_reservations {pod_id}"]
    assert ns["net"] not in mounts_under(pod_dir) and not os.path.exists(ns["net"])
    assert [leak for leak in pods.leaks() if leak.startswith("veth")] == []
    rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))  # idempotent

    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert pods.leaks() == []
    with pytest.raises(grpc.RpcError) as err:
        rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))  # idempotent
    # the name is free again
    pods.run(pod_config())


def test_stop_and_remove_of_unknown_pods_are_ok(pods: Pods) -> None:
    pods.daemon.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id="doesnotexist"))
    pods.daemon.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id="doesnotexist"))


def test_an_ambiguous_pod_id_is_invalid_for_every_rpc(pods: Pods) -> None:
    """A prefix of two pods' ids names neither: INVALID_ARGUMENT, for Stop and Remove too (they once answered OK
    and did nothing); an unknown id is OK for Stop and Remove, NOT_FOUND for the others."""
    rt = pods.daemon.runtime
    by_first: dict[str, str] = {}
    prefix = ""
    for i in range(17):  # 16 hex digits: two of 17 pods start alike for sure (usually within a few)
        config = pod_config(f"p{i}")
        config.linux.security_context.namespace_options.network = cri.NODE  # no pod network: quicker
        pod_id = pods.run(config)
        if pod_id[0] in by_first:
            prefix = pod_id[0]
            break
        by_first[pod_id[0]] = pod_id
    assert prefix
    for call in (lambda: rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=prefix)),
                 lambda: rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=prefix)),
                 lambda: rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=prefix))):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert "ambiguous" in (err.value.details() or "")
    ready = rt.ListPodSandbox(cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(
        state=cri.PodSandboxStateValue(state=cri.SANDBOX_READY)))).items
    assert len(ready) == len(by_first) + 1  # nothing was stopped
    with pytest.raises(grpc.RpcError) as err:
        rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id="doesnotexist"))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


def test_remove_without_stop(pods: Pods) -> None:
    pod_id = pods.run(pod_config())
    pods.daemon.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert pods.leaks() == []


def test_host_namespaces(pods: Pods) -> None:
    config = pod_config("hostpod")
    config.linux.security_context.namespace_options.CopyFrom(
        cri.NamespaceOption(network=cri.NODE, ipc=cri.NODE, pid=cri.NODE))
    pod_id = pods.run(config)
    response = pods.daemon.runtime.PodSandboxStatus(
        cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
    info = json.loads(response.info["info"])
    assert info["namespaces"] == {}
    assert info["pid"] == 0
    assert info["hostname"] == os.uname().nodename  # a host-network pod keeps the node's name
    assert not (Path(info["dir"]) / "shm").exists()
    assert response.status.network.ip == ""
    opts = response.status.linux.namespaces.options
    assert (opts.network, opts.ipc, opts.pid) == (cri.NODE, cri.NODE, cri.NODE)
    pods.daemon.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_container_pid_namespace_has_no_pod_init(pods: Pods) -> None:
    config = pod_config("nopid")
    config.linux.security_context.namespace_options.pid = cri.CONTAINER
    pod_id = pods.run(config)
    info = json.loads(pods.daemon.runtime.PodSandboxStatus(
        cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)).info["info"])
    assert "pid" not in info["namespaces"] and info["pid"] == 0
    crispd = str(pods.daemon.proc.pid if pods.daemon.proc else "")
    assert [p for p in processes_mentioning(str(pods.daemon.state)) if p.split(":")[0] != crispd] == []


def test_pod_without_hostname_gets_the_nodes(pods: Pods) -> None:
    config = pod_config("nameless-" + "x" * 70)  # a long pod name is no hostname
    config.hostname = ""
    pod_id = pods.run(config)
    info = json.loads(pods.daemon.runtime.PodSandboxStatus(
        cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)).info["info"])
    assert nsenter(f"--uts={info['namespaces']['uts']}", "hostname") == os.uname().nodename


def test_list_filters(pods: Pods) -> None:
    a = pods.run(pod_config("a"))
    b = pods.run(pod_config("b"))
    rt = pods.daemon.runtime
    rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=b))

    def ids(flt: cri.PodSandboxFilter | None = None) -> list[str]:
        return [p.id for p in rt.ListPodSandbox(cri.ListPodSandboxRequest(filter=flt)).items]

    assert ids() == [a, b]
    assert ids(cri.PodSandboxFilter(id=a)) == [a]
    assert ids(cri.PodSandboxFilter(id=b[:12])) == [b]
    assert ids(cri.PodSandboxFilter(state=cri.PodSandboxStateValue(state=cri.SANDBOX_READY))) == [a]
    assert ids(cri.PodSandboxFilter(state=cri.PodSandboxStateValue(state=cri.SANDBOX_NOTREADY))) == [b]
    assert ids(cri.PodSandboxFilter(label_selector={"app": "b"})) == [b]
    assert ids(cri.PodSandboxFilter(label_selector={"app": "c"})) == []
    # a truncated id works everywhere
    assert rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=a[:10])).status.id == a

    # the streamed list (the kubelet's CRIListStreaming) gives what ListPodSandbox gives, with the same filter
    def streamed(flt: cri.PodSandboxFilter | None = None) -> list[str]:
        pages = rt.StreamPodSandboxes(cri.StreamPodSandboxesRequest(filter=flt), timeout=10)
        return [p.id for page in pages for p in page.pod_sandboxes]

    assert streamed() == [a, b]
    assert streamed(cri.PodSandboxFilter(label_selector={"app": "b"})) == [b]
    assert streamed(cri.PodSandboxFilter(label_selector={"app": "c"})) == []
    stats = rt.StreamPodSandboxStats(cri.StreamPodSandboxStatsRequest(), timeout=10)
    assert sorted(s.attributes.id for page in stats for s in page.pod_sandbox_stats) == [a]  # the ready one
    assert list(rt.StreamContainers(cri.StreamContainersRequest(), timeout=10)) == []


def test_duplicate_name_is_already_exists(pods: Pods) -> None:
    first = pods.run(pod_config("dup"))
    with pytest.raises(grpc.RpcError) as err:
        pods.run(pod_config("dup"))
    assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert first in (err.value.details() or "")
    assert len(pods.daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items) == 1


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.linux.sysctls.__setitem__("kernel.pid_max", "100000"), "not namespaced"),
        (lambda c: c.metadata.__setattr__("uid", ""), "needs a name, a namespace and a uid"),
        (lambda c: (c.linux.security_context.namespace_options.__setattr__("network", cri.NODE),
                    c.linux.sysctls.__setitem__("net.ipv4.ip_forward", "1")), "host network"),
        (lambda c: c.linux.security_context.namespace_options.__setattr__("pid", cri.TARGET), "TARGET"),
        (lambda c: c.__setattr__("hostname", "h" * 65), "not a valid hostname"),
    ],
)
def test_bad_requests_are_invalid_and_leave_nothing(pods: Pods, mutate: object, message: str) -> None:
    config = pod_config("bad")
    assert callable(mutate)
    mutate(config)
    with pytest.raises(grpc.RpcError) as err:
        pods.run(config)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")
    assert pods.leaks() == []
    assert pods.daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items == []


def test_namespaces_the_kernel_refuses_leave_no_network_behind(pods: Pods) -> None:
    """A sysctl value only the kernel refuses fails the pod while its namespaces are set up, with the first half of
    its network setup under way alongside (cri/lifecycle/pods.py): INVALID_ARGUMENT in the kernel's words, and
    nothing left, no address lease and no veth included."""
    config = pod_config("refused")
    config.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "not-a-number"
    with pytest.raises(grpc.RpcError) as err:
        pods.run(config)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "Invalid argument" in (err.value.details() or "")
    assert pods.leaks() == []
    pods.run(pod_config("refused"))  # the name is free, and the network attaches the next pod


def test_unknown_runtime_handler(pods: Pods) -> None:
    with pytest.raises(grpc.RpcError) as err:
        pods.run(pod_config(), handler="kata")
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "kata" in (err.value.details() or "")
    assert pods.leaks() == []
    pods.run(pod_config())  # the name was not kept


@pytest.mark.parametrize("point", FAIL_POINTS)
def test_failure_mid_run_leaves_nothing(tmp_path: Path, point: str) -> None:
    p = Pods(tmp_path, debug_config=f'fail_points = ["{point}"]\n')
    p.daemon.start()
    try:
        with pytest.raises(grpc.RpcError) as err:
            p.run(pod_config())
        assert err.value.code() is grpc.StatusCode.INTERNAL
        assert f"injected failure at {point}" in (err.value.details() or "")
        assert wait_until(lambda: p.leaks() == [], 5), p.leaks()
        assert p.daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items == []
    finally:
        assert p.daemon.stop() == 0
        p.cleanup_host()
    assert p.daemon.slow_callbacks() == []
    # and the database holds no row: a new crispd on the same root lists nothing, the name is free
    again = Pods(tmp_path, name="again")
    again.cgroup_base, again.bridge, again.subnet = p.cgroup_base, p.bridge, p.subnet
    again.rewrite_config()
    again.daemon.start()
    try:
        assert again.daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items == []
        pod_id = again.run(pod_config())
        again.daemon.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    finally:
        assert again.daemon.stop() == 0
        again.cleanup_host()


def test_pods_survive_a_restart(tmp_path: Path) -> None:
    p = Pods(tmp_path)
    p.daemon.start()
    try:
        keep = p.run(pod_config("keep"))
        lose = p.run(pod_config("lose"))
        info = json.loads(p.daemon.runtime.PodSandboxStatus(
            cri.PodSandboxStatusRequest(pod_sandbox_id=lose, verbose=True)).info["info"])
        assert p.daemon.stop() == 0
        os.kill(info["pid"], 9)  # its pod init dies while crispd is down
        # nobody's child: until the host's init reaps it, it is a zombie, which counts as gone
        assert wait_until(lambda: process_start_time(info["pid"]) is None)
        p.daemon.start()
        items = {i.id: i.state for i in p.daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items}
        assert items == {keep: cri.SANDBOX_READY, lose: cri.SANDBOX_NOTREADY}
        with pytest.raises(grpc.RpcError) as err:
            p.run(pod_config("keep"))
        assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS  # names are remembered too
        for pod_id in (keep, lose):
            p.daemon.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        assert p.leaks() == []
    finally:
        p.daemon.stop()
        for m in reversed(mounts_under(tmp_path)):
            subprocess.run(["umount", "-l", m], check=False)
        p.cleanup_host()


def test_pod_cgroup_from_cgroup_parent(pods: Pods) -> None:
    config = pod_config("parented")
    config.linux.cgroup_parent = f"{pods.cgroup_base}/kubepods/burstable/podabc"
    pod_id = pods.run(config)
    manager = CgroupV2Manager.discover()
    assert (manager.mount / config.linux.cgroup_parent.lstrip("/")).is_dir()
    pods.daemon.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_a_refused_cgroup_parent_leaves_the_name_free(pods: Pods) -> None:
    """A cgroup parent crisp refuses is INVALID_ARGUMENT, and the pod's name is not left reserved (it was, until
    a kubelet whose cgroup parents the systemd driver did not take retried in vain for as long as it ran)."""
    config = pod_config("refused")
    config.linux.cgroup_parent = f"{pods.cgroup_base}/bad name"
    with pytest.raises(grpc.RpcError) as err:
        pods.run(config)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    config.linux.cgroup_parent = ""
    pod_id = pods.run(config)
    pods.daemon.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_retry_after_the_caller_gave_up_gets_the_pod(tmp_path: Path) -> None:
    p = Pods(tmp_path, debug_config='[debug.delay_points]\n"run_pod_sandbox.network" = 1500\n')
    p.daemon.start()
    try:
        request = cri.RunPodSandboxRequest(config=pod_config("slow"))
        with pytest.raises(grpc.RpcError) as err:
            p.daemon.runtime.RunPodSandbox(request, timeout=0.5)  # the kubelet's deadline passes
        assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(grpc.RpcError) as err:  # still being created: the name is taken
            p.daemon.runtime.RunPodSandbox(request)
        assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS
        assert wait_until(lambda: len(p.daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items) == 1)
        created = p.daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items[0].id
        assert p.daemon.runtime.RunPodSandbox(request).pod_sandbox_id == created  # the retry gets it
        with pytest.raises(grpc.RpcError) as err:  # only once: a later duplicate is a conflict again
            p.daemon.runtime.RunPodSandbox(request)
        assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS
        p.daemon.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=created))
        assert p.leaks() == []
    finally:
        assert p.daemon.stop() == 0
        p.cleanup_host()


def test_many_pod_cycles_leave_nothing_and_keep_fds(pods: Pods) -> None:
    assert pods.daemon.proc is not None
    fd_dir = Path(f"/proc/{pods.daemon.proc.pid}/fd")

    def cycle(i: int) -> None:
        pod_id = pods.run(pod_config(f"cycle{i}"))
        pods.daemon.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        pods.daemon.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

    for i in range(10):  # warm up: helper pools, thread pools, sockets
        cycle(i)
    fds = len(list(fd_dir.iterdir()))
    for i in range(10, 200):
        cycle(i)
    assert pods.leaks() == []
    assert len(list(fd_dir.iterdir())) <= fds + 2  # no growth (a pooled helper may come or go)
