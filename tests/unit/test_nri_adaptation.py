"""NRI's runtime side without crispd: plugins over a real unix socket (external) and launched from a plugin
directory (pre-installed, fd 3), registration, configuration, synchronization (split, and held against
creations), events, merged adjustments and their conflicts, and plugins that fail, crash or stall."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from runtime import errors
from runtime.nri import api, plugin
from runtime.nri.adaptation import Adaptation, Settings
from runtime.nri.plugin import PluginError, Timeouts
from runtime.nri.result import Conflict
from tests.leaks import await_until
from tests.nri.stub import Stub

REPO = Path(__file__).resolve().parents[2]


class FakeRuntime:
    def __init__(self) -> None:
        self.pods = [api.PodSandbox(id=f"pod{i}", name=f"p{i}") for i in range(2)]
        self.containers = [api.Container(id=f"ctr{i}", pod_sandbox_id="pod0", name=f"c{i}") for i in range(3)]
        self.updates: list[list[Any]] = []

    async def sync(self) -> tuple[list[Any], list[Any]]:
        return list(self.pods), list(self.containers)

    async def update(self, updates: list[Any]) -> list[Any]:
        self.updates.append(updates)
        return [u for u in updates if u.container_id == "unknown"]


def _adaptation(tmp_path: Path, runtime: FakeRuntime, request_timeout: float = 2.0) -> Adaptation:
    settings = Settings(socket_path=tmp_path / "nri.sock", plugin_path=tmp_path / "plugins",
                        plugin_config_path=tmp_path / "conf.d",
                        # a pre-installed plugin here is a Python process: on a loaded 2-core machine its start
                        # alone took over 2 s (the refusal of a silent one has its own short timeout)
                        timeouts=Timeouts(10.0, request_timeout))
    return Adaptation(settings, "crisp-test", "0.1", runtime.sync, runtime.update)


def _run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


async def _until(predicate: Callable[[], bool], what: str) -> None:
    assert await await_until(predicate, 5.0), f"timed out waiting for {what}"


async def _connect(nri: Adaptation, stub: Stub) -> None:
    before = len(nri.plugins())
    await stub.connect(str(nri.settings.socket_path))
    await _until(lambda: len(nri.plugins()) > before, f"plugin {stub.name} to join")


def test_external_plugin_registers_is_configured_and_synchronized(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        nri = _adaptation(tmp_path, runtime)
        await nri.start()
        configured: list[Any] = []
        stub = Stub("probe", "10", api.event_mask(api.RUN_POD_SANDBOX, api.CREATE_CONTAINER),
                    on_configure=configured.append)
        await _connect(nri, stub)
        assert configured[0].runtime_name == "crisp-test" and configured[0].request_timeout == 2000
        assert configured[0].NRI_version == api.NRI_VERSION
        assert stub.synced is not None
        assert [p.id for p in stub.synced[0]] == ["pod0", "pod1"]
        assert [c.id for c in stub.synced[1]] == ["ctr0", "ctr1", "ctr2"]
        (status,) = nri.status()["plugins"]
        assert status["name"] == "10-probe" and status["kind"] == "external"
        assert status["events"] == ["RUN_POD_SANDBOX", "CREATE_CONTAINER"]
        assert oct((tmp_path / "nri.sock").stat().st_mode & 0o777) == "0o600"
        await stub.close()
        await _until(lambda: not nri.plugins(), "the closed plugin to be dropped")
        await nri.stop()
        assert not (tmp_path / "nri.sock").exists()
    _run(scenario)


def test_bad_registration_and_silence_are_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        nri = _adaptation(tmp_path, FakeRuntime())
        nri.settings = Settings(nri.settings.socket_path, nri.settings.plugin_path,
                                nri.settings.plugin_config_path, Timeouts(registration=0.5, request=1.0))
        await nri.start()
        with pytest.raises(Exception, match="plugin index"):
            await Stub("bad", "1x", api.VALID_EVENTS).connect(str(nri.settings.socket_path))
        # a connection that never registers is closed after the registration timeout
        reader, _ = await asyncio.open_unix_connection(str(nri.settings.socket_path))
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert nri.plugins() == []
        await nri.stop()
    _run(scenario)


def test_events_in_index_order_and_errors(tmp_path: Path) -> None:
    async def scenario() -> None:
        nri = _adaptation(tmp_path, FakeRuntime())
        await nri.start()
        calls: list[str] = []

        def recorder(tag: str, fail: str = "") -> Callable[[Any], Awaitable[Any]]:
            async def handle(request: Any) -> Any:
                calls.append(tag)
                if fail:
                    raise errors.FailedPrecondition(fail)
                return None
            return handle

        late = Stub("late", "90", api.VALID_EVENTS, {"RunPodSandbox": recorder("90"),
                                                     "StopPodSandbox": recorder("90-stop", "no stopping")})
        early = Stub("early", "05", api.VALID_EVENTS, {"RunPodSandbox": recorder("05")})
        deaf = Stub("deaf", "50", api.event_mask(api.CREATE_CONTAINER), {"RunPodSandbox": recorder("50")})
        for stub in (late, early, deaf):
            await _connect(nri, stub)
        pod = api.PodSandbox(id="p", name="n")
        await nri.run_pod_sandbox(pod)
        assert calls == ["05", "90"]  # index order; "deaf" did not subscribe
        await nri.stop_pod_sandbox(pod)  # an error after the fact is logged, not raised
        assert calls[-1] == "90-stop"
        late.handlers["RunPodSandbox"] = recorder("90", "induced failure")
        with pytest.raises(PluginError, match="induced failure"):
            await nri.run_pod_sandbox(pod)
        await nri.stop()
    _run(scenario)


def test_adjustments_merge_and_conflict(tmp_path: Path) -> None:
    async def scenario() -> None:
        nri = _adaptation(tmp_path, FakeRuntime())
        await nri.start()
        seen_env: list[list[str]] = []

        def adjuster(adjust: dict[str, Any]) -> Callable[[Any], Awaitable[Any]]:
            async def handle(request: Any) -> Any:
                from google.protobuf import json_format

                seen_env.append(list(request.container.env))
                response = api.CreateContainerResponse()
                json_format.ParseDict(adjust, response.adjust)
                return response
            return handle

        first = Stub("first", "10", api.VALID_EVENTS, {"CreateContainer": adjuster(
            {"annotations": {"a": "1"}, "env": [{"key": "FROM_FIRST", "value": "x"}, {"key": "-DROP"}],
             "linux": {"resources": {"memory": {"limit": {"value": 1 << 20}}}}})})
        second = Stub("second", "20", api.VALID_EVENTS, {"CreateContainer": adjuster(
            {"annotations": {"b": "2"}, "mounts": [{"destination": "/x", "source": "/tmp", "type": "bind"}],
             "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 10}]})})
        await _connect(nri, first)
        await _connect(nri, second)
        container = api.Container(id="c1", env=["DROP=1", "KEEP=2"])
        response = await nri.create_container(api.PodSandbox(id="p"), container)
        adjust = response.adjust
        assert dict(adjust.annotations) == {"a": "1", "b": "2"}
        assert [(e.key, e.value) for e in adjust.env] == [("FROM_FIRST", "x"), ("-DROP", "")]
        assert adjust.linux.resources.memory.limit.value == 1 << 20
        assert adjust.mounts[0].destination == "/x" and adjust.rlimits[0].type == "RLIMIT_NOFILE"
        # the second plugin saw the container as the first left it
        assert seen_env == [["DROP=1", "KEEP=2"], ["KEEP=2", "FROM_FIRST=x"]]
        # two plugins setting the same thing: the request fails, naming both and the field
        second.handlers["CreateContainer"] = adjuster({"linux": {"resources": {"memory": {"limit": {"value": 5}}}}})
        with pytest.raises(Conflict, match="'20-second' and '10-first' both tried to set MemLimit"):
            await nri.create_container(api.PodSandbox(id="p"), api.Container(id="c2"))
        await nri.stop()
    _run(scenario)


def test_crashing_and_stalling_plugins_are_dropped(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        nri = _adaptation(tmp_path, runtime, request_timeout=0.5)
        await nri.start()
        socket_path = str(nri.settings.socket_path)
        procs = []
        for name, idx, behaviour in (("crasher", "10", "crash"), ("staller", "20", "stall")):
            config = {"socket": socket_path, "name": name, "idx": idx, behaviour: "CreateContainer"}
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.nri.plugin_main", json.dumps(config), cwd=REPO))
            await _until(lambda n=f"{idx}-{name}": n in [p.full_name for p in nri.plugins()], name)
        good = Stub("good", "30", api.VALID_EVENTS)
        await _connect(nri, good)
        response = await nri.create_container(api.PodSandbox(id="p"), api.Container(id="c1"))
        assert not response.adjust.annotations  # the event went on without the two
        assert [p.full_name for p in nri.plugins()] == ["30-good"]
        assert await asyncio.wait_for(procs[0].wait(), 10) == 3  # it crashed mid-call
        procs[1].kill()
        await procs[1].wait()
        await nri.stop()
    _run(scenario)


def test_large_synchronization_is_split_and_creations_wait_for_it(tmp_path: Path, monkeypatch: Any) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.containers = [api.Container(id=f"c{i:03}", annotations={"pad": "x" * 200}) for i in range(100)]
        monkeypatch.setattr(plugin, "SYNC_MESSAGE_LIMIT", 5000)
        nri = _adaptation(tmp_path, runtime)
        await nri.start()
        release = asyncio.Event()
        order: list[str] = []

        async def slow_sync(request: Any) -> Any:
            await release.wait()
            order.append("synchronized")
            return None

        stub = Stub("big", "10", api.VALID_EVENTS, {"Synchronize": slow_sync})
        joining = asyncio.create_task(_connect(nri, stub))
        await _until(lambda: nri.lock.syncing, "the synchronization to start")

        async def create() -> None:
            async with nri.creation():
                order.append("created")

        creating = asyncio.create_task(create())
        await asyncio.sleep(0.3)
        assert order == []  # the creation waits for the synchronization in progress
        release.set()
        await asyncio.gather(joining, creating)
        assert order == ["synchronized", "created"]
        assert stub.synced is not None and len(stub.synced[1]) == 100
        assert len(stub.sync_messages) > 3 and all(more for *_, more in stub.sync_messages[:-1])
        assert not stub.sync_messages[-1][2]
        await nri.stop()
    _run(scenario)


def test_pre_installed_plugin_gets_fd3_env_and_drop_in(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        nri = _adaptation(tmp_path, runtime)
        (tmp_path / "plugins").mkdir()
        (tmp_path / "conf.d").mkdir()
        script = tmp_path / "plugins" / "07-recorder"
        script.write_text(f"#!/bin/sh\ncd {REPO} && exec {sys.executable} -m tests.nri.plugin_main\n")
        script.chmod(0o755)
        (tmp_path / "plugins" / "not-executable.txt").write_text("")
        env_file, record = tmp_path / "env.json", tmp_path / "events.jsonl"
        (tmp_path / "conf.d" / "recorder.conf").write_text(json.dumps({"env_file": str(env_file),
                                                                      "record": str(record)}))
        await nri.start()
        (status,) = nri.status()["plugins"]
        assert status["name"] == "07-recorder" and status["kind"] == "pre-connected" and status["pid"] > 0
        seen = json.loads(env_file.read_text())
        assert {k: v for k, v in seen["env"].items() if k.startswith("NRI_")} == {
            "NRI_PLUGIN_NAME": "recorder", "NRI_PLUGIN_IDX": "07", "NRI_PLUGIN_SOCKET": "3"}
        events = [json.loads(line) for line in record.read_text().splitlines()]
        assert [e["event"] for e in events] == ["Configure", "Synchronize"]
        assert events[1]["containers"] == ["ctr0", "ctr1", "ctr2"]
        await nri.stop()
    _run(scenario)


def test_plugin_updates_containers(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        nri = _adaptation(tmp_path, runtime)
        await nri.start()
        stub = Stub("updater", "10", api.VALID_EVENTS)
        await _connect(nri, stub)
        update = api.ContainerUpdate(container_id="ctr1")
        update.linux.resources.cpu.shares.value = 512
        failed = await stub.update_containers([update, api.ContainerUpdate(container_id="unknown")])
        assert [u.container_id for u in failed] == ["unknown"]
        assert runtime.updates[-1][0].linux.resources.cpu.shares.value == 512
        await nri.stop()
    _run(scenario)


def test_validator_sees_the_merged_adjustment_and_may_reject_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        nri = _adaptation(tmp_path, FakeRuntime())
        await nri.start()
        seen: list[Any] = []

        async def adjust(request: Any) -> Any:
            response = api.CreateContainerResponse()
            response.adjust.annotations["owned"] = "by-adjuster"
            return response

        async def validate(request: Any) -> Any:
            seen.append(request)
            reject = request.adjust.annotations.get("owned") == "by-adjuster" and request.container.id == "bad"
            return api.ValidateContainerAdjustmentResponse(reject=reject, reason="not on my node")

        adjuster = Stub("adjuster", "10", api.event_mask(api.CREATE_CONTAINER), {"CreateContainer": adjust})
        validator = Stub("validator", "90", api.event_mask(api.VALIDATE_CONTAINER_ADJUSTMENT),
                         {"ValidateContainerAdjustment": validate})
        for stub in (adjuster, validator):  # kept referenced: the loop holds its tasks weakly
            await _connect(nri, stub)
        await nri.create_container(api.PodSandbox(id="p"), api.Container(id="good"))
        request = seen[0]
        assert [(p.name, p.index) for p in request.plugins] == [("adjuster", "10"), ("validator", "90")]
        owners = request.owners.owners["good"].compound[1].owners  # Field Annotations = 1
        assert dict(owners) == {"owned": "10-adjuster"}
        assert not request.container.annotations  # the container as it was before any adjustment
        with pytest.raises(PluginError, match=r"validator 90-validator rejected .* not on my node"):
            await nri.create_container(api.PodSandbox(id="p"), api.Container(id="bad"))
        await nri.stop()
    _run(scenario)
