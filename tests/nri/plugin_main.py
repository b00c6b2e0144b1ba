"""A test NRI plugin program, its behaviour from a JSON config: pre-installed (launched by crispd with fd 3, its
config from the drop-in) or external (`python -m tests.nri.plugin_main '<config>'`, config with "socket", "name",
"idx").

Config keys: "events" (method names to subscribe to; default all), "record" (a file: one JSON line per call, with
the pod and container ids and names and a timestamp), "adjust" (CreateContainer's ContainerAdjustment, as JSON),
"update" (CreateContainer's updates of other containers, JSON list), "stop_update" (StopContainer's updates, JSON
list; the container id "SELF" stands for the stopped container), "amend" (UpdateContainer's LinuxResources
for the container being updated, as JSON), "fail" ({method: message}: answer with an
error), "crash" (method: exit mid-call), "stall" (method: never answer), "hold" ({method: file}: answer once the file
exists), "env_file" (write the environment and what fd 3 is there at start).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from runtime import errors
from runtime.nri import api
from tests.nri.stub import _METHODS, Stub

EVENT_METHODS = [m for m in _METHODS if m not in ("Configure", "Synchronize", "Shutdown", "StateChange")]


def event_number(method: str) -> int:
    return int(getattr(api, re.sub(r"(?<!^)(?=[A-Z])", "_", method).upper()))


class Behaviour:
    def __init__(self) -> None:
        self.config: dict[str, Any] = {}

    def configure(self, config: dict[str, Any]) -> None:
        self.config = config

    def record(self, line: dict[str, Any]) -> None:
        if "record" in self.config:
            with open(self.config["record"], "a") as f:
                f.write(json.dumps({**line, "t": time.time_ns()}) + "\n")

    def handler(self, method: str) -> Any:
        async def handle(request: Any) -> Any:
            config = self.config
            pod = request.pod if request.DESCRIPTOR.fields_by_name.get("pod") else None
            container = request.container if request.DESCRIPTOR.fields_by_name.get("container") else None
            line: dict[str, Any] = {"event": method}
            if pod is not None:
                line.update(pod=pod.id, pod_name=pod.name, pod_uid=pod.uid, pod_namespace=pod.namespace)
            if container is not None:
                line.update(container=container.id, container_name=container.name, state=container.state,
                            pid=container.pid, exit_code=container.exit_code)
            if method == "Synchronize":
                line.update(pods=[p.id for p in request.pods], containers=[c.id for c in request.containers])
            if method in ("UpdateContainer", "UpdatePodSandbox"):
                line.update(resources=json_format.MessageToDict(request.linux_resources))
            if method == "CreateContainer":
                line.update(env=list(request.container.env), annotations=dict(request.container.annotations))
            self.record(line)
            if config.get("crash") == method:
                os._exit(3)
            if config.get("stall") == method:
                await asyncio.Event().wait()
            hold = config.get("hold", {}).get(method)
            if hold:
                await _until_exists(Path(hold))
            if method in config.get("fail", {}):
                raise errors.FailedPrecondition(config["fail"][method])
            if method == "CreateContainer":
                response = api.CreateContainerResponse()
                if "adjust" in config:
                    json_format.ParseDict(config["adjust"], response.adjust)
                for update in config.get("update", []):
                    json_format.ParseDict(update, response.update.add())
                return response
            if method == "StopContainer" and "stop_update" in config:
                response = api.StopContainerResponse()
                for update in config["stop_update"]:
                    added = response.update.add()
                    json_format.ParseDict(update, added)
                    if added.container_id == "SELF":
                        added.container_id = request.container.id
                return response
            if method == "UpdateContainer" and "amend" in config:
                response = api.UpdateContainerResponse()
                amended = response.update.add(container_id=request.container.id)
                json_format.ParseDict(config["amend"], amended.linux.resources)
                return response
            return None
        return handle


async def _until_exists(path: Path) -> None:
    while not await asyncio.to_thread(path.exists):  # noqa: ASYNC110 (a file another process makes)
        await asyncio.sleep(0.02)


async def main(argv: list[str]) -> int:
    behaviour = Behaviour()
    external = json.loads(argv[0]) if argv else None
    if external is not None:
        behaviour.configure(external)
    config = external or {}

    def on_configure(request: Any) -> None:
        if external is None:
            behaviour.configure(json.loads(request.config or "{}"))
        behaviour.record({"event": "Configure", "runtime": request.runtime_name, "config": request.config,
                          "request_timeout": request.request_timeout})
        if "env_file" in behaviour.config:
            Path(behaviour.config["env_file"]).write_text(json.dumps({"env": dict(os.environ), "argv": sys.argv}))
    names = config.get("events") or EVENT_METHODS
    events = api.event_mask(*(event_number(m) for m in names))
    name = config.get("name") or os.environ.get("NRI_PLUGIN_NAME", "test")
    idx = config.get("idx") or os.environ.get("NRI_PLUGIN_IDX", "50")
    stub = Stub(name, idx, events, {m: behaviour.handler(m) for m in [*EVENT_METHODS, "Synchronize"]}, on_configure)
    await stub.connect(config.get("socket"))
    await stub.closed.wait()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
