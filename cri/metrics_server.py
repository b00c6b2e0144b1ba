"""The Prometheus endpoint: a small HTTP/1.1 server on crispd's event loop (`[metrics] address`).

    GET /metrics   the registry in the text format Prometheus asks for (OpenMetrics or 0.0.4), gzip if accepted
    GET /healthz   200 "ok" once crispd serves the CRI, 503 with the reason before that and while it stops

The loop only parses requests and writes answers: the page is rendered (and compressed) in a worker thread, from
counters that are thread-safe and from a snapshot taken just before (the stores, read on the loop; the pods' and
containers' cAdvisor metrics, read from their cgroups in worker threads). One request per
connection (the answer says `Connection: close`); requests are small and must arrive within a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
from collections.abc import Awaitable, Callable

from prometheus_client.exposition import choose_encoder

from cri.config import parse_host_port
from cri.metrics import Metrics, StateSnapshot
from cri.server import Readiness

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 16 * 1024
REQUEST_TIMEOUT = 10.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class MetricsServer:
    def __init__(self, address: str, metrics: Metrics, readiness: Readiness,
                 snapshot: Callable[[], Awaitable[StateSnapshot]]) -> None:
        self.host, self.port = parse_host_port(address)
        self.metrics = metrics
        self.readiness = readiness
        self.snapshot = snapshot
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where it listens (host, port) once started: port 0 in the config means the kernel picked one."""
        if self._server is None:
            return []
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_REQUEST_BYTES,
                                                  reuse_address=True)
        for host, port in self.addresses:
            shown = f"[{host}]" if ":" in host else host
            log.info("metrics on http://%s:%d/metrics", shown, port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:
            log.exception("metrics: request failed")
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        except asyncio.LimitOverrunError:
            await _answer(writer, 431, b"request too large\n")
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await _answer(writer, 400, b"bad request\n")
            return
        method, target, _ = parts
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            await _answer(writer, 405, b"only GET and HEAD\n", extra={"Allow": "GET, HEAD"})
            return
        head_only = method == "HEAD"
        if path == "/metrics":
            body, content_type, encoding = await self._render(headers.get("accept", ""),
                                                              headers.get("accept-encoding", ""))
            extra = {"Content-Encoding": encoding} if encoding else {}
            await _answer(writer, 200, body, content_type, extra, head_only)
        elif path == "/healthz":
            if self.readiness.ready:
                await _answer(writer, 200, b"ok\n", head_only=head_only)
            else:
                await _answer(writer, 503, f"not ready: {self.readiness.reason}\n".encode(), head_only=head_only)
        else:
            await _answer(writer, 404, b"not found: try /metrics or /healthz\n", head_only=head_only)

    async def _render(self, accept: str, accept_encoding: str) -> tuple[bytes, str, str]:
        self.metrics.set_state(await self.snapshot())
        encoder, content_type = choose_encoder(accept)
        use_gzip = "gzip" in accept_encoding

        def render() -> bytes:
            body = bytes(encoder(self.metrics.registry))
            return gzip.compress(body, compresslevel=5) if use_gzip else body

        body = await asyncio.to_thread(render)
        return body, content_type, "gzip" if use_gzip else ""


async def _answer(writer: asyncio.StreamWriter, status: int, body: bytes,
                  content_type: str = "text/plain; charset=utf-8", extra: dict[str, str] | None = None,
                  head_only: bool = False) -> None:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if not head_only:
        writer.write(body)
    await writer.drain()
