"""Processes crisp leaves running are findable by name: each shim is `crisp-shim <container id>` (comm and command
line), a shared-PID pod's PID 1 is `catatonit -P` (Debian's; the pod's PID namespace pin tells which pod's), and
nothing else of crisp's lingers; inside a container no process shows a host path. Checked with ps and pgrep as an
operator would. A pod's network namespace has a name `ip netns` knows."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cri import api as cri
from tests.cri.pods import pod_config, running_pods
from tests.cri.test_containers import Kubelet
from tests.leaks import mounts_under, processes_mentioning

if TYPE_CHECKING:
    from tests.cri.conftest import TestImages
    from tests.cri.pods import Pods

pytestmark = pytest.mark.root

CHECKOUT = str(Path(__file__).resolve().parents[2])


def pgrep(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def ps(pid: int, fields: str) -> str:
    return subprocess.run(["ps", "-o", f"{fields}=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize("handler", ["", "runc"], ids=["builtin", "runc"])
def test_shims_and_pod_inits_name_themselves(pods: Pods, test_images: TestImages, tmp_path: Path,
                                             handler: str) -> None:
    pods.handler = handler
    kubelet = Kubelet(pods, test_images, tmp_path / "logs")
    pod_id, pod = kubelet.pod()
    container_id = kubelet.run(pod_id, pod, "app", ["sleep", "1000"])
    other = kubelet.run(pod_id, pod, "other", ["sleep", "1000"])

    (shim,) = pgrep(f"^crisp-shim {container_id}$")
    assert ps(shim, "comm") == "crisp-shim"
    assert ps(shim, "args") == f"crisp-shim {container_id}"
    assert int(ps(shim, "rss")) > 0  # per-shim memory, as an operator would read it
    assert len(pgrep(f"^crisp-shim ({container_id}|{other})$")) == 2  # one shim per container
    # catatonit does not say whose it is: its PID namespace, the one pinned in the pod's dir, does
    pid_pin = pods.daemon.state / "sandboxes" / pod_id / "ns" / "pid"
    (init,) = [pid for pid in pgrep("^catatonit -P$")
               if os.readlink(f"/proc/{pid}/ns/pid") == f"pid:[{os.stat(pid_pin).st_ino}]"]
    assert ps(init, "comm") == "catatonit"
    assert ps(init, "args") == "catatonit -P"
    # nothing else of crisp's runs: what works in the state dir is crispd (it names it in its flags), the shims
    # and the pod init (their cwd, their log files), each found by its name
    crispd = pods.daemon.proc.pid if pods.daemon.proc else 0
    users = {int(p.split(":")[0]) for p in processes_mentioning(str(pods.daemon.state))}
    assert users == {crispd, init, *pgrep(f"^crisp-shim ({container_id}|{other})$")}

    # inside the container: PID 1 is the pod init, and no process shows a host path
    assert kubelet.exec(container_id, ["cat", "/proc/1/comm"]).stdout == b"catatonit\n"
    assert kubelet.exec(container_id, ["cat", "/proc/1/cmdline"]).stdout == b"catatonit\0-P\0"
    seen = kubelet.exec(container_id, ["sh", "-c", "for p in /proc/[0-9]*; do cat $p/comm $p/cmdline; echo; done"])
    assert seen.exit_code == 0 and b"sleep" in seen.stdout
    for host_path in (CHECKOUT, str(pods.daemon.base), "/.venv/", "python"):
        assert host_path.encode() not in seen.stdout, seen.stdout


NETNS_DIR = Path("/run/netns")


def ip_netns_names() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def test_pod_network_namespaces_have_ip_netns_names(tmp_path: Path) -> None:
    """crisp-<pod id> in /run/netns, as CRI-O and containerd pin theirs: `ip netns exec` enters the pod's network;
    the name goes with the pod's network namespace (at StopPodSandbox), a host-network pod has none."""
    with running_pods(tmp_path, netns_dir=NETNS_DIR) as pods:
        pod_id = pods.run(pod_config())
        name = f"crisp-{pod_id}"
        assert name in ip_netns_names()
        response = pods.daemon.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id,
                                                                                    verbose=True))
        info = json.loads(response.info["info"])
        assert info["netnsPath"] == str(NETNS_DIR / name)
        assert os.stat(NETNS_DIR / name).st_ino == os.stat(info["netns"]).st_ino  # the same namespace
        inside = subprocess.run(["ip", "netns", "exec", name, "ip", "-o", "-4", "addr", "show", "eth0"],
                                capture_output=True, text=True)
        assert inside.returncode == 0 and f"inet {response.status.network.ip}/" in inside.stdout

        host = pod_config("host")
        host.linux.security_context.namespace_options.network = cri.NODE
        host_id = pods.run(host)
        assert f"crisp-{host_id}" not in ip_netns_names()

        # StopPodSandbox lets the pod's network namespace go (its network is torn down): the name goes with it
        pods.daemon.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        assert name not in ip_netns_names() and not (NETNS_DIR / name).exists()
        assert str(NETNS_DIR / name) not in mounts_under(NETNS_DIR)
        pods.daemon.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        assert name not in ip_netns_names() and not (NETNS_DIR / name).exists()
