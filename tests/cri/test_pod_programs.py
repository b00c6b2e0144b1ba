"""RunPodSandbox starts no program of crisp's: a pod's namespaces are made, set up and pinned by a process forked from
the warm shim zygote, and the only program a pod starts is its init, Debian's catatonit. Seen as an operator
would, with strace following crispd and its zygote."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cri import api as cri
from tests.cri.pods import Pods, pod_config

pytestmark = pytest.mark.root

_EXECVE = re.compile(r'execve\("([^"]+)"')


def _zygote_of(crispd: int) -> int:
    children = Path(f"/proc/{crispd}/task/{crispd}/children").read_text().split()
    (zygote,) = [int(pid) for pid in children if b"shim.zygote" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    return zygote


def _traced_by(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("TracerPid:")))


def test_a_pod_execs_only_its_init(pods: Pods, tmp_path: Path) -> None:
    # crispd starts a network helper at its start and keeps one ready (runtime/network/helper_client.py); a first
    # pod makes sure the trace below starts after that start
    pods.run(pod_config("first"))
    assert pods.daemon.proc is not None
    crispd = pods.daemon.proc.pid
    zygote = _zygote_of(crispd)
    trace = tmp_path / "execve.trace"
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=execve", "-e", "signal=none", "-o", str(trace),
                               "-p", str(crispd), "-p", str(zygote)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not (_traced_by(crispd) == _traced_by(zygote) == tracer.pid):
            assert time.monotonic() < deadline and tracer.poll() is None, tracer.stderr
            time.sleep(0.01)
        config = pod_config("traced")
        config.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "80"
        assert config.linux.security_context.namespace_options.pid == cri.POD  # a pod init
        pod_id = pods.run(config)
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)
    programs = [os.path.basename(path) for path in _EXECVE.findall(trace.read_text())]
    # the old path ran python (nsinit, podinit) under unshare and setsid
    assert not [p for p in programs if p.startswith("python") or p in ("unshare", "setsid", "nsenter")], programs
    assert "catatonit" in programs, programs
    # and the pod is as it was: its sysctl is set inside its network namespace
    pin = pods.daemon.state / "sandboxes" / pod_id / "ns" / "net"
    found = subprocess.run(["nsenter", f"--net={pin}", "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"],
                           check=True, capture_output=True, text=True).stdout.strip()
    assert found == "80"
