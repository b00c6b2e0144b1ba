"""crisp's streaming server: the HTTP/1.1 endpoint behind the URLs that Exec, Attach and PortForward return.

`GET|POST /{exec,attach,portforward}/<token>` redeems a single-use token (the request it carries is all that
counts; the query string is ignored), negotiates a sub-protocol through `X-Stream-Protocol-Version` (the client's
order of preference wins; 400 when the client names none, 403 with `X-Accepted-Stream-Protocol-Versions` when none
fits), and upgrades the connection to SPDY/3.1 (101 Switching Protocols). The remote command and port-forward
protocols then run on the session. HTTP is parsed by h11; nothing else is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Sequence

import h11

from cri.config import StreamingConfig
from cri.streaming import portforward, remotecommand
from cri.streaming.backend import Backend, Dialer, ProcessStream
from cri.streaming.requests import AttachRequest, ExecRequest, PortForwardRequest, StreamRequest
from cri.streaming.spdy.session import SpdySession, StreamFilter
from cri.streaming.tokens import TokenCache
from runtime import errors

log = logging.getLogger(__name__)

SPDY_31 = "SPDY/3.1"
REQUEST_TIMEOUT = 30.0        # the request line and headers must arrive within this
MAX_REQUEST_HEAD = 64 * 1024
MAX_REQUEST_BODY = 64 * 1024  # clients send none; a little is read and dropped
READ_SIZE = 64 * 1024


class _HttpError(Exception):
    def __init__(self, status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


def _header_values(request: h11.Request, name: bytes) -> list[str]:
    values: list[str] = []
    for key, value in request.headers:
        if key == name:
            values.extend(v.strip() for v in value.decode("latin-1").split(",") if v.strip())
    return values


def negotiate(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """The first protocol the client offers that the server supports."""
    for protocol in offered:
        if protocol in supported:
            return protocol
    return None


class StreamingServer:
    def __init__(self, config: StreamingConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.tokens = TokenCache(config.token_ttl_seconds, config.max_tokens)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._sessions: set[SpdySession] = set()
        self.base_url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connection, self.config.address, self.config.port,
                                                  limit=READ_SIZE)
        host, port = self._server.sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
        self.base_url = f"http://{shown}:{port}"
        log.info("streaming server listening on %s", self.base_url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for session in list(self._sessions):
            session.abort()  # no lingering: the clients see the connection end
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    def url_for(self, request: StreamRequest) -> str:
        """A one-time URL for request (ResourceExhausted when too many are waiting)."""
        if not self.base_url:
            raise errors.Unavailable("the streaming server is not running")
        return f"{self.base_url}/{request.kind}/{self.tokens.insert(request)}"

    # --- one connection ----------------------------------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        try:
            await self._serve(reader, writer, peer)
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            # a client that hung up (finished, gave up, killed): an everyday end, not crispd's failure
            log.debug("streaming: %s went away: %r", peer, exc)
            writer.transport.abort()
        except Exception:
            log.exception("streaming connection from %s failed", peer)
            writer.transport.abort()
        finally:
            self._connections.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: object) -> None:
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        try:
            request = await asyncio.wait_for(self._read_request(http, reader), REQUEST_TIMEOUT)
        except TimeoutError:
            log.debug("streaming: %s sent no request in time", peer)
            return
        except h11.RemoteProtocolError as exc:
            await self._respond(http, writer, _HttpError(exc.error_status_hint, f"bad request: {exc}"))
            return
        if request is None:
            return
        try:
            cached, protocol = self._route(request)
        except _HttpError as exc:
            log.info("streaming: %s %s from %s: %d %s", request.method.decode(),
                     request.target.decode(errors="replace"), peer, exc.status, exc.message)
            await self._respond(http, writer, exc)
            return
        dialer: Dialer | None = None
        if isinstance(cached, PortForwardRequest):
            try:
                dialer = await self.backend.dialer(cached)
            except errors.CrispError as exc:
                status = 404 if isinstance(exc, errors.NotFound) else 500
                log.info("streaming: port-forward to pod %s: %s", cached.sandbox_id, exc)
                await self._respond(http, writer, _HttpError(status, f"unable to forward ports: {exc}"))
                return
        try:
            await self._upgrade(http, reader, writer, peer, cached, protocol, dialer)
        finally:
            if dialer is not None:
                await dialer.close()

    async def _upgrade(self, http: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       peer: object, cached: StreamRequest, protocol: str, dialer: Dialer | None) -> None:
        headers = [("Connection", "Upgrade"), ("Upgrade", SPDY_31), ("X-Stream-Protocol-Version", protocol)]
        writer.write(http.send(h11.InformationalResponse(status_code=101, headers=headers)) or b"")
        trailing, _ = http.trailing_data
        name = f"{cached.kind} {getattr(cached, 'container_id', '') or getattr(cached, 'sandbox_id', '')}"
        log.info("streaming %s: %s session (%s) from %s", name, SPDY_31, protocol, peer)
        session = SpdySession(reader, writer, bytes(trailing), idle_timeout=self.config.idle_timeout_seconds,
                              stream_filter=self._stream_filter(cached), name=name)
        reading = asyncio.create_task(session.run())
        self._sessions.add(session)
        try:
            await self._run_protocol(session, cached, protocol, name, dialer)
        finally:
            self._sessions.discard(session)
            await session.close()
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading

    async def _read_request(self, http: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
        request: h11.Request | None = None
        body = 0
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(READ_SIZE)
                http.receive_data(data)
                if not data and request is None:
                    return None
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += len(event.data)
                if body > MAX_REQUEST_BODY:
                    raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                return request
            elif isinstance(event, h11.ConnectionClosed):
                return None

    def _route(self, request: h11.Request) -> tuple[StreamRequest, str]:
        if request.method not in (b"GET", b"POST"):
            raise _HttpError(405, f"method {request.method.decode(errors='replace')} is not allowed",
                             [("Allow", "GET, POST")])
        path = request.target.decode("latin-1").split("?", 1)[0]
        parts = path.strip("/").split("/")
        if len(parts) != 2 or parts[0] not in ("exec", "attach", "portforward"):
            raise _HttpError(404, f"no such streaming endpoint {path!r}")
        kind, token = parts
        cached = self.tokens.consume(token)
        if cached is None or cached.kind != kind:
            raise _HttpError(404, f"{kind} token not found: unknown, already used, or expired")
        supported = portforward.PROTOCOLS if kind == "portforward" else remotecommand.PROTOCOLS
        offered = _header_values(request, b"x-stream-protocol-version")
        if not offered:
            raise _HttpError(400, "unable to upgrade: X-Stream-Protocol-Version is required")
        protocol = negotiate(offered, supported)
        if protocol is None:
            raise _HttpError(403, f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
                             f"server accepts {list(supported)}",
                             [("X-Accepted-Stream-Protocol-Versions", p) for p in supported])
        connection = " ".join(_header_values(request, b"connection")).lower()
        upgrade = " ".join(_header_values(request, b"upgrade")).lower()
        if "upgrade" not in connection or SPDY_31.lower() not in upgrade:
            if "websocket" in upgrade:
                raise _HttpError(400, "unable to upgrade: crisp streams over SPDY/3.1 only (no WebSocket yet)")
            raise _HttpError(400, "unable to upgrade: missing upgrade headers in request "
                             "(Connection: Upgrade, Upgrade: SPDY/3.1)")
        return cached, protocol

    def _stream_filter(self, cached: StreamRequest) -> StreamFilter | None:
        if isinstance(cached, PortForwardRequest):
            ports = cached.ports
            return lambda headers: portforward.check_stream_headers(headers, ports)
        return None

    async def _respond(self, http: h11.Connection, writer: asyncio.StreamWriter, error: _HttpError) -> None:
        body = (error.message + "\n").encode()
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff"),
                   ("Content-Length", str(len(body))), ("Connection", "close"), *error.headers]
        with contextlib.suppress(h11.LocalProtocolError):
            writer.write(http.send(h11.Response(status_code=error.status, headers=headers)) or b"")
            writer.write(http.send(h11.Data(data=body)) or b"")
            writer.write(http.send(h11.EndOfMessage()) or b"")
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def _run_protocol(self, session: SpdySession, cached: StreamRequest, protocol: str, name: str,
                            dialer: Dialer | None) -> None:
        timeout = self.config.stream_creation_timeout_seconds
        if isinstance(cached, ExecRequest):
            options = remotecommand.Options(cached.stdin, cached.stdout, cached.stderr, cached.tty)
            command = remotecommand.RemoteCommand(session, protocol, options, timeout, name)
            request = cached

            async def start_exec(width: int, height: int) -> ProcessStream:
                return await self.backend.exec(request, width, height)

            await command.serve(start_exec, "[" + " ".join(cached.cmd) + "]")
        elif isinstance(cached, AttachRequest):
            options = remotecommand.Options(cached.stdin, cached.stdout, cached.stderr, cached.tty)
            command = remotecommand.RemoteCommand(session, protocol, options, timeout, name)
            attach = cached

            async def start_attach(width: int, height: int) -> ProcessStream:
                return await self.backend.attach(attach)

            await command.serve(start_attach, None)
        else:
            assert dialer is not None
            await portforward.PortForward(session, dialer, cached.sandbox_id, timeout, name).serve()
