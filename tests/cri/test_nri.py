"""NRI over a real crispd: Python test plugins (tests/nri) connect to its NRI socket or are launched by it, see the
events of real pods and containers in the order critest checks, adjust containers (under the built-in executor
and runc), and crash, fail or conflict without hurting pods."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri import api as cri
from tests.cri.conftest import TestImages
from tests.cri.nri_support import REPO, TestPlugin, nri_config, nri_status, plugin_names, plugins, wait_for
from tests.cri.pods import Pods, running_pods
from tests.cri.test_containers import Kubelet

pytestmark = pytest.mark.root

POD_EVENTS = ["RunPodSandbox", "StopPodSandbox", "RemovePodSandbox"]


@pytest.fixture
def nri_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="crisp-nri-"))  # short: a unix socket path has 107 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def nri_pods(tmp_path: Path, nri_dir: Path) -> Iterator[Pods]:
    # this host's cgroup v2 has no controllers: limits plugins set are dropped with a warning here (the VM tier is
    # where they are enforced)
    with running_pods(tmp_path, nri_config(nri_dir), cgroup_config='missing_controller = "warn"\n') as p:
        yield p


@pytest.fixture(params=["", "runc"], ids=["builtin", "runc"])
def kubelet(request: pytest.FixtureRequest, nri_pods: Pods, test_images: TestImages, tmp_path: Path) -> Kubelet:
    nri_pods.handler = request.param
    return Kubelet(nri_pods, test_images, tmp_path / "logs")


def test_plugin_adjusts_a_container_and_sees_every_event_in_order(kubelet: Kubelet, nri_dir: Path) -> None:
    daemon = kubelet.pods.daemon
    adjust = {"env": [{"key": "NRI_ADDED", "value": "by-plugin"}], "annotations": {"nri.test/seen": "yes"},
              "mounts": [{"destination": "/nri-mount", "source": str(nri_dir), "type": "bind",
                          "options": ["rbind", "ro"]}],
              "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 777, "soft": 777}]}
    plugin = TestPlugin(daemon, nri_dir, "adjuster", "10", adjust=adjust)
    (nri_dir / "marker").write_text("mounted by NRI\n")
    with plugins(plugin.start()):
        pod_id, pod = kubelet.pod("nri-web")
        cid = kubelet.run(pod_id, pod, "app", ["sh", "-c", "echo $NRI_ADDED; cat /nri-mount/marker; ulimit -n; "
                                                           "exec sleep 300"])
        assert wait_for(lambda: "777" in _log(kubelet, "nri-web", "app"))
        assert _log(kubelet, "nri-web", "app").split("\n")[:3] == ["by-plugin", "mounted by NRI", "777"]
        spec = json.loads(Path(daemon.state / "containers" / cid / "config.json").read_text())
        assert spec["annotations"]["nri.test/seen"] == "yes"
        kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=1))
        kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid))
        daemon.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        daemon.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))  # once only
        daemon.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        assert wait_for(lambda: "RemovePodSandbox" in plugin.names())
        events = [e for e in plugin.events() if e.get("pod") == pod_id]
        # the plugin is also a validator of adjustments (it subscribed to everything)
        assert [e["event"] for e in events] == [
            "RunPodSandbox", "CreateContainer", "ValidateContainerAdjustment", "PostCreateContainer",
            "StartContainer", "PostStartContainer", "StopContainer", "RemoveContainer", "StopPodSandbox",
            "RemovePodSandbox"]
        assert [e["t"] for e in events] == sorted(e["t"] for e in events)
        run = events[0]
        assert (run["pod_name"], run["pod_namespace"], run["pod_uid"]) == ("nri-web", "default", "uid-nri-web")
        container_events = events[1:8]
        assert {e.get("container_name") for e in container_events} == {"app"}
        assert {e["container"] for e in container_events} == {cid}
        stop = next(e for e in container_events if e["event"] == "StopContainer")
        assert stop["exit_code"] in (137, 143)  # SIGTERM's or SIGKILL's


def _log(kubelet: Kubelet, pod: str, name: str) -> str:
    path = kubelet.log_dir / pod / name / "0.log"
    if not path.exists():
        return ""
    return "\n".join(line.split(" ", 3)[3] for line in path.read_text().splitlines())


def test_self_exit_delivers_stop_container(kubelet: Kubelet, nri_dir: Path) -> None:
    plugin = TestPlugin(kubelet.pods.daemon, nri_dir, "watcher", "20")
    with plugins(plugin.start()):
        pod_id, pod = kubelet.pod("nri-exit")
        cid = kubelet.run(pod_id, pod, "quits", ["sh", "-c", "exit 3"])
        assert kubelet.wait_exited(cid).exit_code == 3
        assert wait_for(lambda: "StopContainer" in plugin.names(container=cid))  # no StopContainer RPC was made
        (stop,) = [e for e in plugin.events() if e["event"] == "StopContainer"]
        assert stop["exit_code"] == 3
        kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid))
        assert plugin.names(container=cid) == ["CreateContainer", "ValidateContainerAdjustment",
                                               "PostCreateContainer", "StartContainer", "PostStartContainer",
                                               "StopContainer", "RemoveContainer"]


def test_stop_container_answered_with_an_update_of_the_stopped_container(
        nri_pods: Pods, test_images: TestImages, tmp_path: Path, nri_dir: Path) -> None:
    # StopContainer holds the container's lock until the plugins have heard of the stop; an update of that very
    # container, asked for in the answer, is refused (it has exited) instead of waiting for the lock forever
    kubelet = Kubelet(nri_pods, test_images, tmp_path / "logs")
    update = {"container_id": "SELF", "linux": {"resources": {"cpu": {"shares": {"value": "512"}}}}}
    plugin = TestPlugin(nri_pods.daemon, nri_dir, "stopper", "30", stop_update=[update])
    with plugins(plugin.start()):
        pod_id, pod = kubelet.pod("nri-stop-update")
        cid = kubelet.run(pod_id, pod, "app", ["sleep", "300"])
        kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=1), timeout=30)
        assert kubelet.status(cid).state == cri.CONTAINER_EXITED
        assert "StopContainer" in plugin.names(container=cid)
        assert f"NRI update of container {cid} failed: container {cid} is exited" in nri_pods.daemon.log()
        kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), timeout=30)
        assert plugin.names(container=cid)[-2:] == ["StopContainer", "RemoveContainer"]


def test_plugin_crashing_mid_call_is_dropped_and_pods_go_on(kubelet: Kubelet, nri_dir: Path) -> None:
    daemon = kubelet.pods.daemon
    crasher = TestPlugin(daemon, nri_dir, "crasher", "05", crash="CreateContainer")
    staller = TestPlugin(daemon, nri_dir, "staller", "06", stall="StartContainer")
    survivor = TestPlugin(daemon, nri_dir, "survivor", "90")
    with plugins(crasher.start(), staller.start(), survivor.start()):
        pod_id, pod = kubelet.pod("nri-crash")
        cid = kubelet.run(pod_id, pod, "app", ["sleep", "300"])
        assert kubelet.status(cid).state == cri.CONTAINER_RUNNING
        assert crasher.proc is not None and crasher.proc.wait(10) == 3  # it died inside CreateContainer
        assert plugin_names(daemon) == ["90-survivor"]  # the staller timed out in StartContainer
        assert survivor.names(container=cid) == ["CreateContainer", "ValidateContainerAdjustment",
                                                 "PostCreateContainer", "StartContainer", "PostStartContainer"]


def test_failing_run_pod_sandbox_hook_leaves_nothing(nri_pods: Pods, nri_dir: Path) -> None:
    daemon = nri_pods.daemon
    plugin = TestPlugin(daemon, nri_dir, "refuser", "10", fail={"RunPodSandbox": "induced failure"})
    with plugins(plugin.start()):
        with pytest.raises(grpc.RpcError) as raised:
            nri_pods.run(_pod("refused"))
        assert "induced failure" in (raised.value.details() or "")
        assert daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items == []
        assert nri_pods.leaks() == []
        plugin.stop()
        assert wait_for(lambda: plugin_names(daemon) == [])
        assert nri_pods.run(_pod("refused"))  # the name is free again


def _pod(name: str) -> cri.PodSandboxConfig:
    return cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(name=name, namespace="default", uid=f"uid-{name}"))


@pytest.mark.parametrize(("adjustments", "message"), [
    ([{"env": [{"key": "SAME", "value": "1"}]}, {"env": [{"key": "SAME", "value": "2"}]}],
     "plugins '20-second' and '10-first' both tried to set Env 'SAME'"),
    ([{"linux": {"ioPriority": {"class": "IOPRIO_CLASS_BE", "priority": 2}}}, {}],
     "linux.io_priority (the I/O priority) is not supported by crisp"),
])
def test_create_container_fails_on_conflict_or_what_crisp_cannot_apply(
        nri_pods: Pods, nri_dir: Path, test_images: TestImages, tmp_path: Path, adjustments: list[dict[str, object]],
        message: str) -> None:
    kubelet = Kubelet(nri_pods, test_images, tmp_path / "logs")
    first = TestPlugin(nri_pods.daemon, nri_dir, "first", "10", adjust=adjustments[0])
    second = TestPlugin(nri_pods.daemon, nri_dir, "second", "20", adjust=adjustments[1])
    with plugins(first.start(), second.start()):
        pod_id, pod = kubelet.pod("nri-conflict")
        with pytest.raises(grpc.RpcError) as raised:
            kubelet.create(pod_id, pod, "app", ["sleep", "300"])
        assert message in (raised.value.details() or "")
        assert nri_pods.daemon.runtime.ListContainers(cri.ListContainersRequest()).containers == []
        assert not list((nri_pods.daemon.state / "containers").iterdir())


def test_pre_installed_plugin_and_status(tmp_path: Path, nri_dir: Path) -> None:
    script = nri_dir / "plugins" / "30-recorder"
    nri_dir.joinpath("plugins").mkdir(parents=True, exist_ok=True)
    script.write_text(f"#!/bin/sh\ncd {REPO} && exec {sys.executable} -m tests.nri.plugin_main\n")
    script.chmod(0o755)
    record, env_file = nri_dir / "recorder.jsonl", nri_dir / "env.json"
    nri_dir.joinpath("conf.d").mkdir(exist_ok=True)
    (nri_dir / "conf.d" / "30-recorder.conf").write_text(json.dumps({"record": str(record),
                                                                    "env_file": str(env_file)}))
    with running_pods(tmp_path, nri_config(nri_dir)) as p:
        (plugin,) = nri_status(p.daemon)["plugins"]
        assert (plugin["name"], plugin["kind"]) == ("30-recorder", "pre-connected")
        assert nri_status(p.daemon)["socket"] == str(nri_dir / "nri.sock")
        env = json.loads(env_file.read_text())["env"]
        assert {k: v for k, v in env.items() if k.startswith("NRI_")} == {
            "NRI_PLUGIN_NAME": "recorder", "NRI_PLUGIN_IDX": "30", "NRI_PLUGIN_SOCKET": "3"}
        pod_id = p.run(_pod("preinstalled"))
        assert wait_for(lambda: "RunPodSandbox" in record.read_text())
        assert pod_id in record.read_text()
        config = subprocess.run(p.daemon.command("config"), capture_output=True, text=True, check=True).stdout
        assert f'[nri]\nenable = true\nsocket_path = "{nri_dir}/nri.sock"' in config
    assert not (nri_dir / "nri.sock").exists()


def test_plugin_updates_a_container(nri_pods: Pods, test_images: TestImages, tmp_path: Path, nri_dir: Path) -> None:
    """UpdateContainers from a plugin reaches the container's recorded resources (this host's cgroup v2 has no
    controllers: the VM tier is where limits are enforced); an unknown container comes back as failed. Built-in
    executor only: crisp writes limits only into cgroups it made (under runc, UpdateContainerResources is refused
    the same way)."""
    kubelet = Kubelet(nri_pods, test_images, tmp_path / "logs")
    daemon = kubelet.pods.daemon
    pod_id, pod = kubelet.pod("nri-update")
    cid = kubelet.run(pod_id, pod, "app", ["sleep", "300"])
    code = ("import asyncio, json, sys\n"
            "from runtime.nri import api\n"
            "from tests.nri.stub import Stub\n"
            "async def main():\n"
            "    stub = Stub('updater', '40', api.event_mask(api.RUN_POD_SANDBOX))\n"
            "    await stub.connect(sys.argv[1])\n"
            "    ok = api.ContainerUpdate(container_id=sys.argv[2])\n"
            "    ok.linux.resources.cpu.shares.value = 512\n"
            "    failed = await stub.update_containers([ok, api.ContainerUpdate(container_id='nope')])\n"
            "    print(json.dumps([u.container_id for u in failed]))\n"
            "    await stub.close()\n"
            "asyncio.run(main())\n")
    out = subprocess.run([sys.executable, "-c", code, str(nri_dir / "nri.sock"), cid], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ["nope"], daemon.log()[-4000:]
    status = kubelet.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid)).status
    assert status.resources.linux.cpu_shares == 512


def test_update_events_and_amended_resources(nri_pods: Pods, test_images: TestImages, tmp_path: Path,
                                             nri_dir: Path) -> None:
    """UpdateContainerResources: the plugin sees the request and amends it (its cpu shares win); then
    PostUpdateContainer. UpdatePodSandboxResources: UpdatePodSandbox, then PostUpdatePodSandbox."""
    kubelet = Kubelet(nri_pods, test_images, tmp_path / "logs")
    plugin = TestPlugin(nri_pods.daemon, nri_dir, "amender", "10", amend={"cpu": {"shares": {"value": 300}}})
    with plugins(plugin.start()):
        pod_id, pod = kubelet.pod("nri-upd")
        cid = kubelet.run(pod_id, pod, "app", ["sleep", "300"])
        kubelet.rt.UpdateContainerResources(cri.UpdateContainerResourcesRequest(
            container_id=cid, linux=cri.LinuxContainerResources(cpu_shares=200, memory_limit_in_bytes=64 << 20)))
        status = kubelet.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid)).status
        assert (status.resources.linux.cpu_shares, status.resources.linux.memory_limit_in_bytes) == (300, 64 << 20)
        assert plugin.names(container=cid)[-2:] == ["UpdateContainer", "PostUpdateContainer"]
        (update,) = [e for e in plugin.events() if e["event"] == "UpdateContainer"]
        assert update["resources"]["cpu"]["shares"] == {"value": "200"}  # what the kubelet asked, before amending
        kubelet.rt.UpdatePodSandboxResources(cri.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=pod_id, resources=cri.LinuxContainerResources(cpu_shares=1024)))
        assert [e for e in plugin.names(pod=pod_id) if "PodSandbox" in e][-2:] == ["UpdatePodSandbox",
                                                                                  "PostUpdatePodSandbox"]
