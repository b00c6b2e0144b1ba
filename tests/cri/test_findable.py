"""Processes crisp leaves running are findable by name: each shim is `crisp-shim <container id>` (comm and command
line), a shared-PID pod's PID 1 is `crisp-podinit <pod id>`, and nothing else of crisp's lingers; inside a
container no process shows a host path. Checked with ps and pgrep as an operator would."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.cri.test_containers import Kubelet
from tests.leaks import processes_mentioning

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
    (init,) = pgrep(f"^crisp-podinit {pod_id}$")
    assert ps(init, "comm") == "crisp-podinit"
    assert ps(init, "args") == f"crisp-podinit {pod_id}"
    # nothing else of crisp's runs: what works in the state dir is crispd (it names it in its flags), the shims
    # and the pod init (their cwd, their log files), each found by its name
    crispd = pods.daemon.proc.pid if pods.daemon.proc else 0
    users = {int(p.split(":")[0]) for p in processes_mentioning(str(pods.daemon.state))}
    assert users == {crispd, init, *pgrep(f"^crisp-shim ({container_id}|{other})$")}

    # inside the container: PID 1 is the pod init, and no process shows a host path
    assert kubelet.exec(container_id, ["cat", "/proc/1/comm"]).stdout == b"crisp-podinit\n"
    assert kubelet.exec(container_id, ["cat", "/proc/1/cmdline"]).stdout == f"crisp-podinit {pod_id}\0".encode()
    seen = kubelet.exec(container_id, ["sh", "-c", "for p in /proc/[0-9]*; do cat $p/comm $p/cmdline; echo; done"])
    assert seen.exit_code == 0 and b"sleep" in seen.stdout
    for host_path in (CHECKOUT, str(pods.daemon.base), "/.venv/", "python"):
        assert host_path.encode() not in seen.stdout, seen.stdout
