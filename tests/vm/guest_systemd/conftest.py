"""Fixtures of the systemd guest (tests/vm/guest_systemd: every test here runs in the VM booted with systemd as PID 1
and a pure cgroup v2 hierarchy, in a boot of its own).

The session's node is what a kind node becomes: deploy/kind/setup-node.sh installs crisp from `make dist`'s
wheelhouse (the guest has no network) and systemd starts crispd.service. The image already holds the node venv
/opt/crisp/venv with crisp's run-time dependencies (built at host speed, tests/vm/files/venv.sh), so that the
installer's pip has only crisp's wheel to install: the fresh venv and the dependencies' install are the host's
test (tests/packaging/test_install.py). A Debian docker-registry on guest loopback
serves busybox as an image. Tests talk CRI to /run/crisp/crisp.sock as the kubelet does, and ask systemd what it
sees (`systemctl show`, `systemctl status`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cri import api as cri
from tests.imagetools import busybox_image
from tests.registrytools import Pusher, running_registry

IO = Path("/run/crisp-vm/io")
SOURCE = Path("/tmp/crisp-src")  # the job's copy of the checkout (tests, deploy, scripts)
SOCKET = "/run/crisp/crisp.sock"
SETUP_TIMEOUT = 900.0


def _stamp(name: str) -> None:
    """A guest-clock mark in the tier's timings (printed in the host's summary)."""
    timings = os.environ.get("CRISP_VM_TIMINGS")
    if timings:
        with open(timings, "a") as out:
            out.write(f"{name} {Path('/proc/uptime').read_text().split()[0]}\n")


def systemctl(*args: str, check: bool = True) -> str:
    done = subprocess.run(["systemctl", "--no-pager", *args], capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"systemctl {' '.join(args)} failed ({done.returncode}): {done.stdout}{done.stderr}")
    return done.stdout


def unit_properties(unit: str, *names: str) -> dict[str, str]:
    out = systemctl("show", unit, *(f"--property={name}" for name in names))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def crisp_units() -> list[str]:
    """crisp's scopes and slices that systemd has loaded (crisp.slice itself, the parent of crisp's own pod slices,
    stays once made, as kubepods.slice does)."""
    out = systemctl("list-units", "--all", "--plain", "--no-legend", "crisp-*.scope", "crisp-*.slice")
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@dataclass
class Node:
    runtime: cri.RuntimeServiceStub
    images: cri.ImageServiceStub
    image: str  # busybox, served by the guest's registry
    setup_seconds: float


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    if not Path("/run/systemd/system").is_dir():
        pytest.fail("not the systemd guest: PID 1 is not systemd")
    base = tmp_path_factory.mktemp("node")
    # installing under TCG (pip and crisp's wheel into the node venv the image holds with crisp's dependencies,
    # crispd's first start) takes minutes: more than the guest's bound on one test phase (CRISP_VM_TEST_TIMEOUT),
    # which the next phase sets again
    signal.setitimer(signal.ITIMER_REAL, SETUP_TIMEOUT)
    started = time.monotonic()
    setup = subprocess.run([str(SOURCE / "deploy" / "kind" / "setup-node.sh"), "--wheels", str(IO / "wheelhouse")],
                           capture_output=True, text=True, timeout=900)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    setup_seconds = time.monotonic() - started
    _stamp("setup-node-done")
    with contextlib.ExitStack() as stack:
        registry = stack.enter_context(running_registry(base / "registry"))
        Pusher(registry.url).image("crisp/busybox", busybox_image(), "latest")
        channel = grpc.insecure_channel(f"unix:{SOCKET}")
        stack.callback(channel.close)
        node = Node(cri.RuntimeServiceStub(channel), cri.ImageServiceStub(channel),
                    f"{registry.host}/crisp/busybox:latest", setup_seconds)
        node.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=node.image)), timeout=300)
        yield node
        if Path(SOCKET).exists():  # test_zz_uninstall.py took crisp away, with every pod
            for sandbox in node.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items:
                node.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=120)
