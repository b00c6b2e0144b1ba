"""Registry hosts in containerd's `hosts.toml` format.

`<config dir>/<registry host>/hosts.toml` (e.g. `/etc/crisp/certs.d/docker.io/hosts.toml`, so the dirs of
`/etc/containerd/certs.d` can be reused) lists mirrors, tried in file order, then the upstream `server`:

    server = "https://registry-1.docker.io"
    [host."http://127.0.0.1:5000"]
      capabilities = ["pull", "resolve"]
      skip_verify = true
      ca = "/etc/certs/mirror.pem"
      override_path = false
      [host."http://127.0.0.1:5000".header]
        x-custom = "1"

Without a file (none for the host, none in `_default`), the registry is its own upstream over HTTPS; a loopback
registry (`localhost`, `127.0.0.1`, `[::1]`) is tried over HTTPS and then plain HTTP, as containerd does.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass
from urllib.parse import urlsplit

from runtime import errors
from runtime.image.reference import DEFAULT_DOMAIN, DOCKER_HUB_API

KNOWN_CAPABILITIES = frozenset({"pull", "resolve", "push"})


@dataclass(frozen=True)
class RegistryHost:
    """One place to fetch from: `base_url` is where `/<repo>/manifests/...` is appended (it ends in `/v2`)."""

    base_url: str
    # the registry name this host serves (the domain of the reference), for auth lookups and logs
    registry: str
    capabilities: frozenset[str] = frozenset({"pull", "resolve"})
    skip_verify: bool = False
    ca_files: tuple[str, ...] = ()
    # (cert file, key file or "")
    client_certs: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    # a mirror (True) or the upstream itself
    mirror: bool = False

    @property
    def scheme(self) -> str:
        return urlsplit(self.base_url).scheme

    @property
    def netloc(self) -> str:
        return urlsplit(self.base_url).netloc

    def __str__(self) -> str:
        return self.base_url


def _is_loopback(netloc: str) -> bool:
    host = urlsplit(f"//{netloc}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_hosts(domain: str) -> list[RegistryHost]:
    """The hosts of a registry without any hosts.toml."""
    netloc = DOCKER_HUB_API if domain == DEFAULT_DOMAIN else domain
    hosts = [RegistryHost(base_url=f"https://{netloc}/v2", registry=domain)]
    if _is_loopback(netloc):
        hosts.append(RegistryHost(base_url=f"http://{netloc}/v2", registry=domain))
    return hosts


def _bad(path: str, message: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"registry hosts config {path}: {message}")


def _as_list(value: object, path: str, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise _bad(path, f"{key} must be a string or a list of strings")


def _client_certs(value: object, path: str, key: str) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str):
        return ((value, ""),)
    if not isinstance(value, list):
        raise _bad(path, f"{key} must be a string or a list")
    pairs: list[tuple[str, str]] = []
    for item in value:
        if isinstance(item, str):
            pairs.append((item, ""))
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(v, str) for v in item):
            pairs.append((item[0], item[1]))
        else:
            raise _bad(path, f"{key} entries must be a file or a [cert, key] pair")
    return tuple(pairs)


def _resolve_file(base_dir: str, name: str) -> str:
    return name if os.path.isabs(name) else os.path.join(base_dir, name)


def _parse_host(url: str, table: dict[str, object], domain: str, path: str, mirror: bool) -> RegistryHost:
    if "://" not in url:
        url = f"https://{url}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _bad(path, f"host {url!r} must be an http:// or https:// URL")
    base_dir = os.path.dirname(path)
    known = {"capabilities", "skip_verify", "ca", "client", "header", "override_path"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise _bad(path, f"host {url!r}: unknown keys {', '.join(unknown)}")
    caps = frozenset(_as_list(table.get("capabilities", ["pull", "resolve", "push"]), path, "capabilities"))
    if not caps <= KNOWN_CAPABILITIES:
        raise _bad(path, f"host {url!r}: unknown capabilities {sorted(caps - KNOWN_CAPABILITIES)}")
    skip_verify = table.get("skip_verify", False)
    if not isinstance(skip_verify, bool):
        raise _bad(path, f"host {url!r}: skip_verify must be true or false")
    override_path = table.get("override_path", False)
    if not isinstance(override_path, bool):
        raise _bad(path, f"host {url!r}: override_path must be true or false")
    ca_files = tuple(_resolve_file(base_dir, f) for f in _as_list(table.get("ca", []), path, "ca"))
    client = tuple((_resolve_file(base_dir, c), _resolve_file(base_dir, k) if k else "")
                   for c, k in _client_certs(table.get("client", []), path, "client"))
    header_table = table.get("header", {})
    if not isinstance(header_table, dict):
        raise _bad(path, f"host {url!r}: header must be a table")
    headers: list[tuple[str, str]] = []
    for name, value in header_table.items():
        for item in _as_list(value, path, f"header.{name}"):
            headers.append((str(name), item))
    base = url.rstrip("/")
    if not override_path:
        base = base if parts.path.rstrip("/").endswith("/v2") else f"{base}/v2"
    return RegistryHost(base_url=base, registry=domain, capabilities=caps, skip_verify=skip_verify,
                        ca_files=ca_files, client_certs=client, headers=tuple(headers), mirror=mirror)


def load_hosts_file(path: str, domain: str) -> list[RegistryHost]:
    """The hosts of one hosts.toml: its `[host.*]` tables in order, then its `server` (if any)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise _bad(path, f"not valid TOML: {exc}") from None
    hosts: list[RegistryHost] = []
    host_tables = data.get("host", {})
    if not isinstance(host_tables, dict):
        raise _bad(path, "host must be a table of tables")
    for url, table in host_tables.items():
        if not isinstance(table, dict):
            raise _bad(path, f"host {url!r} must be a table")
        hosts.append(_parse_host(str(url), table, domain, path, mirror=True))
    server = data.get("server")
    if server is not None:
        if not isinstance(server, str):
            raise _bad(path, "server must be a string")
        top = {k: v for k, v in data.items() if k in {"capabilities", "skip_verify", "ca", "client", "header",
                                                       "override_path"}}
        hosts.append(_parse_host(server, top, domain, path, mirror=False))
    else:
        hosts.extend(default_hosts(domain))  # no server: the registry itself is the upstream
    return hosts


def registry_hosts(config_dir: str, domain: str) -> list[RegistryHost]:
    """Where to pull a registry's images from, in the order to try them (only hosts that can pull), each endpoint
    once: a mirror that is also the upstream (a loopback registry mirrored to itself) is asked once, as a mirror."""
    path = ""
    if config_dir:
        for candidate in (domain, "_default"):
            file = os.path.join(config_dir, candidate, "hosts.toml")
            if os.path.isfile(file):
                path = file
                break
    hosts = load_hosts_file(path, domain) if path else default_hosts(domain)
    usable: list[RegistryHost] = []
    for host in hosts:
        if "pull" in host.capabilities and all(h.base_url != host.base_url for h in usable):
            usable.append(host)
    if not usable:
        raise errors.InvalidArgument(f"registry hosts config {path}: no host of {domain} may pull")
    return usable
