"""`crispd doctor` against good and broken set-ups: each check's verdict line, and the exit status (0 all well, 1
pods cannot start, 2 warnings only). The doctor changes nothing on the node."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from cri.config import parse_config
from cri.doctor import cgroups as doctor_cgroups
from cri.doctor.cgroups import check_cgroup_driver, pod_controllers
from runtime.cgroups import CgroupV2Manager
from runtime.network.bridge import host_routes
from tests.cri.crispd import Crispd, crispd_command
from tests.cri.pods import NO_CNI_DIR, Pods, running_pods
from tests.criutools import criu_check

pytestmark = pytest.mark.root

WARN_POLICY = 'missing_controller = "warn"\n'


def doctor(daemon: Crispd, *flags: str) -> tuple[int, dict[str, tuple[str, str]]]:
    """Run `crispd doctor` on the daemon's config, dirs and socket: its exit status and check -> (verdict, text)."""
    result = subprocess.run([*crispd_command(), "--config", str(daemon.config_path), "--root", str(daemon.root),
                             "--state", str(daemon.state), "--listen", str(daemon.socket), *flags, "doctor"],
                            capture_output=True, text=True, timeout=120)
    assert result.stderr == "", result.stderr
    checks: dict[str, tuple[str, str]] = {}
    name = ""
    for line in result.stdout.splitlines():
        verdict = line[:6].strip()
        if verdict in ("ok", "warn", "fail"):
            name, _, text = line[6:].partition("  ")
            name, text = name.strip(), text.strip()
            checks[name] = (verdict, text)
        elif line.startswith(" ") and name:
            checks[name] = (checks[name][0], f"{checks[name][1]} {line.strip()}")
    assert result.stdout.rstrip().endswith(f"(exit status {result.returncode})"), result.stdout
    return result.returncode, checks


def tmpfs_idmap_kernel() -> bool:
    """Linux 6.3 or later: tmpfs can be id-mapped."""
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (6, 3)


def controllers_missing(pods: Pods) -> bool:
    return not {"cpu", "cpuset", "memory", "pids", "io"} <= pod_controllers(CgroupV2Manager.discover(),
                                                                             pods.cgroup_base)


def verdicts(checks: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {name: verdict for name, (verdict, _) in checks.items()}


def test_a_good_set_up(tmp_path: Path) -> None:
    """A running crispd that tolerates missing controllers, a reachable mirror: everything passes, except the
    controllers a hybrid host lacks (a warning: exit 2; 0 where pods get them all)."""
    with socket.socket() as mirror:
        mirror.bind(("127.0.0.1", 0))
        mirror.listen()
        certs = tmp_path / "certs.d"
        (certs / "mirror.crisp.test").mkdir(parents=True)
        (certs / "mirror.crisp.test" / "hosts.toml").write_text(
            f'server = "http://127.0.0.1:{mirror.getsockname()[1]}"\n')
        with running_pods(tmp_path, f'[image]\nregistry_config_path = "{certs}"\n', cgroup_config=WARN_POLICY) as pods:
            code, checks = doctor(pods.daemon)
    missing = controllers_missing(pods)
    expected = {name: "ok" for name in checks}
    if missing:
        expected["cgroup controllers"] = "warn"
    if not tmpfs_idmap_kernel():
        expected["tmpfs id-mapping"] = "warn"
    criu, first_line = criu_check()
    if criu != 0:
        expected["checkpoint"] = "warn"
        assert first_line in checks["checkpoint"][1], checks["checkpoint"]
    assert verdicts(checks) == expected, checks
    assert code == (2 if "warn" in expected.values() else 0)
    assert checks["crispd"][1].endswith("ready (runtime and network)")
    assert checks["cgroup driver"][1].startswith(f"cgroupfs: crisp's cgroups are directories under {pods.cgroup_base}")
    assert "id-mapped mounts work where crisp keeps pods' files and image layers" in checks["user namespaces"][1]
    assert checks["pod network"][1].startswith(f"the built-in bridge {pods.bridge}")
    assert checks["registry mirrors"][1] == "1 host(s) of 1 registr(ies) answer"
    assert str(pods.subnet) in checks["pod CIDR"][1]  # the running crispd's pod CIDR
    if missing:
        assert 'dropped with a warning (cgroup.missing_controller = "warn")' in checks["cgroup controllers"][1]


def test_the_kubelets_pods_fail_without_the_cpu_controller_unless_limits_may_be_dropped(tmp_path: Path) -> None:
    pods = Pods(tmp_path)
    if "cpu" in pod_controllers(CgroupV2Manager.discover(), pods.cgroup_base):
        pytest.skip("pods get the cpu controller here")
    code, checks = doctor(pods.daemon)  # the default policy, "error"
    assert code == 1
    verdict, text = checks["cgroup controllers"]
    assert verdict == "fail" and "cpu_shares" in text and 'missing_controller = "error"' in text
    pods.daemon.config_path.write_text(pods.daemon.config_path.read_text().replace(
        "[cgroup]\n", f"[cgroup]\n{WARN_POLICY}"))
    code, checks = doctor(pods.daemon)
    assert checks["cgroup controllers"][0] == "warn"
    assert checks["crispd"][0] == "warn"  # not running: the doctor cannot say it is ready
    assert code == 2


def a_routed_network() -> ipaddress.IPv4Network:
    """A network the host routes through one of its interfaces (not the default route)."""
    for network, _ in host_routes():
        if network.version == 4 and 8 <= network.prefixlen < 32 and not network.is_loopback:
            return network  # type: ignore[return-value]
    pytest.skip("this host routes no IPv4 network but the default")


def test_broken_set_ups(tmp_path: Path) -> None:
    pods = Pods(tmp_path, cgroup_config=WARN_POLICY)
    daemon = pods.daemon
    base = daemon.config_path.read_text()

    def with_config(extra: str) -> dict[str, tuple[str, str]]:
        daemon.config_path.write_text(base + extra)
        code, checks = doctor(daemon)
        assert code == (1 if "fail" in verdicts(checks).values() else 2), checks
        return checks

    # a CNI config whose plugin is not installed
    cni = tmp_path / "cni"
    cni.mkdir()
    (cni / "10-net.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "broken", "plugins": [{"type": "crisp-no-such-plugin"}]}))
    daemon.config_path.write_text(base.replace(NO_CNI_DIR, str(cni)))
    code, checks = doctor(daemon)
    assert code == 1 and checks["pod network"][0] == "fail"
    assert "crisp-no-such-plugin" in checks["pod network"][1]

    # a pod CIDR the host already routes elsewhere
    routed = a_routed_network()
    daemon.config_path.write_text(base.replace(f'pod_cidr = "{pods.subnet}"', f'pod_cidr = "{routed}"'))
    code, checks = doctor(daemon)
    assert code == 1 and checks["pod CIDR"][0] == "fail" and str(routed) in checks["pod CIDR"][1]

    # a runtime handler whose binary is missing, a mirror nobody answers on: warnings
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    certs = tmp_path / "certs.d"
    (certs / "down.crisp.test").mkdir(parents=True)
    (certs / "down.crisp.test" / "hosts.toml").write_text(f'[host."http://127.0.0.1:{dead}"]\n')
    checks = with_config(f'[runtime.handlers.gone]\npath = "/nonexistent/crisp-runtime"\n'
                         f'[image]\nregistry_config_path = "{certs}"\n')
    assert checks["runtime handlers"][0] == "warn" and "/nonexistent/crisp-runtime" in checks["runtime handlers"][1]
    assert checks["registry mirrors"][0] == "warn" and f"127.0.0.1:{dead}" in checks["registry mirrors"][1]

    # a regular file where the socket should be
    daemon.config_path.write_text(base)
    daemon.socket.parent.mkdir(parents=True)
    daemon.socket.write_text("not a socket")
    code, checks = doctor(daemon)
    assert code == 1 and checks["socket"][0] == "fail" and checks["crispd"][0] == "fail"

    # and the doctor made nothing: no root or state dir, no cgroup
    assert not daemon.root.exists() and not daemon.state.exists()
    assert not (CgroupV2Manager.discover().mount / pods.cgroup_base.lstrip("/")).exists()


def test_the_systemd_driver_needs_systemd_as_pid_1(tmp_path: Path) -> None:
    if doctor_cgroups.SYSTEMD_BOOTED.is_dir():
        pytest.skip("PID 1 is systemd here (the VM tier's systemd guest checks this driver)")
    pods = Pods(tmp_path, cgroup_config='driver = "systemd"\n' + WARN_POLICY)
    code, checks = doctor(pods.daemon)
    assert code == 1
    verdict, text = checks["cgroup driver"]
    pid1 = Path("/proc/1/comm").read_text().strip()
    assert verdict == "fail" and text.startswith(f"systemd, but PID 1 is {pid1}, not systemd"), text


@pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon is missing (`make debs-test`)")
def test_the_systemd_driver_needs_systemd_on_the_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Booted with systemd (as the doctor sees it), but the bus crisp is told to use has no systemd on it, or
    nobody listens there: a failure naming the bus and what it said."""
    booted = tmp_path / "systemd-system"
    booted.mkdir()
    monkeypatch.setattr(doctor_cgroups, "SYSTEMD_BOOTED", booted)
    config = parse_config('[cgroup]\ndriver = "systemd"\nsystemd_bus = "system"\n')
    socket_path = tmp_path / "bus"
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={socket_path}")
    check = check_cgroup_driver(config)  # nobody listens
    assert check.verdict == "fail" and 'systemd does not answer over D-Bus (cgroup.systemd_bus = "system")' in \
        check.message, check
    bus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--nopidfile", "--nosyslog",
                            f"--address=unix:path={socket_path}", "--print-address"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert bus.stdout is not None and bus.stdout.readline().startswith(b"unix:path=")
        check = check_cgroup_driver(config)  # a bus, but no systemd on it
    finally:
        bus.kill()
        bus.wait()
    assert check.verdict == "fail" and "org.freedesktop.systemd1" in check.message, check
    assert "/run/systemd/private" in check.fix
