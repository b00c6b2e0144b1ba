"""Test tools for images: a real docker-registry on loopback, a token server, and building + pushing OCI images.

Nothing here is crisp code: the tests use it to make real images (real tar layers, real manifests) and to serve
them from Debian's `docker-registry` on a random 127.0.0.1 port with a temporary storage dir.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
import zstandard

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "plain": "application/vnd.oci.image.layer.v1.tar",
}
DOCKER_GZIP_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
BUSYBOX = "/bin/busybox"  # Debian's busybox-static


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------------- layers


@dataclass
class Entry:
    """One tar entry: kind is file, dir, symlink, hardlink, char, block, fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    target: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    mtime: int = 1_700_000_000
    dev: tuple[int, int] = (0, 0)


def file(name: str, data: bytes = b"", mode: int = 0o644, **kw: Any) -> Entry:
    return Entry(name, "file", data, mode, **kw)


def directory(name: str, mode: int = 0o755, **kw: Any) -> Entry:
    return Entry(name, "dir", mode=mode, **kw)


def symlink(name: str, target: str, **kw: Any) -> Entry:
    return Entry(name, "symlink", target=target, mode=0o777, **kw)


def hardlink(name: str, target: str, **kw: Any) -> Entry:
    return Entry(name, "hardlink", target=target, **kw)


def tar_bytes(entries: list[Entry]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mode, info.uid, info.gid, info.mtime = e.mode, e.uid, e.gid, e.mtime
            if e.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                                    for k, v in e.xattrs.items()}
            data = None
            if e.kind == "file":
                info.size = len(e.data)
                data = io.BytesIO(e.data)
            elif e.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif e.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, e.target
            elif e.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, e.target
            elif e.kind in ("char", "block"):
                info.type = tarfile.CHRTYPE if e.kind == "char" else tarfile.BLKTYPE
                info.devmajor, info.devminor = e.dev
            elif e.kind == "fifo":
                info.type = tarfile.FIFOTYPE
            else:
                raise ValueError(e.kind)
            tar.addfile(info, data)
    return out.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


@dataclass
class Layer:
    blob: bytes
    media_type: str
    diff_id: str

    @property
    def digest(self) -> str:
        return sha256(self.blob)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.blob)}


def layer(entries: list[Entry], compression: str = "gzip", media_type: str | None = None) -> Layer:
    raw = tar_bytes(entries)
    return Layer(compress(raw, compression), media_type or LAYER_TYPES[compression], sha256(raw))


def busybox_layer(compression: str = "gzip") -> Layer:
    data = Path(BUSYBOX).read_bytes()
    return layer([
        directory("bin"), file("bin/busybox", data, 0o755), symlink("bin/sh", "busybox"),
        directory("etc"), file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/sh\n"),
        file("etc/group", b"root:x:0:\nwww-data:x:33:\n"),
        directory("tmp", 0o1777),
    ], compression)


# ---------------------------------------------------------------------------------------------------- images


@dataclass
class Image:
    config: bytes
    manifest: bytes
    layers: list[Layer]
    manifest_type: str = OCI_MANIFEST

    @property
    def id(self) -> str:
        return sha256(self.config)

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    def descriptor(self, platform: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.manifest_type, "digest": self.digest, "size": len(self.manifest)}
        if platform is not None:
            d["platform"] = platform
        d.update(extra)
        return d


def image(layers: list[Layer], user: str = "", cmd: list[str] | None = None, arch: str = "amd64",
          docker: bool = False, env: list[str] | None = None, labels: dict[str, str] | None = None,
          layer_type_override: str | None = None, variant: str = "",
          config: dict[str, Any] | None = None) -> Image:
    """`config` adds or replaces keys of the image config's `config` (Entrypoint, ExposedPorts, StopSignal...)."""
    document: dict[str, Any] = {
        "architecture": arch, "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"User": user, "Env": env or ["PATH=/bin"], "Cmd": cmd or ["/bin/sh"], "WorkingDir": "/",
                   "Labels": labels or {}, **(config or {})},
        "rootfs": {"type": "layers", "diff_ids": [lay.diff_id for lay in layers]},
    }
    if variant:
        document["variant"] = variant
    config_bytes = json.dumps(document, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG, "digest": sha256(config_bytes),
                   "size": len(config_bytes)},
        "layers": [{**lay.descriptor(), **({"mediaType": layer_type_override} if layer_type_override else {})}
                   for lay in layers],
    }
    return Image(config_bytes, json.dumps(manifest, sort_keys=True).encode(), layers,
                 DOCKER_MANIFEST if docker else OCI_MANIFEST)


def index(entries: list[dict[str, Any]], docker: bool = False) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST if docker else OCI_INDEX,
                       "manifests": entries}, sort_keys=True).encode()


def busybox_image() -> Image:
    """busybox-static as a docker image: every applet a /bin entry, so that commands like `sleep` are found as
    programs (and really exec'd), not only run as builtins of `sh`."""
    applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True, text=True).stdout.split()
    links = layer([symlink(f"bin/{a}", "busybox") for a in applets if a not in ("busybox", "sh")]
                  # www-data is also a member of audio (29): SupplementalGroupsPolicy Merge adds it, Strict not
                  + [file("etc/group", b"root:x:0:\nwww-data:x:33:\naudio:x:29:www-data\n")], "gzip")
    return image([busybox_layer("gzip"), links], docker=True)


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

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.port}/token"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


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


class SlowProxy:
    """An HTTP proxy in front of a registry that sends blob bodies slowly (`rate` bytes/s) or not at all."""

    def __init__(self, upstream: str, rate: int = 256 * 1024, stall: bool = False) -> None:
        self.upstream = upstream.rstrip("/")
        self.rate = rate
        self.stall = stall
        self._stop = threading.Event()
        self._server: http.server.ThreadingHTTPServer | None = None
        self.port = 0
        self.blob_requests = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> SlowProxy:
        owner = self
        http_pool = urllib3.PoolManager()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "authorization")}
                resp = http_pool.request("GET", owner.upstream + self.path, headers=headers, preload_content=True,
                                         redirect=True)
                is_blob = "/blobs/" in self.path
                body = resp.data
                self.send_response(resp.status)
                for key in ("Content-Type", "Docker-Content-Digest", "WWW-Authenticate"):
                    if key in resp.headers:
                        self.send_header(key, resp.headers[key])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not is_blob or len(body) < 64 * 1024:
                    self.wfile.write(body)
                    return
                owner.blob_requests += 1
                chunk = max(1, owner.rate // 20)
                for offset in range(0, len(body), chunk):
                    if owner._stop.is_set():
                        return
                    if owner.stall and offset > 0:
                        owner._stop.wait(120)
                        return
                    try:
                        self.wfile.write(body[offset:offset + chunk])
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.05)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def hosts_toml(certs_dir: Path, registry: str, *hosts: str, server: str | None = None) -> None:
    """Write `<certs_dir>/<registry>/hosts.toml` with plain-http mirrors in order."""
    d = certs_dir / registry
    d.mkdir(parents=True, exist_ok=True)
    lines = [f'server = "{server}"'] if server else []
    for h in hosts:
        lines += [f'[host."{h}"]', '  capabilities = ["pull", "resolve"]']
    (d / "hosts.toml").write_text("\n".join(lines) + "\n")
