"""The kubelet's QoS cgroup path (`cgroupsPerQOS: true`, the default) on crisp, where it can run: the pure cgroup v2
guest. The kubelet makes /kubepods and its QoS and pod cgroups itself and hands crisp the pod's cgroup as
`cgroup_parent`; crisp puts the containers below it, enforces their limits there and leaves the kubelet's cgroups to
the kubelet. The tier on the host (tests/kubelet) cannot: a hybrid host counts as cgroup v1 for the kubelet.

The guest has no network and no tool cache: the host's VM tier puts the kubelet and the built image set into the io
share (`inputs/`) when this file's tests are selected."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cri import api as cri
from tests.cri.pods import Pods
from tests.images import BUSYBOX, ImageSet, serve
from tests.kubelet.kubelet import Kubelet
from tests.kubelet.support import container, container_id, is_ready, pod_manifest, wait_pod, wait_until
from tests.vm.guest.support import cgroup2_mount

INPUTS = Path("/run/crisp-vm/io/inputs")
MiB = 1 << 20
# under the guest's software emulation a kubelet start and a pod start take a while
SLOW = 300


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Kubelet, Pods]]:
    missing = INPUTS / "missing"
    if missing.exists():
        pytest.fail(f"the host could not provide the kubelet's inputs: {missing.read_text()}", pytrace=False)
    base = tmp_path_factory.mktemp("kubelet-qos")
    (base / "crispd").mkdir()
    leaks: list[str] = []
    codes: dict[str, int | None] = {}
    with contextlib.ExitStack() as stack:
        served = stack.enter_context(serve(base / "images", ImageSet.load(INPUTS / "images")))
        crisp = Pods(base / "crispd", extra_config=served.crisp_config)
        stack.callback(crisp.cleanup_host)
        crisp.daemon.start(timeout=SLOW)
        stack.callback(lambda: codes.setdefault("crispd", crisp.daemon.stop(signal.SIGTERM, timeout=120)))
        stack.callback(lambda: leaks.extend(crisp.leaks()))
        stack.callback(crisp.remove_all_pods, 120)
        # the defaults this tier's host run has to turn off: QoS cgroups, node allocatable enforced on /kubepods,
        # and refusing a host that is not pure cgroup v2
        kubelet = Kubelet(INPUTS / "kubelet", base / "kubelet", crisp.daemon.socket, cgroupsPerQOS=True,
                          enforceNodeAllocatable=["pods"], failCgroupV1=True)
        kubelet.request_timeout = SLOW
        stack.callback(lambda: codes.setdefault("kubelet", kubelet.stop(timeout=120)))
        kubelet.start(timeout=SLOW)
        yield kubelet, crisp
    assert leaks == []
    assert codes == {"kubelet": 0, "crispd": 0}, crisp.daemon.log()[-4000:]


def _read(cgroup: Path, name: str) -> str:
    return (cgroup / name).read_text().strip()


def test_a_guaranteed_pod_in_the_kubelets_qos_cgroups(node: tuple[Kubelet, Pods]) -> None:
    kubelet, crisp = node
    root = cgroup2_mount()
    limits = {"cpu": "100m", "memory": "64Mi"}
    name = kubelet.add_pod(pod_manifest("guaranteed", [container(
        "app", BUSYBOX, ["sh", "-c", "head -c 8388608 /dev/zero > /tmp/held; exec sleep 100000"],
        resources={"requests": limits, "limits": limits})]))
    try:
        pod = wait_pod(kubelet, name, is_ready, SLOW, "Running and Ready")
        uid = pod["metadata"]["uid"]
        assert pod["status"]["qosClass"] == "Guaranteed"
        # the kubelet's cgroups: /kubepods (node allocatable), its QoS levels, and the pod's (Guaranteed pods sit
        # right under /kubepods), sized by the kubelet
        kubepods = root / "kubepods"
        assert (kubepods / "burstable").is_dir() and (kubepods / "besteffort").is_dir()
        pod_cgroup = kubepods / f"pod{uid}"
        assert _read(pod_cgroup, "memory.max") == str(64 * MiB)
        assert _read(pod_cgroup, "cpu.max") == "10000 100000"
        # crisp's: the container below the kubelet's pod cgroup, with the container's limits
        cid = container_id(pod, "app")
        ctr_cgroup = pod_cgroup / f"crisp-{cid}"
        assert _read(ctr_cgroup, "memory.max") == str(64 * MiB)
        assert _read(ctr_cgroup, "cpu.max") == "10000 100000"
        info = crisp.daemon.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=cid, verbose=True))
        pid = int(json.loads(info.info["info"])["pid"])
        assert Path(f"/proc/{pid}/cgroup").read_text().strip() == f"0::/kubepods/pod{uid}/crisp-{cid}"

        # the kubelet's summary has the memory crisp reads from the memory controller (8 MiB held in /tmp)
        def memory() -> dict[str, Any] | None:
            stats = next(p for p in kubelet.summary()["pods"] if p["podRef"]["name"] == name)
            found = next((c for c in stats.get("containers", []) if c["name"] == "app"), None)
            return found if found and found.get("memory", {}).get("workingSetBytes", 0) >= 8 * MiB else None

        ctr = wait_until(memory, SLOW, "the container's memory in the kubelet's summary")
        assert ctr["cpu"]["usageCoreNanoSeconds"] > 0
        assert ctr["memory"]["usageBytes"] >= ctr["memory"]["workingSetBytes"]
    finally:
        kubelet.remove_pod("guaranteed")
    # the pod stops; the kubelet removes its pod cgroup once crisp has left it empty
    wait_until(lambda: kubelet.pod(name) is None, SLOW, "the pod gone from the kubelet's /pods")
    wait_until(lambda: not (root / "kubepods" / f"pod{uid}").exists(), SLOW, "the kubelet's pod cgroup removed")
