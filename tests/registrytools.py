"""Test tools for registries: a real docker-registry on loopback, a token server, a pusher, a slow proxy.

Nothing here is crisp code: the tests push images built with tests/imagetools.py to Debian's `docker-registry`
on a random 127.0.0.1 port with a temporary storage dir, and serve it through hosts.toml.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import urllib3

from tests.imagetools import Image, sha256


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_http(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    """A threading HTTP server on a free 127.0.0.1 port (`server_address[1]`), serving in a daemon thread until
    `stop_http`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop_http(server: http.server.ThreadingHTTPServer | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()


class LoopbackHTTP:
    """An HTTP/1.1 server on a free 127.0.0.1 port that hands every GET to `serve_get`; `stop` sets `stopping`
    (for handlers that wait) and closes it."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._server: http.server.ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def serve_get(self, h: http.server.BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.serve_get(self)

        self._server = serve_http(Handler)
        self.port = self._server.server_address[1]
        return self

    def stop(self) -> None:
        self.stopping.set()
        stop_http(self._server)


# ---------------------------------------------------------------------------------------------------- push


class Pusher:
    """Pushes blobs and manifests to a registry (monolithic uploads), with basic or bearer auth."""

    def __init__(self, base_url: str, username: str = "", password: str = "") -> None:
        self.base = base_url.rstrip("/")
        self.http = urllib3.PoolManager()
        self.creds = (username, password)
        self.auth: str = ""

    def _request(self, method: str, url: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        for _ in range(2):
            send = dict(headers or {})
            if self.auth:
                send["Authorization"] = self.auth
            resp = self.http.request(method, url, body=body, headers=send, redirect=False)
            if resp.status != 401:
                return resp
            self._answer(resp.headers.get("WWW-Authenticate", ""))
        raise RuntimeError(f"{method} {url}: unauthorized")

    def _answer(self, challenge: str) -> None:
        scheme, _, rest = challenge.partition(" ")
        user, password = self.creds
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        if scheme.lower() == "basic":
            self.auth = f"Basic {basic}"
            return
        params = dict(p.split("=", 1) for p in rest.replace('"', "").split(","))
        scope = params.get("scope", "")
        if scope and ":push" not in scope and not scope.endswith("push"):
            scope = scope.rsplit(":", 1)[0] + ":pull,push"
        query = urllib.parse.urlencode({"service": params.get("service", ""), "scope": scope})
        resp = self.http.request("GET", f"{params['realm']}?{query}", headers={"Authorization": f"Basic {basic}"})
        if resp.status != 200:
            raise RuntimeError(f"token server: HTTP {resp.status}")
        self.auth = f"Bearer {json.loads(resp.data)['token']}"

    def blob(self, repo: str, data: bytes) -> str:
        digest = sha256(data)
        if self._request("HEAD", f"{self.base}/v2/{repo}/blobs/{digest}").status == 200:
            return digest
        resp = self._request("POST", f"{self.base}/v2/{repo}/blobs/uploads/")
        if resp.status != 202:
            raise RuntimeError(f"start upload: HTTP {resp.status} {resp.data[:200]!r}")
        location = urllib.parse.urljoin(self.base, resp.headers["Location"])
        sep = "&" if "?" in location else "?"
        resp = self._request("PUT", f"{location}{sep}digest={digest}", body=data,
                             headers={"Content-Type": "application/octet-stream"})
        if resp.status != 201:
            raise RuntimeError(f"upload {digest}: HTTP {resp.status} {resp.data[:200]!r}")
        return digest

    def manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        resp = self._request("PUT", f"{self.base}/v2/{repo}/manifests/{ref}", body=body,
                             headers={"Content-Type": media_type})
        if resp.status != 201:
            raise RuntimeError(f"put manifest {repo}:{ref}: HTTP {resp.status} {resp.data[:300]!r}")
        return sha256(body)

    def image(self, repo: str, img: Image, *tags: str) -> str:
        for lay in img.layers:
            self.blob(repo, lay.blob)
        self.blob(repo, img.config)
        for tag in tags or (img.digest,):
            self.manifest(repo, tag, img.manifest, img.manifest_type)
        return img.digest


# ---------------------------------------------------------------------------------------------------- registry


class TokenServer:
    """A bearer token server for docker-registry: JWTs signed (RS256, x5c) by a key made with openssl."""

    def __init__(self, workdir: Path, users: dict[str, str], service: str = "crisp-test",
                 issuer: str = "crisp-test-issuer") -> None:
        self.dir = workdir
        self.users = users
        self.service = service
        self.issuer = issuer
        self.key = workdir / "token.key"
        self.cert = workdir / "token.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                        "-out", str(self.cert), "-days", "2", "-subj", "/CN=crisp-test-token",
                        "-addext", "basicConstraints=critical,CA:TRUE",
                        "-addext", "keyUsage=critical,digitalSignature,keyCertSign"],
                       check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], check=True,
                             capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.requests: list[dict[str, str]] = []
        self._server: http.server.ThreadingHTTPServer | None = None
        self.port = 0

    @staticmethod
    def _b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    def token(self, scope: str) -> str:
        access = []
        if scope:
            kind, name, actions = scope.split(":", 2)
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": self.issuer, "sub": "crisp", "aud": self.service, "exp": now + 600, "nbf": now - 60,
                  "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing_input = f"{self._b64(json.dumps(header).encode())}.{self._b64(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing_input.encode(),
                             check=True, capture_output=True).stdout
        return f"{signing_input}.{self._b64(sig)}"

    def start(self) -> str:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                owner.requests.append(query)
                auth = self.headers.get("Authorization", "")
                ok = False
                if auth.startswith("Basic "):
                    user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    ok = owner.users.get(user) == password
                if not ok:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": owner.token(query.get("scope", ""))}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = serve_http(Handler)
        self.port = self._server.server_address[1]
        return f"http://127.0.0.1:{self.port}/token"

    def stop(self) -> None:
        stop_http(self._server)


class Registry:
    """Debian's docker-registry on a random 127.0.0.1 port with its storage in a temp dir."""

    def __init__(self, workdir: Path, htpasswd: dict[str, str] | None = None,
                 token: TokenServer | None = None, storage: Path | None = None, readonly: bool = False) -> None:
        """`storage`: serve this storage dir instead of a new one in `workdir`; `readonly`: refuse pushes and never
        write to it (so that several registries may serve one cached storage at once)."""
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.storage = storage or workdir / "storage"
        self.readonly = readonly
        self.port = free_port()
        self.htpasswd = htpasswd
        self.token = token
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "registry.log"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _config(self) -> str:
        lines = [
            "version: 0.1", "log:", "  level: info", "storage:", "  filesystem:",
            f"    rootdirectory: {self.storage}", "  delete:", f"    enabled: {'false' if self.readonly else 'true'}",
            "  maintenance:", "    uploadpurging:", "      enabled: false",
            "    readonly:", f"      enabled: {'true' if self.readonly else 'false'}",
            "http:", f"  addr: {self.host}", f"  secret: {os.urandom(8).hex()}",
        ]
        if self.htpasswd is not None:
            path = self.dir / "htpasswd"
            path.write_text("")
            for user, password in self.htpasswd.items():
                subprocess.run(["htpasswd", "-Bb", str(path), user, password], check=True, capture_output=True)
            lines += ["auth:", "  htpasswd:", "    realm: crisp-test", f"    path: {path}"]
        elif self.token is not None:
            realm = self.token.start()
            lines += ["auth:", "  token:", f"    realm: {realm}", f"    service: {self.token.service}",
                      f"    issuer: {self.token.issuer}", f"    rootcertbundle: {self.token.cert}"]
        return "\n".join(lines) + "\n"

    def start(self) -> Registry:
        config = self.dir / "registry.yml"
        config.write_text(self._config())
        binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log, close_fds=True,
                                         start_new_session=True)
        http = urllib3.PoolManager()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited:\n{self.log_path.read_text()}")
            with contextlib.suppress(urllib3.exceptions.HTTPError):
                if http.request("GET", f"{self.url}/v2/", retries=False, timeout=2).status in (200, 401):
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not answer:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.token is not None:
            self.token.stop()

    def blob_file(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running_registry(workdir: Path, **kw: Any) -> Iterator[Registry]:
    reg = Registry(workdir, **kw)
    try:
        yield reg.start()
    finally:
        reg.stop()


# ---------------------------------------------------------------------------------------------------- proxy


class SlowProxy(LoopbackHTTP):
    """An HTTP proxy in front of a registry that sends blob bodies slowly (`rate` bytes/s) or not at all."""

    def __init__(self, upstream: str, rate: int = 256 * 1024, stall: bool = False) -> None:
        super().__init__()
        self.upstream = upstream.rstrip("/")
        self.rate = rate
        self.stall = stall
        self.blob_requests = 0
        self._pool = urllib3.PoolManager()

    def serve_get(self, h: http.server.BaseHTTPRequestHandler) -> None:
        headers = {k: v for k, v in h.headers.items() if k.lower() in ("accept", "authorization")}
        resp = self._pool.request("GET", self.upstream + h.path, headers=headers, preload_content=True, redirect=True)
        is_blob = "/blobs/" in h.path
        body = resp.data
        h.send_response(resp.status)
        for key in ("Content-Type", "Docker-Content-Digest", "WWW-Authenticate"):
            if key in resp.headers:
                h.send_header(key, resp.headers[key])
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not is_blob or len(body) < 64 * 1024:
            h.wfile.write(body)
            return
        self.blob_requests += 1
        chunk = max(1, self.rate // 20)
        for offset in range(0, len(body), chunk):
            if self.stopping.is_set():
                return
            if self.stall and offset > 0:
                self.stopping.wait(120)
                return
            try:
                h.wfile.write(body[offset:offset + chunk])
                h.wfile.flush()
            except OSError:
                return
            time.sleep(0.05)


def hosts_toml(certs_dir: Path, registry: str, *hosts: str, server: str | None = None) -> None:
    """Write `<certs_dir>/<registry>/hosts.toml` with plain-http mirrors in order."""
    d = certs_dir / registry
    d.mkdir(parents=True, exist_ok=True)
    lines = [f'server = "{server}"'] if server else []
    for h in hosts:
        lines += [f'[host."{h}"]', '  capabilities = ["pull", "resolve"]']
    (d / "hosts.toml").write_text("\n".join(lines) + "\n")
