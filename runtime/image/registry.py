"""A client of the OCI distribution API (pull side), on urllib3; blocking: use it from worker threads.

- Hosts come from hosts.toml (`runtime.image.hosts`): mirrors in order, then the upstream; a host that fails
  (connection error, 5xx, 404, 401 after auth) passes the request to the next one.
- Auth: anonymous, then on a 401 challenge `Basic` (the credentials) or `Bearer` (a token from the realm, fetched
  with the credentials, an identity token as OAuth2 refresh token, or a registry token used as is). Credentials are
  never logged.
- Redirects (to blob storage) are followed; urllib3 drops the Authorization header when the host changes.
- Every manifest and blob is verified against its digest (and size) before anyone uses it.
- Hostile registries (transport.py): manifests, indexes, configs and tokens are read up to a cap per media type
  and must be complete within `request_timeout` (headers included); a blob must send its headers within it and
  then a byte at least every `read_timeout`, and stops at its descriptor's size. `abort()` cuts off every request
  of the session wherever it is blocked.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from runtime import errors
from runtime.image import transport
from runtime.image.hosts import RegistryHost
from runtime.image.manifest import MANIFEST_ACCEPT, MAX_TOKEN_BYTES, detect_media_type, max_bytes
from runtime.image.reference import Reference
from runtime.image.store import BlobWriter, DigestMismatch, sha256_digest
from runtime.image.transport import Request, TooLarge
from runtime.version import VERSION

log = logging.getLogger(__name__)

USER_AGENT = f"crisp/{VERSION}"
# one more connect attempt; reads are never retried (a failed blob read falls through to the next host)
_RETRIES = urllib3.Retry(total=None, connect=1, read=0, status=0, other=0, redirect=5, raise_on_redirect=True)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Credentials:
    """What a CRI AuthConfig (or crisp.toml's default auth) gives; `server` limits it to one registry host."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""
    server: str = ""

    def __repr__(self) -> str:  # never show secrets in logs or tracebacks
        return f"Credentials(username={self.username!r}, server={self.server!r})"

    @staticmethod
    def from_auth(username: str = "", password: str = "", auth: str = "", identity_token: str = "",
                  registry_token: str = "", server: str = "") -> Credentials | None:
        if auth and not username:
            try:
                decoded = base64.b64decode(auth, validate=True).decode()
                username, _, password = decoded.partition(":")
            except (ValueError, UnicodeDecodeError):
                raise errors.InvalidArgument("auth: not base64 of 'username:password'") from None
        if not (username or password or identity_token or registry_token):
            return None
        server = server.removeprefix("https://").removeprefix("http://").rstrip("/")
        return Credentials(username, password, identity_token, registry_token, server)

    def applies_to(self, host: RegistryHost) -> bool:
        if not self.server:
            return True
        server = self.server.removesuffix("/v1").removesuffix("/v2")
        if server in ("index.docker.io", "registry-1.docker.io", "docker.io"):
            server = "docker.io"
        return server in (host.netloc, host.registry)


class RegistryError(errors.Unavailable):
    """A registry could not serve a request (network, server error, refused auth)."""


class AuthError(errors.FailedPrecondition):
    """A registry refused the credentials (or wanted some and got none)."""


_CHALLENGE_RE = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="...",scope="..."` -> ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in _CHALLENGE_RE.finditer(rest)}
    return scheme.lower(), params


class _Pools:
    """urllib3 pool managers, one per TLS setup, shared by all pulls (connections are reused)."""

    def __init__(self, max_connections: int) -> None:
        self._lock = threading.Lock()
        self._pools: dict[tuple[Any, ...], urllib3.PoolManager] = {}
        self._max = max_connections

    def get(self, host: RegistryHost) -> urllib3.PoolManager:
        key = (host.skip_verify, host.ca_files, host.client_certs)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = transport.pool_manager(num_pools=32, maxsize=self._max, ssl_context=self._context(host))
                self._pools[key] = pool
            return pool

    @staticmethod
    def _context(host: RegistryHost) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if host.skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        for ca in host.ca_files:
            try:
                ctx.load_verify_locations(cafile=ca)
            except (OSError, ssl.SSLError) as exc:
                raise errors.InvalidArgument(f"registry host {host}: cannot load CA file {ca}: {exc}") from None
        for cert, key in host.client_certs:
            try:
                ctx.load_cert_chain(cert, key or None)
            except (OSError, ssl.SSLError) as exc:
                raise errors.InvalidArgument(
                    f"registry host {host}: cannot load client certificate {cert}: {exc}") from None
        return ctx

    def clear(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                pool.clear()
            self._pools.clear()


class RegistryClient:
    """Shared by all pulls: connection pools and timeouts. `session()` makes the per-pull state."""

    def __init__(self, request_timeout: float, read_timeout: float, max_connections: int = 10) -> None:
        self.request_timeout = request_timeout
        self.read_timeout = read_timeout
        self._pools = _Pools(max_connections)
        self.reaper = transport.Reaper()

    def session(self, ref: Reference, hosts: list[RegistryHost], credentials: list[Credentials],
                cancel: threading.Event | None = None) -> RepositorySession:
        return RepositorySession(self, ref, hosts, credentials, cancel or threading.Event())

    def close(self) -> None:
        self._pools.clear()
        self.reaper.close()

    def pool(self, host: RegistryHost) -> urllib3.PoolManager:
        return self._pools.get(host)


@dataclass(frozen=True)
class Resolved:
    """What a reference resolved to: the manifest or index the registry has under that tag or digest."""

    digest: str
    media_type: str
    body: bytes
    host: RegistryHost


class _HostFailed(Exception):
    """This host cannot serve the request; the next host may. `not_found`: it answered 404."""

    def __init__(self, message: str, not_found: bool = False, auth: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found
        self.auth = auth


def _refusal(host: RegistryHost, what: str) -> Callable[[int], _HostFailed]:
    """A registry's answer other than 200 to a manifest or blob request: 404 is "not found" (the best answer
    there is), anything else this host's failure."""
    def refused(status: int) -> _HostFailed:
        if status == 404:
            return _HostFailed(f"{host}: {what} not found", not_found=True)
        return _HostFailed(f"{host}: {what}: HTTP {status}")
    return refused


class RepositorySession:
    """One repository on its hosts, with the auth state of one pull."""

    def __init__(self, client: RegistryClient, ref: Reference, hosts: list[RegistryHost],
                 credentials: list[Credentials], cancel: threading.Event) -> None:
        self.client = client
        self.ref = ref
        self.hosts = hosts
        self.credentials = credentials
        self.cancel = cancel
        self._auth_headers: dict[str, str] = {}  # host netloc -> Authorization value
        self._preferred: RegistryHost | None = None
        self._requests = transport.Requests(client.reaper)
        self._lock = threading.Lock()

    def abort(self) -> None:
        """Cancel the session: every request of it, blocked in other threads wherever, returns at once (their
        sockets are shut), and any request made later fails."""
        self.cancel.set()
        self._requests.abort()

    def _track(self, what: str, timeout: float | None) -> contextlib.AbstractContextManager[Request]:
        if self.cancel.is_set():
            raise errors.Cancelled(f"{what}: cancelled")
        return self._requests.request(what, timeout)

    def _failed(self, host: RegistryHost, request: Request, what: str, exc: BaseException) -> Exception:
        """What a failed read or request means: cancelled, too slow, or this host's failure."""
        if request.aborted or self.cancel.is_set():
            return errors.Cancelled(f"{what}: cancelled")
        if request.expired:
            return _HostFailed(f"{host}: {what}: no complete answer within {self.client.request_timeout:g} s")
        return _HostFailed(f"{host}: {what}: {type(exc).__name__}: {exc}")

    def _read_answer(self, host: RegistryHost, request: Request, resp: urllib3.BaseHTTPResponse, what: str,
                     limit: int, refused: Callable[[int], _HostFailed],
                     too_large: Callable[[TooLarge], Exception]) -> bytes:
        """The body of a 200 answer, at most `limit` bytes and complete within the request's deadline; another
        status is `refused(status)`, a longer body `too_large`. The response is released whatever happens."""
        try:
            if resp.status != 200:
                raise refused(resp.status)
            body = transport.read_capped(resp, limit)
        except TooLarge as exc:
            raise too_large(exc) from None
        except (Urllib3Error, OSError) as exc:
            raise self._failed(host, request, what, exc) from None
        finally:
            transport.discard(resp)
        if request.expired or request.aborted:  # cut off: what was read is not all there is
            raise self._failed(host, request, what, TimeoutError())
        return body

    # ------------------------------------------------------------------------------------------------ auth

    def _credentials_for(self, host: RegistryHost) -> Credentials | None:
        for creds in self.credentials:
            if creds.applies_to(host):
                return creds
        return None

    def _authorize(self, host: RegistryHost, challenge_header: str) -> str:
        """The Authorization header that answers a 401 challenge from `host`."""
        creds = self._credentials_for(host)
        scheme, params = parse_challenge(challenge_header)
        if scheme == "basic":
            if creds is None or not (creds.username or creds.password):
                raise _HostFailed(f"{host}: the registry requires credentials (basic auth) and none were given",
                                  auth=True)
            token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
            return f"Basic {token}"
        if scheme != "bearer":
            raise _HostFailed(f"{host}: unsupported auth scheme {scheme!r}", auth=True)
        if creds is not None and creds.registry_token:
            return f"Bearer {creds.registry_token}"
        realm = params.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise _HostFailed(f"{host}: bearer challenge without a usable realm", auth=True)
        scope = params.get("scope") or f"repository:{self.ref.path}:pull"
        service = params.get("service", "")
        return f"Bearer {self._fetch_token(host, realm, service, scope, creds)}"

    def _fetch_token(self, host: RegistryHost, realm: str, service: str, scope: str,
                     creds: Credentials | None) -> str:
        pool = self.client.pool(host)
        timeout = urllib3.Timeout(connect=self.client.request_timeout, read=self.client.request_timeout)
        headers = {"User-Agent": USER_AGENT}
        what = f"token server {realm}"
        with self._track(what, self.client.request_timeout) as request:
            try:
                if creds is not None and creds.identity_token:
                    fields = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                              "client_id": "crisp", "scope": scope}
                    if service:
                        fields["service"] = service
                    resp = pool.request("POST", realm, fields=fields, encode_multipart=False, headers=headers,
                                        timeout=timeout, preload_content=False, retries=_RETRIES)
                else:
                    query = {"scope": scope}
                    if service:
                        query["service"] = service
                    if creds is not None and (creds.username or creds.password):
                        headers.update(urllib3.make_headers(basic_auth=f"{creds.username}:{creds.password}"))
                    resp = pool.request("GET", realm, fields=query, headers=headers, timeout=timeout,
                                        preload_content=False, retries=_RETRIES)
            except Urllib3Error as exc:
                raise self._failed(host, request, what, exc) from None

            def refused(status: int) -> _HostFailed:
                if status in (401, 403):
                    return _HostFailed(f"{host}: the token server {realm} refused the credentials (HTTP {status})",
                                       auth=True)
                return _HostFailed(f"{host}: token server {realm} answered HTTP {status}")

            body = self._read_answer(host, request, resp, what, MAX_TOKEN_BYTES, refused, lambda _: _HostFailed(
                f"{host}: the token from {realm} is larger than {MAX_TOKEN_BYTES} bytes"))
        try:
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError, RecursionError):
            token = None
        if not isinstance(token, str) or not token:
            raise _HostFailed(f"{host}: the token server {realm} sent no token")
        return token

    # ------------------------------------------------------------------------------------------------ requests

    def _request(self, host: RegistryHost, url: str, headers: dict[str, str], request: Request,
                 read_timeout: float) -> urllib3.BaseHTTPResponse:
        """GET with auth (one challenge round) and redirects, inside `request` (the caller's tracked block);
        returns the final response (any status)."""
        pool = self.client.pool(host)
        timeout = urllib3.Timeout(connect=self.client.request_timeout, read=read_timeout)
        base = {"User-Agent": USER_AGENT, **dict(host.headers), **headers}
        for attempt in range(2):
            send = dict(base)
            with self._lock:
                auth = self._auth_headers.get(host.netloc)
            if auth:
                send["Authorization"] = auth
            try:
                resp = pool.request("GET", url, headers=send, preload_content=False, decode_content=False,
                                    redirect=True, retries=_RETRIES,
                                    timeout=timeout)
            except Urllib3Error as exc:
                raise self._failed(host, request, request.what, exc) from None
            if resp.status != 401 or attempt == 1:
                if resp.status == 401:
                    transport.discard(resp)
                    raise _HostFailed(f"{host}: the registry refused the credentials (HTTP 401)", auth=True)
                return resp
            challenge = resp.headers.get("WWW-Authenticate", "")
            transport.discard(resp)
            if not challenge:
                raise _HostFailed(f"{host}: HTTP 401 without an auth challenge", auth=True)
            value = self._authorize(host, challenge)
            with self._lock:
                self._auth_headers[host.netloc] = value
        raise AssertionError("unreachable")

    def _each_host(self, capability: str, action: Callable[[RegistryHost], Any], what: str) -> Any:
        failures: list[_HostFailed] = []
        with self._lock:
            preferred = self._preferred
        # the host that answered last goes first: blobs live where their manifest came from, and a loopback
        # registry that speaks plain HTTP is not asked over HTTPS again
        hosts = ([preferred] if preferred in self.hosts else []) + [h for h in self.hosts if h != preferred]
        for host in hosts:
            if capability not in host.capabilities:
                continue
            if self.cancel.is_set():
                raise errors.Cancelled(f"{what}: cancelled")
            try:
                result = action(host)
                with self._lock:
                    self._preferred = host
                return result
            except _HostFailed as exc:
                log.info("%s: %s", what, exc)
                failures.append(exc)
        if not failures:
            raise errors.InvalidArgument(f"{what}: no registry host of {self.ref.domain} may {capability}")
        detail = "; ".join(str(f) for f in failures)
        if any(f.auth for f in failures):
            raise AuthError(f"{what}: {detail}")
        # a host that answered "no such thing" is the best answer there is (the others could not be asked)
        if any(f.not_found for f in failures):
            raise errors.NotFound(f"{what}: not found ({detail})")
        raise RegistryError(f"{what}: {detail}")

    def _url(self, host: RegistryHost, kind: str, obj: str) -> str:
        return f"{host.base_url}/{self.ref.path}/{kind}/{obj}"

    # ------------------------------------------------------------------------------------------------ API

    def resolve(self) -> Resolved:
        """Fetch the manifest (or index) the reference names; by tag its digest is the digest of the bytes."""
        capability = "pull" if self.ref.digest else "resolve"
        return self._each_host(capability, lambda h: self._fetch_manifest(h, self.ref.object),  # type: ignore[no-any-return]
                               f"resolving {self.ref}")

    def fetch_manifest(self, digest: str, size: int | None = None) -> Resolved:
        """A manifest by digest; with the descriptor's `size`, nothing past it is read."""
        return self._each_host("pull", lambda h: self._fetch_manifest(h, digest, size),  # type: ignore[no-any-return]
                               f"fetching manifest {digest} of {self.ref.name}")

    def _fetch_manifest(self, host: RegistryHost, obj: str, size: int | None = None) -> Resolved:
        url = self._url(host, "manifests", obj)
        what = f"manifest {self.ref.path}:{obj}"
        with self._track(what, self.client.request_timeout) as request:
            resp = self._request(host, url, {"Accept": MANIFEST_ACCEPT}, request,
                                 read_timeout=self.client.request_timeout)
            limit = max_bytes(resp.headers.get("Content-Type", "").split(";")[0].strip())
            if size is not None:
                limit = min(limit, size)
            what_size = "its descriptor's size" if size is not None and size < max_bytes("") else "bytes"
            body = self._read_answer(host, request, resp, what, limit, _refusal(host, what), lambda exc: _HostFailed(
                f"{host}: {what} is larger than {limit} {what_size} ({exc})"))
        digest = sha256_digest(body)
        if obj.startswith("sha256:") and digest != obj:
            raise DigestMismatch(f"manifest {obj} from {host}: content has digest {digest}")
        media_type = detect_media_type(body, resp.headers.get("Content-Type", ""), digest)
        return Resolved(digest=digest, media_type=media_type, body=body, host=host)

    def fetch_blob(self, digest: str, size: int | None, writer_factory: Callable[[], BlobWriter],
                   progress: Callable[[int], None]) -> None:
        """Download a blob into a fresh writer per attempt and commit it (verified); falls back to the next host."""

        def attempt(host: RegistryHost) -> None:
            writer = writer_factory()
            try:
                self._download(host, digest, writer, progress)
                writer.commit()
            except BaseException:
                writer.abort()
                raise

        self._each_host("pull", attempt, f"fetching blob {digest} of {self.ref.name}")

    def fetch_small_blob(self, digest: str, size: int, limit: int) -> bytes:
        """A blob read into memory (an image config), verified."""
        if size > limit:
            raise errors.InvalidArgument(f"blob {digest} of {self.ref.name} is {size} bytes, over {limit}")

        def attempt(host: RegistryHost) -> bytes:
            what = f"blob {digest}"
            with self._track(what, self.client.request_timeout) as request:
                resp = self._request(host, self._url(host, "blobs", digest), {}, request,
                                     read_timeout=self.client.request_timeout)
                body = self._read_answer(host, request, resp, f"reading {what}", size, _refusal(host, what),
                                         lambda _: DigestMismatch(
                                             f"blob {digest} from {host}: more data than its size {size}"))
            if len(body) != size or sha256_digest(body) != digest:
                raise DigestMismatch(f"blob {digest} from {host}: got {len(body)} bytes with digest "
                                     f"{sha256_digest(body)}, expected {size} bytes")
            return body

        return self._each_host("pull", attempt, f"fetching blob {digest} of {self.ref.name}")  # type: ignore[no-any-return]

    def _download(self, host: RegistryHost, digest: str, writer: BlobWriter, progress: Callable[[int], None]) -> None:
        what = f"downloading blob {digest}"
        # the headers within the request timeout; then no deadline, but a byte at least every read_timeout
        with self._track(what, self.client.request_timeout) as request:
            resp = self._request(host, self._url(host, "blobs", digest), {}, request,
                                 read_timeout=self.client.read_timeout)
            request.deadline = None
            try:
                if resp.status == 404:
                    raise _HostFailed(f"{host}: blob {digest} not found", not_found=True)
                if resp.status != 200:
                    raise _HostFailed(f"{host}: blob {digest}: HTTP {resp.status}")
                for chunk in resp.stream(_CHUNK, decode_content=False):
                    if self.cancel.is_set():
                        raise errors.Cancelled(f"download of {digest} cancelled")
                    writer.write(chunk)  # refuses more than the descriptor's size
                    progress(len(chunk))
            except BaseException as exc:
                transport.discard(resp)  # unread data: the connection cannot be reused
                if self.cancel.is_set() or request.aborted:
                    raise errors.Cancelled(f"download of {digest} cancelled") from None
                if isinstance(exc, Urllib3Error | OSError):
                    raise self._failed(host, request, what, exc) from None
                raise
            resp.release_conn()
