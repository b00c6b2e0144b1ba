"""The streaming Backend over crisp's containers and pods: exec and attach through the container's shim,
port-forward in the pod's network namespace. The state is checked again when a URL is used (things change in a
minute); the Exec, Attach and PortForward RPCs check it with the same functions before they hand out the URL."""

from __future__ import annotations

import logging

from cri.shims.manager import ShimManager
from cri.store.containers import RUNNING, Container, ContainerStore
from cri.store.sandboxes import READY, Sandbox, SandboxStore
from cri.streaming.backend import Dialer, ProcessStream
from cri.streaming.dialer import HostDialer, NetnsDialer
from cri.streaming.requests import AttachRequest, ExecRequest, PortForwardRequest
from runtime import errors

log = logging.getLogger(__name__)


def check_stdio(what: str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
    if tty and stderr:
        # a terminal has one output: stdout and stderr cannot be told apart
        raise errors.InvalidArgument(f"{what}: tty and stderr cannot both be true")
    if not (stdin or stdout or stderr):
        raise errors.InvalidArgument(f"{what}: one of stdin, stdout or stderr must be set")


def running_container(containers: ContainerStore, container_id: str) -> Container:
    container = containers.get(container_id)
    if container.status.state != RUNNING:
        raise errors.FailedPrecondition(f"container {container.id} is {container.status.state}, not running")
    return container


def ready_sandbox(sandboxes: SandboxStore, sandbox_id: str) -> Sandbox:
    sandbox = sandboxes.get(sandbox_id)
    if sandbox.status.state != READY:
        raise errors.FailedPrecondition(f"pod {sandbox.id} is not ready")
    return sandbox


class ContainerStreams:
    def __init__(self, containers: ContainerStore, sandboxes: SandboxStore, shims: ShimManager) -> None:
        self.containers = containers
        self.sandboxes = sandboxes
        self.shims = shims

    async def exec(self, request: ExecRequest, width: int, height: int) -> ProcessStream:
        container = running_container(self.containers, request.container_id)
        log.info("container %s: exec %s (tty %s, stdin %s)", container.id, list(request.cmd), request.tty,
                 request.stdin)
        return await self.shims.client(container.id).exec(
            list(request.cmd), tty=request.tty, stdin=request.stdin, width=width, height=height)

    async def attach(self, request: AttachRequest) -> ProcessStream:
        container = running_container(self.containers, request.container_id)
        log.info("container %s: attach (stdin %s)", container.id, request.stdin)
        return await self.shims.client(container.id).attach(
            stdin=request.stdin, stdout=request.stdout, stderr=request.stderr)

    async def dialer(self, request: PortForwardRequest) -> Dialer:
        sandbox = ready_sandbox(self.sandboxes, request.sandbox_id)
        if sandbox.meta.host_network:
            return HostDialer()
        netns = sandbox.meta.namespaces.get("net")
        if not netns:
            raise errors.FailedPrecondition(f"pod {sandbox.id} has no network namespace of its own")
        return NetnsDialer(netns)
