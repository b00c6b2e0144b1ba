"""crispd as a process: the RPCs of the foundation, over its real socket, with a real gRPC client."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from cri import api as cri
from cri.config import Config, parse_config
from runtime.version import VERSION
from tests.cri.crispd import Crispd, crispd_command

IMPLEMENTED = {"Version", "Status", "RuntimeConfig", "UpdateRuntimeConfig", "RunPodSandbox", "StopPodSandbox",
               "RemovePodSandbox", "PodSandboxStatus", "ListPodSandbox",
               # containers
               "CreateContainer", "StartContainer", "StopContainer", "RemoveContainer", "ContainerStatus",
               "ListContainers", "UpdateContainerResources", "UpdatePodSandboxResources", "ReopenContainerLog",
               "ExecSync", "Exec", "Attach", "PortForward",
               # observability
               "ContainerStats", "ListContainerStats", "PodSandboxStats", "ListPodSandboxStats",
               "ListMetricDescriptors", "ListPodSandboxMetrics", "GetContainerEvents",
               # the lists as streams (the pinned cri-api)
               "StreamPodSandboxes", "StreamContainers", "StreamContainerStats", "StreamPodSandboxStats",
               "StreamPodSandboxMetrics"}


def test_version(crispd: Crispd) -> None:
    response = crispd.runtime.Version(cri.VersionRequest(version="v1"))
    assert response.runtime_name == "crisp"
    assert response.runtime_version == VERSION
    assert response.runtime_api_version == "v1"
    assert response.version == "0.1.0"


def test_status(crispd: Crispd) -> None:
    response = crispd.runtime.Status(cri.StatusRequest())
    conditions = {c.type: c for c in response.status.conditions}
    assert set(conditions) == {"RuntimeReady", "NetworkReady"}
    assert conditions["RuntimeReady"].status is True
    network = conditions["NetworkReady"]  # whether it is ready depends on the host: tests/cri/test_network.py
    assert network.status or (network.reason and network.message)
    assert [h.name for h in response.runtime_handlers] == [""]
    assert response.HasField("features")
    assert dict(response.info) == {}


def test_status_verbose_and_handlers(tmp_path: Path) -> None:
    daemon = Crispd(tmp_path, config='[runtime.handlers.runc]\npath = "runc"\n'
                                     '[runtime.handlers.crun]\npath = "crun"\n').start()
    try:
        response = daemon.runtime.Status(cri.StatusRequest(verbose=True))
        assert [h.name for h in response.runtime_handlers] == ["", "crun", "runc"]
        assert all(h.HasField("features") for h in response.runtime_handlers)
        info = {key: json.loads(value) for key, value in response.info.items()}
        assert info["config"]["root"] == str(daemon.root)
        assert info["config"]["runtime"]["handlers"]["runc"]["path"] == "runc"
        assert info["version"]["runtimeName"] == "crisp"
        assert info["version"]["criApiRelease"] == cri.CRI_API_VERSION == "v0.37.2"
    finally:
        assert daemon.stop() == 0


def test_runtime_config_default_is_cgroupfs(crispd: Crispd) -> None:
    response = crispd.runtime.RuntimeConfig(cri.RuntimeConfigRequest())
    assert response.linux.cgroup_driver == cri.CGROUPFS


def test_runtime_config_systemd_from_config(tmp_path: Path) -> None:
    daemon = Crispd(tmp_path, config='[cgroup]\ndriver = "systemd"\n').start()
    try:
        response = daemon.runtime.RuntimeConfig(cri.RuntimeConfigRequest())
        assert response.linux.cgroup_driver == cri.SYSTEMD
    finally:
        assert daemon.stop() == 0


def _pod_cidr(daemon: Crispd) -> str:
    info = daemon.runtime.Status(cri.StatusRequest(verbose=True)).info
    return str(json.loads(info["podCIDR"]))


def test_update_runtime_config_stores_pod_cidr(tmp_path: Path) -> None:
    daemon = Crispd(tmp_path).start()
    try:
        assert _pod_cidr(daemon) == ""
        request = cri.UpdateRuntimeConfigRequest(
            runtime_config=cri.RuntimeConfig(network_config=cri.NetworkConfig(pod_cidr="10.244.1.0/24")))
        daemon.runtime.UpdateRuntimeConfig(request)
        assert _pod_cidr(daemon) == "10.244.1.0/24"
        bad = cri.UpdateRuntimeConfigRequest(
            runtime_config=cri.RuntimeConfig(network_config=cri.NetworkConfig(pod_cidr="10.244.1.0/99")))
        with pytest.raises(grpc.RpcError) as info:
            daemon.runtime.UpdateRuntimeConfig(bad)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "10.244.1.0/99" in (info.value.details() or "")
        daemon.runtime.UpdateRuntimeConfig(cri.UpdateRuntimeConfigRequest())  # empty: nothing changes
        assert _pod_cidr(daemon) == "10.244.1.0/24"
    finally:
        assert daemon.stop() == 0
    again = Crispd(tmp_path, name="again").start()  # the same root: the CIDR survives a restart
    try:
        assert _pod_cidr(again) == "10.244.1.0/24"
    finally:
        assert again.stop() == 0


def _all_methods(service: str) -> list[str]:
    return [m.name for m in cri.DESCRIPTOR.services_by_name[service].methods]


@pytest.mark.parametrize("method", sorted(set(_all_methods("RuntimeService")) - IMPLEMENTED))
def test_runtime_rpcs_not_yet_built_are_unimplemented(crispd: Crispd, method: str) -> None:
    _assert_unimplemented(crispd, "RuntimeService", method)


def _assert_unimplemented(daemon: Crispd, service: str, method: str) -> None:
    descriptor = cri.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    request_class = getattr(cri, descriptor.input_type.name)
    response_class = getattr(cri, descriptor.output_type.name)
    path = f"/runtime.v1.{service}/{method}"
    if descriptor.server_streaming:
        call = daemon.channel.unary_stream(path, request_class.SerializeToString, response_class.FromString)
        with pytest.raises(grpc.RpcError) as info:
            list(call(request_class(), timeout=10))
    else:
        call = daemon.channel.unary_unary(path, request_class.SerializeToString, response_class.FromString)
        with pytest.raises(grpc.RpcError) as info:
            call(request_class(), timeout=10)
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert method in (info.value.details() or "")


def test_socket_and_dirs_modes(tmp_path: Path) -> None:
    daemon = Crispd(tmp_path).start()
    try:
        assert stat.S_ISSOCK(daemon.socket.stat().st_mode)
        assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o660
        assert stat.S_IMODE(daemon.socket.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(daemon.root.stat().st_mode) == 0o700
    finally:
        assert daemon.stop() == 0


def test_second_instance_on_same_root_is_refused(crispd: Crispd, tmp_path: Path) -> None:
    other = Crispd(tmp_path, name="second")
    other.socket = tmp_path / "run2" / "crisp.sock"  # its own socket, but the same root and state
    proc = other.spawn()
    assert proc.wait(30) == 1
    assert f"another crispd (pid {crispd.proc.pid if crispd.proc else ''}) already uses root dir" in other.log()
    # the first one is unharmed
    assert crispd.runtime.Version(cri.VersionRequest()).runtime_name == "crisp"
    assert crispd.socket.exists()


def test_second_instance_on_same_socket_is_refused(crispd: Crispd, tmp_path: Path) -> None:
    other = Crispd(tmp_path / "x" if (tmp_path / "x").mkdir() is None else tmp_path, name="second")
    other.socket = crispd.socket
    proc = other.spawn()
    assert proc.wait(30) == 1
    assert f"already uses socket {crispd.socket}" in other.log()
    assert crispd.runtime.Version(cri.VersionRequest()).runtime_name == "crisp"


def test_two_instances_side_by_side(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Crispd(tmp_path / "a").start()
    try:
        b = Crispd(tmp_path / "b").start()
        try:
            assert a.runtime.Version(cri.VersionRequest()).runtime_name == "crisp"
            assert b.runtime.Version(cri.VersionRequest()).runtime_name == "crisp"
        finally:
            assert b.stop() == 0
    finally:
        assert a.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_cleanly(tmp_path: Path, sig: int) -> None:
    daemon = Crispd(tmp_path).start()
    stop_calling = threading.Event()
    results: list[grpc.StatusCode] = []

    def caller() -> None:  # RPCs in flight while the signal arrives: each gets an answer, never a hang
        while not stop_calling.is_set():
            try:
                daemon.runtime.Status(cri.StatusRequest(verbose=True), timeout=5)
                results.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                results.append(exc.code())
                return

    thread = threading.Thread(target=caller)
    thread.start()
    deadline = time.monotonic() + 10
    while not results and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert daemon.stop(sig) == 0
    finally:
        stop_calling.set()
        thread.join(10)
    assert not thread.is_alive()
    assert grpc.StatusCode.OK in results
    assert set(results) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert not daemon.socket.exists()
    assert f"received {signal.Signals(sig).name}, shutting down" in daemon.log()
    assert daemon.slow_callbacks() == []
    # the locks are free again: a new crispd starts on the same root and socket
    again = Crispd(tmp_path, name="again").start()
    assert again.stop() == 0


def test_stale_socket_is_removed(tmp_path: Path) -> None:
    daemon = Crispd(tmp_path)
    daemon.socket.parent.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(daemon.socket))  # bound, never listening: what a crashed daemon leaves
    stale.close()
    daemon.start()
    try:
        assert daemon.runtime.Version(cri.VersionRequest()).runtime_name == "crisp"
        assert "removing stale socket" in daemon.log()
    finally:
        assert daemon.stop() == 0


def test_a_regular_file_at_the_socket_path_is_not_replaced(tmp_path: Path) -> None:
    daemon = Crispd(tmp_path)
    daemon.socket.parent.mkdir(mode=0o700)
    daemon.socket.write_text("precious")
    assert daemon.spawn().wait(30) == 1
    assert "is not a socket" in daemon.log()
    assert daemon.socket.read_text() == "precious"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[cgroup]\ndriver = 'cgroupv3'\n", "cgroup.driver: 'cgroupv3' is not one of"),
        ("[imaginary]\nkey = 1\n", "unknown key 'imaginary'"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    daemon = Crispd(tmp_path, config=text)
    assert daemon.spawn().wait(30) == 2
    log = daemon.log()
    assert f"crispd: error: {daemon.config_path}: " in log and message in log
    assert not daemon.socket.exists()


def test_config_command_prints_effective_config(tmp_path: Path) -> None:
    path = tmp_path / "crisp.toml"
    path.write_text("[cgroup]\ndriver = 'systemd'\n")
    out = subprocess.run([*crispd_command(), "--config", str(path), "--root", "/srv/x", "config"],
                         check=True, capture_output=True, text=True).stdout
    config = parse_config(out)
    assert config.cgroup.driver == "systemd"
    assert config.root == "/srv/x"
    assert config.state == Config().state


def test_missing_named_config_is_an_error(tmp_path: Path) -> None:
    result = subprocess.run([*crispd_command(), "--config", str(tmp_path / "nope.toml"), "config"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "cannot read the config file" in result.stderr


def test_crispd_forks_nothing_but_starts_its_shim_zygote(crispd: Crispd) -> None:
    """crispd never forks itself: with nothing running its only child is the shim zygote, a fresh `python -I -S`
    program it started (fork + exec through subprocess), which forks the shims so that crispd does not."""
    assert crispd.proc is not None
    children = Path(f"/proc/{crispd.proc.pid}/task/{crispd.proc.pid}/children").read_text().split()
    commands = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in children]
    assert len(commands) == 1
    assert b"-I" in commands[0] and any(b"shim.zygote" in part for part in commands[0])


def test_notifies_systemd_when_serving_and_stopping(tmp_path: Path) -> None:
    """Type=notify: READY=1 once the socket answers, STOPPING=1 on SIGTERM; no child inherits the notify socket."""
    notify_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(notify_path))
        server.settimeout(30)
        daemon = Crispd(tmp_path, env={"NOTIFY_SOCKET": str(notify_path)})
        try:
            daemon.spawn()
            ready = server.recv(4096).decode()
            assert ready.splitlines()[0] == "READY=1"
            assert daemon.runtime.Version(cri.VersionRequest(), timeout=5).runtime_name == "crisp"
            assert daemon.proc is not None
            children = Path(f"/proc/{daemon.proc.pid}/task/{daemon.proc.pid}/children").read_text().split()
            assert children  # the shim zygote
            for pid in children:
                assert b"NOTIFY_SOCKET=" not in Path(f"/proc/{pid}/environ").read_bytes()
            assert daemon.stop() == 0
            assert server.recv(4096) == b"STOPPING=1"
        finally:
            daemon.stop()
