"""Last in the systemd guest (hence the name): deploy/install.sh uninstall on a live systemd node stops and disables
crispd and takes away what install put, the saved crictl.yaml back in place."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cri import api as cri
from tests.vm.guest_systemd.conftest import SOURCE, Node, crisp_units, systemctl, unit_properties


def test_uninstall(node: Node) -> None:
    for sandbox in node.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items:
        node.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=120)
        node.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=120)
    assert crisp_units() == []
    done = subprocess.run([str(SOURCE / "deploy" / "install.sh"), "uninstall", "--purge"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    props = unit_properties("crispd.service", "LoadState", "ActiveState")
    assert props == {"LoadState": "not-found", "ActiveState": "inactive"}, props
    for gone in ("/opt/crisp", "/etc/systemd/system/crispd.service", "/etc/crisp", "/var/lib/crisp", "/run/crisp",
                 "/etc/crictl.yaml"):
        assert not Path(gone).exists(), gone
    assert "crispd.service" not in systemctl("list-unit-files", "--no-legend")
