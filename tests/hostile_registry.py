"""A registry on 127.0.0.1 that misbehaves: it serves real images (built with tests/imagetools) per repository,
each repository with its own way of going wrong (endless or dripping manifests, configs, blobs, headers, tokens).

`closed` records, per repository, when the server saw the client go away: a test can tell that crispd really
dropped a request (rather than leaving a thread blocked in it).
"""

from __future__ import annotations

import http.server
import time
from collections import defaultdict

from tests.imagetools import Image
from tests.registrytools import LoopbackHTTP

BEHAVIOURS = frozenset({
    "good", "endless-manifest", "huge-manifest", "drip-manifest", "drip-headers", "drip-config", "drip-blob",
    "endless-blob", "drip-token", "nested-manifest",
})
DRIP_SECONDS = 0.5


class HostileRegistry(LoopbackHTTP):
    def __init__(self) -> None:
        super().__init__()
        self.images: dict[str, tuple[Image, str]] = {}
        self.closed: dict[str, list[float]] = defaultdict(list)
        self.requests: dict[str, int] = defaultdict(int)

    def add(self, repo: str, img: Image, behaviour: str) -> str:
        assert behaviour in BEHAVIOURS, behaviour
        self.images[repo] = (img, behaviour)
        return f"{self.host}/{repo}:v1"

    # ------------------------------------------------------------------------------------------------ serving

    def serve_get(self, h: http.server.BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        if path == "/v2/" or path == "/v2":
            return self._send(h, 200, b"{}", "application/json")
        if path.startswith("/token/"):
            return self._drip(h, path.removeprefix("/token/"), b'{"token": "t"}', "application/json")
        parts = path.removeprefix("/v2/").rsplit("/", 2)
        if len(parts) != 3 or parts[0] not in self.images:
            return self._send(h, 404, b"{}", "application/json")
        repo, kind, ref = parts
        self.requests[repo] += 1
        img, behaviour = self.images[repo]
        if behaviour == "drip-token" and not h.headers.get("Authorization"):
            realm = f'Bearer realm="http://{self.host}/token/{repo}",service="hostile"'
            return self._send(h, 401, b"{}", "application/json", {"WWW-Authenticate": realm})
        if kind == "manifests":
            body, media = img.manifest, img.manifest_type
            if behaviour == "endless-manifest":
                return self._endless(h, repo, media, b"")
            if behaviour == "huge-manifest":
                return self._endless(h, repo, media, b"", length=64 << 20)
            if behaviour == "drip-manifest":
                return self._drip(h, repo, body, media)
            if behaviour == "drip-headers":
                return self._drip_headers(h, repo)
            if behaviour == "nested-manifest":  # valid JSON nesting too deep for a recursive parser
                return self._send(h, 200, b"[" * 200_000 + b"]" * 200_000, media)
            return self._send(h, 200, body, media)
        blobs = {img.id: img.config, **{lay.digest: lay.blob for lay in img.layers}}
        if kind != "blobs" or ref not in blobs:
            return self._send(h, 404, b"{}", "application/json")
        body = blobs[ref]
        is_config = ref == img.id
        if (behaviour == "drip-config" and is_config) or (behaviour == "drip-blob" and not is_config):
            return self._drip(h, repo, body, "application/octet-stream")
        if behaviour == "endless-blob" and not is_config:
            return self._endless(h, repo, "application/octet-stream", body)
        return self._send(h, 200, body, "application/octet-stream")

    def _send(self, h: http.server.BaseHTTPRequestHandler, status: int, body: bytes, media: str,
              headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", media)
        h.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(body)

    def _gone(self, repo: str) -> None:
        self.closed[repo].append(time.monotonic())

    def _endless(self, h: http.server.BaseHTTPRequestHandler, repo: str, media: str, head: bytes,
                 length: int | None = None) -> None:
        """`head`, then spaces for ever (as fast as the client reads), close-delimited or with a huge length."""
        h.send_response(200)
        h.send_header("Content-Type", media)
        if length is not None:
            h.send_header("Content-Length", str(length))
        h.send_header("Connection", "close")
        h.end_headers()
        chunk = b" " * 65536
        try:
            h.wfile.write(head)
            while not self.stopping.is_set():
                h.wfile.write(chunk)
        except OSError:
            self._gone(repo)
        h.close_connection = True

    def _drip(self, h: http.server.BaseHTTPRequestHandler, repo: str, body: bytes, media: str) -> None:
        """The right headers, then the body one byte every DRIP_SECONDS."""
        h.send_response(200)
        h.send_header("Content-Type", media)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Connection", "close")
        h.end_headers()
        try:
            h.wfile.flush()
            for i in range(len(body)):
                if self.stopping.wait(DRIP_SECONDS):
                    break
                h.wfile.write(body[i:i + 1])
                h.wfile.flush()
        except OSError:
            self._gone(repo)
        h.close_connection = True

    def _drip_headers(self, h: http.server.BaseHTTPRequestHandler, repo: str) -> None:
        """A status line, then a header that never ends, one byte every DRIP_SECONDS."""
        try:
            h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Drip: ")
            h.wfile.flush()
            while not self.stopping.wait(DRIP_SECONDS):
                h.wfile.write(b"x")
                h.wfile.flush()
        except OSError:
            self._gone(repo)
        h.close_connection = True

