"""The sysctl rulebook (runtime.namespaces.sysctl): one answer for RunPodSandbox, the container spec and the
executor. Three copies of these rules once disagreed: a pod with kernel.domainname or kernel.shm_next_id was run,
and every container in it refused."""

from __future__ import annotations

import pytest

from cri import api as pb
from cri.oci.spec import pod_sysctls
from runtime import errors
from runtime.executor import sysctls as executor_sysctls
from runtime.executor.oci import Linux, Namespace
from runtime.namespaces.sysctl import (
    IPC,
    NET,
    UTS,
    check_sysctls,
    normalize_sysctl,
    pod_host_namespaces,
    sysctl_namespace,
    sysctl_path,
)


@pytest.mark.parametrize(("name", "kind"), [
    ("net.ipv4.ip_forward", NET), ("net/ipv4/conf/eth0.100/forwarding", NET),
    ("kernel.shmmax", IPC), ("kernel.shm_rmid_forced", IPC), ("kernel.shm_next_id", IPC), ("kernel.msgmax", IPC),
    ("kernel.msg_next_id", IPC), ("kernel.sem", IPC), ("kernel.sem_next_id", IPC), ("fs.mqueue.msg_max", IPC),
    ("kernel.domainname", UTS), ("kernel.hostname", UTS),
    ("kernel.panic", None), ("vm.swappiness", None), ("kernel.pid_max", None), ("fs.file-max", None),
])
def test_which_namespace_a_sysctl_lives_in(name: str, kind: str | None) -> None:
    assert sysctl_namespace(name) == kind


def test_names_and_paths() -> None:
    assert normalize_sysctl("net.ipv4.ip_forward") == "net.ipv4.ip_forward"
    assert normalize_sysctl("net/ipv4/conf/eth0.100/forwarding") == "net.ipv4.conf.eth0/100.forwarding"
    # dotted with a literal '/' in a component: left as it is
    assert normalize_sysctl("net.ipv4.conf.eth0/100.rp_filter") == "net.ipv4.conf.eth0/100.rp_filter"
    assert sysctl_path("net.ipv4.conf.eth0/100.rp_filter") == "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"
    assert sysctl_path("kernel/shm_rmid_forced") == "/proc/sys/kernel/shm_rmid_forced"
    for bad in ("net..x", "net.ipv4./..", ".net"):
        with pytest.raises(errors.InvalidArgument, match="not a valid sysctl name"):
            sysctl_path(bad)


def test_refusals() -> None:
    own = pod_host_namespaces(host_network=False, host_ipc=False)
    assert check_sysctls({"kernel/shm_rmid_forced": "1", "net.core.somaxconn": "9"}, own) == {
        "kernel.shm_rmid_forced": "1", "net.core.somaxconn": "9"}
    with pytest.raises(errors.InvalidArgument, match="not namespaced"):
        check_sysctls({"kernel.panic": "1"}, own)
    with pytest.raises(errors.InvalidArgument, match="hostname instead"):
        check_sysctls({"kernel.hostname": "x"}, own)
    with pytest.raises(errors.InvalidArgument, match="one line"):
        check_sysctls({"net.core.somaxconn": "1\n2"}, own)
    host_net = pod_host_namespaces(host_network=True, host_ipc=False)
    with pytest.raises(errors.InvalidArgument, match="host network"):
        check_sysctls({"net.ipv4.ip_forward": "1"}, host_net)
    with pytest.raises(errors.InvalidArgument, match="host UTS"):
        check_sysctls({"kernel.domainname": "x"}, host_net)  # a host-network pod has the node's UTS namespace
    with pytest.raises(errors.InvalidArgument, match="host IPC"):
        check_sysctls({"kernel.shm_next_id": "1"}, pod_host_namespaces(host_network=False, host_ipc=True))


@pytest.mark.parametrize("sysctl", ["kernel.domainname", "kernel.shm_next_id", "net.ipv4.ip_forward",
                                    "fs.mqueue.msg_max"])
def test_the_pod_the_spec_and_the_executor_agree(sysctl: str) -> None:
    """What RunPodSandbox accepts, CreateContainer writes into the spec and the executor accepts."""
    sandbox = pb.PodSandboxConfig()
    sandbox.linux.sysctls[sysctl] = "7"
    accepted = check_sysctls(sandbox.linux.sysctls, pod_host_namespaces(host_network=False, host_ipc=False))
    assert pod_sysctls(sandbox) == accepted == {sysctl: "7"}
    # the container's spec: the pod's namespaces, joined by path
    linux = Linux(namespaces=tuple(Namespace(t) for t in ("network", "ipc", "uts", "mount")), sysctl=accepted)
    executor_sysctls.check_sysctls(linux)
