"""Exec, Attach and PortForward: validate the request, cache it behind a one-time URL of the streaming server,
and (`ContainerStreams`) run what the URL's client asks for through the container's shim or in the pod."""

from __future__ import annotations

import logging

from cri import api as cri
from cri.service.context import ServiceContext
from cri.store.containers import RUNNING, Container
from cri.store.sandboxes import READY
from cri.streaming.backend import Dialer, ProcessStream
from cri.streaming.dialer import HostDialer, NetnsDialer
from cri.streaming.requests import AttachRequest, ExecRequest, PortForwardRequest
from runtime import errors

log = logging.getLogger(__name__)


def _check_stdio(what: str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
    if tty and stderr:
        # a terminal has one output: stdout and stderr cannot be told apart
        raise errors.InvalidArgument(f"{what}: tty and stderr cannot both be true")
    if not (stdin or stdout or stderr):
        raise errors.InvalidArgument(f"{what}: one of stdin, stdout or stderr must be set")


def _running(ctx: ServiceContext, container_id: str) -> Container:
    container = ctx.containers.get(container_id)
    if container.status.state != RUNNING:
        raise errors.FailedPrecondition(f"container {container.id} is {container.status.state}, not running")
    return container


async def exec_rpc(ctx: ServiceContext, request: cri.ExecRequest) -> cri.ExecResponse:
    if not request.container_id:
        raise errors.InvalidArgument("Exec needs a container id")
    if not request.cmd:
        raise errors.InvalidArgument("Exec needs a command")
    _check_stdio("Exec", request.tty, request.stdin, request.stdout, request.stderr)
    container = _running(ctx, request.container_id)
    url = ctx.streaming_server().url_for(ExecRequest(
        container_id=container.id, cmd=tuple(request.cmd), tty=request.tty, stdin=request.stdin,
        stdout=request.stdout, stderr=request.stderr))
    log.debug("container %s: exec %s at %s", container.id, list(request.cmd), url)
    return cri.ExecResponse(url=url)


async def attach_rpc(ctx: ServiceContext, request: cri.AttachRequest) -> cri.AttachResponse:
    if not request.container_id:
        raise errors.InvalidArgument("Attach needs a container id")
    _check_stdio("Attach", request.tty, request.stdin, request.stdout, request.stderr)
    container = _running(ctx, request.container_id)
    if request.stdin and not container.meta.config.stdin:
        raise errors.FailedPrecondition(f"container {container.id} was not created with stdin: cannot attach to it")
    if request.tty != container.meta.config.tty:
        raise errors.InvalidArgument(f"container {container.id} {'has' if container.meta.config.tty else 'has no'} "
                                     f"terminal, the attach asks for tty={request.tty}")
    url = ctx.streaming_server().url_for(AttachRequest(
        container_id=container.id, tty=request.tty, stdin=request.stdin, stdout=request.stdout,
        stderr=request.stderr))
    log.debug("container %s: attach at %s", container.id, url)
    return cri.AttachResponse(url=url)


async def port_forward_rpc(ctx: ServiceContext, request: cri.PortForwardRequest) -> cri.PortForwardResponse:
    if not request.pod_sandbox_id:
        raise errors.InvalidArgument("PortForward needs a pod sandbox id")
    for port in request.port:
        if not 0 < port < 65536:
            raise errors.InvalidArgument(f"PortForward: {port} is not a TCP port")
    sandbox = ctx.sandboxes.get(request.pod_sandbox_id)
    if sandbox.status.state != READY:
        raise errors.FailedPrecondition(f"pod {sandbox.id} is not ready")
    url = ctx.streaming_server().url_for(PortForwardRequest(sandbox_id=sandbox.id, ports=tuple(request.port)))
    log.debug("pod %s: port-forward at %s", sandbox.id, url)
    return cri.PortForwardResponse(url=url)


class ContainerStreams:
    """cri.streaming.backend.Backend over the service context: shims for exec and attach, the pod's network
    namespace for port-forward. The state is checked again when the URL is used: things change in a minute."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def exec(self, request: ExecRequest, width: int, height: int) -> ProcessStream:
        container = _running(self.ctx, request.container_id)
        log.info("container %s: exec %s (tty %s, stdin %s)", container.id, list(request.cmd), request.tty,
                 request.stdin)
        return await self.ctx.shims.client(container.id).exec(
            list(request.cmd), tty=request.tty, stdin=request.stdin, width=width, height=height)

    async def attach(self, request: AttachRequest) -> ProcessStream:
        container = _running(self.ctx, request.container_id)
        log.info("container %s: attach (stdin %s)", container.id, request.stdin)
        return await self.ctx.shims.client(container.id).attach(
            stdin=request.stdin, stdout=request.stdout, stderr=request.stderr)

    async def dialer(self, request: PortForwardRequest) -> Dialer:
        sandbox = self.ctx.sandboxes.get(request.sandbox_id)
        if sandbox.status.state != READY:
            raise errors.FailedPrecondition(f"pod {sandbox.id} is not ready")
        if sandbox.meta.host_network:
            return HostDialer()
        netns = sandbox.meta.namespaces.get("net")
        if not netns:
            raise errors.FailedPrecondition(f"pod {sandbox.id} has no network namespace of its own")
        return NetnsDialer(netns)
