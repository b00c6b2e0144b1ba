"""crisp installed on a systemd node by deploy/kind/setup-node.sh: systemd starts crispd.service and sees it ready
(Type=notify), crispd serves CRI with the systemd cgroup driver, and its network waits for a CNI config."""

from __future__ import annotations

import json
from pathlib import Path

from cri import api as cri
from tests.vm.guest_systemd.conftest import SOCKET, Node, unit_properties

CNI_DIR = Path("/etc/cni/net.d")


def network_ready(node: Node) -> cri.RuntimeCondition:
    conditions: dict[str, cri.RuntimeCondition] = {
        c.type: c for c in node.runtime.Status(cri.StatusRequest()).status.conditions}
    return conditions["NetworkReady"]


def test_systemd_started_crispd_and_saw_it_ready(node: Node) -> None:
    print(f"setup-node.sh took {node.setup_seconds:.1f}s")
    props = unit_properties("crispd.service", "ActiveState", "SubState", "Type", "StatusText", "MainPID",
                            "ControlGroup", "UnitFileState", "NRestarts")
    assert props["Type"] == "notify"
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    assert props["StatusText"] == f"serving CRI v1 on {SOCKET}"  # sent with READY=1
    assert props["UnitFileState"] == "enabled" and props["NRestarts"] == "0"
    assert props["ControlGroup"] == "/system.slice/crispd.service"
    cgroup = Path(f"/proc/{props['MainPID']}/cgroup").read_text().strip()
    assert cgroup == "0::/system.slice/crispd.service"


def test_crispd_serves_cri_with_the_systemd_driver(node: Node) -> None:
    assert node.runtime.Version(cri.VersionRequest()).runtime_name == "crisp"
    config = node.runtime.RuntimeConfig(cri.RuntimeConfigRequest())
    assert config.linux.cgroup_driver == cri.SYSTEMD
    crictl = Path("/etc/crictl.yaml").read_text()
    assert f"runtime-endpoint: unix://{SOCKET}" in crictl


def test_network_is_ready_once_a_cni_config_appears(node: Node) -> None:
    """As on kind, where kindnet writes its conflist after the node started: not ready, then ready without a
    restart of crispd."""
    before = network_ready(node)
    assert before.status is False and "cni config uninitialized" in before.message
    pid = unit_properties("crispd.service", "MainPID")["MainPID"]
    CNI_DIR.mkdir(parents=True, exist_ok=True)
    (CNI_DIR / "10-kindnet.conflist").write_text(json.dumps({
        "cniVersion": "0.4.0", "name": "kindnet", "plugins": [
            {"type": "ptp", "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ]}))
    assert network_ready(node).status is True
    assert unit_properties("crispd.service", "MainPID")["MainPID"] == pid
