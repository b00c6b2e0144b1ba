"""crispd's configuration: one TOML file parsed into frozen dataclasses, one per section.

Every default is defined exactly once, as the dataclass field default. Unknown keys and bad values raise
`ConfigError` naming the full key (`cgroup.driver`). `dump_toml` renders the effective config back as TOML;
docs/configuration.md and deploy/crisp.toml are generated from these classes (cri/config_doc.py). Field metadata:
`choices` (allowed values), `absolute` (must be an absolute path); the codec that reads them is cri/configfile.py.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cri import configfile
from cri.cdi import CdiConfig
from cri.configfile import ConfigError as ConfigError
from cri.nri.config import NriConfig
from runtime import errors, failpoints
from runtime.cgroups import paths as cgroup_paths
from runtime.network.bridge import DEFAULT_BRIDGE, check_bridge_name
from runtime.network.cni import DEFAULT_BIN_DIRS as DEFAULT_CNI_BIN_DIRS
from runtime.network.cni import DEFAULT_CONFIG_DIR as DEFAULT_CNI_CONFIG_DIR
from runtime.network.ipam import parse_pod_cidrs

DEFAULT_CONFIG_PATH = "/etc/crisp/crisp.toml"


def _choices(*values: str) -> dict[str, Any]:
    return {"choices": values}


_ABS = {"absolute": True}


@dataclass(frozen=True)
class HandlerConfig:
    """A CRI runtime handler (Kubernetes RuntimeClass): the built-in executor or an OCI runtime binary."""

    # "builtin": crisp's own executor; "oci": an OCI runtime with runc's command line (runc, crun)
    type: str = field(default="oci", metadata=_choices("builtin", "oci"))
    # oci: the runtime binary (a name looked up in PATH, or an absolute path)
    path: str = ""
    # oci: the runtime's --root state dir; empty means <state>/runtimes/<handler name>
    root: str = ""

    def check(self) -> list[tuple[str, str]]:
        if self.type == "oci" and not self.path:
            return [("path", "an oci handler needs the path (or name) of its runtime binary")]
        if self.root and not os.path.isabs(self.root):
            return [("root", f"must be an absolute path, got {self.root!r}")]
        return []


@dataclass(frozen=True)
class CgroupConfig:
    """cgroup v2: where crisp makes pod cgroups and what a limit whose controller is missing does."""

    # who makes crisp's cgroups, and what RuntimeConfig tells the kubelet: "cgroupfs", plain directories; "systemd",
    # systemd units that crispd starts over D-Bus (pods' slices under crisp.slice, containers' and pod inits' scopes,
    # each shim a scope in system.slice), as a kubelet with cgroupDriver systemd expects
    driver: str = field(default="cgroupfs", metadata=_choices("cgroupfs", "systemd"))
    # a requested limit whose cgroup v2 controller is missing: "error" fails the request, "warn" logs and goes on
    missing_controller: str = field(default="error", metadata=_choices("error", "warn"))
    # cgroupfs: where crisp makes pod cgroups (<base>/pod<uid>) without a cgroup_parent (systemd: under crisp.slice)
    base: str = field(default="/crisp", metadata=_ABS)
    # the systemd driver's bus: auto (systemd's private socket if there, else the system bus), private, system
    systemd_bus: str = field(default="auto", metadata=_choices("auto", "private", "system"))

    def check(self) -> list[tuple[str, str]]:
        try:
            cgroup_paths.normalize(self.base)
        except errors.InvalidArgument as exc:
            return [("base", str(exc))]
        if cgroup_paths.normalize(self.base) == "/":
            return [("base", "must not be the root cgroup")]
        return []


@dataclass(frozen=True)
class RuntimeConfig:
    """Runtime handlers: the Kubernetes RuntimeClass handler names pods may ask for."""

    # extra handlers by name; the default handler "" is always the built-in executor
    handlers: dict[str, HandlerConfig] = field(default_factory=dict)

    def check(self) -> list[tuple[str, str]]:
        if "" in self.handlers:
            return [("handlers", 'the default handler "" is always the built-in executor')]
        return []


@dataclass(frozen=True)
class NetworkConfig:
    """Pod networking: the built-in bridge, or the node's CNI plugins when a CNI config exists."""

    # the pod CIDR (one network, or an IPv4,IPv6 pair); empty means the kubelet's (UpdateRuntimeConfig), else
    # 10.88.0.0/16
    pod_cidr: str = ""
    # "auto": CNI when the config dir holds a config, else the bridge; "cni": CNI only, not ready until one is there
    backend: str = field(default="auto", metadata=_choices("auto", "cni"))
    # the built-in bridge (used when the CNI config dir holds no config); its name also names its nftables table
    bridge: str = DEFAULT_BRIDGE
    # the MTU of the bridge and of the pods' interfaces on it
    mtu: int = 1500
    # masquerade traffic from pods to addresses outside the pod CIDR
    masquerade: bool = True
    # CNI: a config here (lexically first *.conflist, *.conf, *.json) replaces the built-in bridge
    cni_config_dir: str = field(default=DEFAULT_CNI_CONFIG_DIR, metadata=_ABS)
    # CNI: where the plugins a config names are looked for, in this order
    cni_bin_dirs: list[str] = field(default_factory=lambda: list(DEFAULT_CNI_BIN_DIRS))
    # one pod's network setup or teardown (a network helper run, a CNI plugin run) must end within this
    timeout_seconds: float = 60.0
    # each pod's network namespace is also bound here as crisp-<pod id>, where `ip netns` finds it (as CRI-O and
    # containerd pin theirs); empty: not published
    netns_dir: str = "/run/netns"

    def check(self) -> list[tuple[str, str]]:
        if self.pod_cidr:
            try:
                parse_pod_cidrs(self.pod_cidr)
            except errors.InvalidArgument as exc:
                return [("pod_cidr", str(exc))]
        try:
            check_bridge_name(self.bridge)
        except errors.InvalidArgument as exc:
            return [("bridge", str(exc))]
        if not 576 <= self.mtu <= 65535:
            return [("mtu", f"{self.mtu} is out of range 576-65535")]
        for path in self.cni_bin_dirs:
            if not os.path.isabs(path):
                return [("cni_bin_dirs", f"must be absolute paths, got {path!r}")]
        if self.timeout_seconds <= 0:
            return [("timeout_seconds", "must be positive")]
        if self.netns_dir and not os.path.isabs(self.netns_dir):
            return [("netns_dir", f"must be an absolute path (or empty), got {self.netns_dir!r}")]
        return []


@dataclass(frozen=True)
class OciConfig:
    """How CRI requests become OCI specs (cri/oci)."""

    # clamp a requested oom_score_adj below crispd's own up to crispd's instead of failing (containerd's
    # restrict_oom_score_adj): "auto" does so when crispd lacks CAP_SYS_RESOURCE, i.e. when lowering it would fail
    restrict_oom_score_adj: str = field(default="auto", metadata=_choices("auto", "on", "off"))
    # RLIMIT_NOFILE of container processes, soft limit; 0 means what crispd itself runs with
    nofile_soft: int = 0
    # RLIMIT_NOFILE of container processes, hard limit; 0 means what crispd itself runs with
    nofile_hard: int = 0
    # a container's CRI annotations copied into its OCI spec: exact keys, or prefixes ending in "*"
    container_annotations: list[str] = field(default_factory=list)
    # the pod's CRI annotations copied into its containers' OCI specs: exact keys, or prefixes ending in "*"
    pod_annotations: list[str] = field(default_factory=list)

    def check(self) -> list[tuple[str, str]]:
        for name in ("nofile_soft", "nofile_hard"):
            if getattr(self, name) < 0:
                return [(name, "must not be negative")]
        if self.nofile_soft and self.nofile_hard and self.nofile_soft > self.nofile_hard:
            return [("nofile_soft", "must not exceed nofile_hard")]
        return []


def parse_host_port(value: str) -> tuple[str, int]:
    """"host:port" or "[v6 address]:port" -> (host, port); ValueError saying what is wrong."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected host:port, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets ([::1]:9647), got {value!r}")
    if not host:
        raise ValueError(f"expected host:port, got {value!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"the port of {value!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"the port of {value!r} is out of range 0-65535")
    return host, port


@dataclass(frozen=True)
class MetricsConfig:
    """crispd's Prometheus endpoint (deploy/prometheus.yml scrapes it)."""

    # host:port of the Prometheus endpoint (/metrics, /healthz); empty turns it off; port 0 picks a free port
    address: str = "127.0.0.1:9647"

    def check(self) -> list[tuple[str, str]]:
        if self.address:
            try:
                parse_host_port(self.address)
            except ValueError as exc:
                return [("address", str(exc))]
        return []


@dataclass(frozen=True)
class StatsConfig:
    """The CRI stats and metrics RPCs."""

    # a container's writable layer is walked at most this often (the walk runs in a worker thread)
    disk_usage_cache_seconds: float = 10.0
    # pod network counters are read in the pod's network namespace by a network helper, within this time
    network_timeout_seconds: float = 10.0

    def check(self) -> list[tuple[str, str]]:
        if self.disk_usage_cache_seconds < 0:
            return [("disk_usage_cache_seconds", "must not be negative")]
        if self.network_timeout_seconds <= 0:
            return [("network_timeout_seconds", "must be positive")]
        return []


@dataclass(frozen=True)
class EventsConfig:
    """GetContainerEvents."""

    # events waiting for one subscriber that does not read them; one more and that subscriber is dropped (its
    # stream ends), so that a stuck client never holds crispd's memory or its lifecycle RPCs
    subscriber_buffer: int = 1024

    def check(self) -> list[tuple[str, str]]:
        if self.subscriber_buffer < 1:
            return [("subscriber_buffer", "must be at least 1")]
        return []


@dataclass(frozen=True)
class StreamingConfig:
    """The streaming server behind Exec, Attach and PortForward URLs (plain HTTP: keep it on loopback)."""

    # the IP address it listens on, which is also the host of the URLs it hands out
    address: str = "127.0.0.1"
    # 0: a free port chosen at start
    port: int = 0
    # a session with no stream opened and no data either way for this long is closed (the kubelet's default)
    idle_timeout_seconds: float = 4 * 3600.0
    # a client must open the streams of its session within this long after the upgrade
    stream_creation_timeout_seconds: float = 30.0
    # a URL must be used within this long, and only once
    token_ttl_seconds: float = 60.0
    # URLs handed out and not used yet; beyond this, Exec/Attach/PortForward answer RESOURCE_EXHAUSTED
    max_tokens: int = 1000

    def check(self) -> list[tuple[str, str]]:
        try:
            address = ipaddress.ip_address(self.address)
        except ValueError:
            return [("address", f"{self.address!r} is not an IP address")]
        if address.is_unspecified:
            return [("address", f"{self.address} names no host a client could reach: give the address clients "
                     "use (127.0.0.1 for a local kubelet)")]
        if not 0 <= self.port < 65536:
            return [("port", f"{self.port} is not a TCP port (0 picks a free one)")]
        for name in ("idle_timeout_seconds", "stream_creation_timeout_seconds", "token_ttl_seconds"):
            if getattr(self, name) <= 0:
                return [(name, "must be positive")]
        if self.max_tokens < 1:
            return [("max_tokens", "must be at least 1")]
        return []


@dataclass(frozen=True)
class RegistryAuthConfig:
    """Default credentials for one registry host (used when a pull brings none of its own)."""

    # the user name, with `password`
    username: str = ""
    # the password (never printed: `crispd config` and Status show <redacted>)
    password: str = ""
    # base64 of "username:password", as in docker's config.json
    auth: str = ""
    # an OAuth2 refresh token for the registry's token server
    identity_token: str = ""


@dataclass(frozen=True)
class ImageConfig:
    """Image pulls: registries and their mirrors (docs/registry.md), downloads, default credentials."""

    # containerd-style registry hosts: <dir>/<registry host>/hosts.toml (mirrors, CA, plain http, skip_verify)
    registry_config_path: str = "/etc/crisp/certs.d"
    # layers downloaded at once, over all pulls
    max_concurrent_downloads: int = 4
    # layers downloaded at once from one registry (at most max_concurrent_downloads), so that a slow one never holds
    # up pulls from the others
    max_concurrent_downloads_per_registry: int = 3
    # a pull that receives no bytes and unpacks nothing for this long is aborted (so is a blob download that
    # receives nothing for this long, plus the request timeout)
    pull_progress_timeout_seconds: float = 300.0
    # connect timeout; the time a manifest, index, config or token request has to be complete (headers and
    # body: a registry that drips is cut off), and a blob request to send its headers
    request_timeout_seconds: float = 30.0
    # a layer whose entries add up to more than this unpacked (each its header's size plus 512) is refused before
    # it is written out (compression bombs)
    max_layer_unpacked_bytes: int = 64 << 30
    # the same cap for all the layers one pull unpacks
    max_image_unpacked_bytes: int = 128 << 30
    # keyed by registry host ("docker.io", "registry.example.com:5000")
    auths: dict[str, RegistryAuthConfig] = field(default_factory=dict)

    def check(self) -> list[tuple[str, str]]:
        if self.registry_config_path and not os.path.isabs(self.registry_config_path):
            return [("registry_config_path", f"must be an absolute path, got {self.registry_config_path!r}")]
        if self.max_concurrent_downloads < 1:
            return [("max_concurrent_downloads", "must be at least 1")]
        if not 1 <= self.max_concurrent_downloads_per_registry <= self.max_concurrent_downloads:
            return [("max_concurrent_downloads_per_registry", "must be between 1 and max_concurrent_downloads")]
        if self.pull_progress_timeout_seconds <= 0:
            return [("pull_progress_timeout_seconds", "must be positive")]
        if self.request_timeout_seconds <= 0:
            return [("request_timeout_seconds", "must be positive")]
        for name in ("max_layer_unpacked_bytes", "max_image_unpacked_bytes"):
            if getattr(self, name) <= 0:
                return [(name, "must be positive")]
        return []


@dataclass(frozen=True)
class ShimConfig:
    """crisp-shim, the process that watches one container and writes its log."""

    # a container's log line longer than this is split into partial (P) lines, as the kubelet's log format allows
    log_max_line_bytes: int = 16 * 1024
    # once its container runs, a shim hands it to crisp-monitor (a small C program, shim/monitor) and its Python
    # exits; false, or a crisp without the monitor built: the Python shim watches the container to the end
    monitor: bool = True

    def check(self) -> list[tuple[str, str]]:
        if self.log_max_line_bytes < 64:
            return [("log_max_line_bytes", "must be at least 64")]
        return []


@dataclass(frozen=True)
class LimitsConfig:
    """Node-wide limits on what the kubelet's requests may add up to."""

    # labels, annotations and names of all pods and containers together: past this, RunPodSandbox and
    # CreateContainer answer RESOURCE_EXHAUSTED (List answers stay well below the kubelet's 16 MiB limit)
    metadata_budget_bytes: int = 12 << 20

    def check(self) -> list[tuple[str, str]]:
        if self.metadata_budget_bytes < 256 * 1024:
            return [("metadata_budget_bytes", "must be at least 262144 (one object's limit)")]
        return []


@dataclass(frozen=True)
class DebugConfig:
    """For crisp's own tests and debugging: leave these at their defaults on a node."""

    # > 0: run the event loop in asyncio debug mode and log callbacks slower than this many milliseconds
    slow_callback_ms: int = 0
    # fail points (runtime/failpoints.py) where crispd fails on purpose (rollback tests): "run_pod_sandbox.network"
    fail_points: list[str] = field(default_factory=list)
    # fail points where crispd pauses this many milliseconds (tests of callers that give up)
    delay_points: dict[str, int] = field(default_factory=dict)
    # fail points where crispd stops until it is killed (tests of kill -9 at every step)
    hang_points: list[str] = field(default_factory=list)

    def check(self) -> list[tuple[str, str]]:
        named = [("fail_points", n) for n in self.fail_points] + [("delay_points", n) for n in self.delay_points]
        problems = [(key, failpoints.refusal(name, hang=key == "hang_points"))
                    for key, name in named + [("hang_points", n) for n in self.hang_points]]
        return [(key, problem) for key, problem in problems if problem][:1]


@dataclass(frozen=True)
class Config:
    """The top level: where crispd keeps its data, its socket, its logs."""

    # persistent data: the metadata database, images, container layers
    root: str = field(default="/var/lib/crisp", metadata=_ABS)
    # volatile state: shim sockets, pinned namespaces, status files
    state: str = field(default="/run/crisp", metadata=_ABS)
    # the CRI unix socket
    listen: str = field(default="/run/crisp/crisp.sock", metadata=_ABS)
    # the least severe messages crispd logs (on stderr)
    log_level: str = field(default="info", metadata=_choices("debug", "info", "warning", "error"))
    # "text": one line per message for people; "json": one JSON object per line for log shippers
    log_format: str = field(default="text", metadata=_choices("text", "json"))
    # on SIGTERM/SIGINT, in-flight RPCs get this long to finish
    shutdown_grace_seconds: float = 10.0
    cgroup: CgroupConfig = field(default_factory=CgroupConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    oci: OciConfig = field(default_factory=OciConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    shim: ShimConfig = field(default_factory=ShimConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    nri: NriConfig = field(default_factory=NriConfig)
    cdi: CdiConfig = field(default_factory=CdiConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    def check(self) -> list[tuple[str, str]]:
        if self.shutdown_grace_seconds < 0:
            return [("shutdown_grace_seconds", "must not be negative")]
        return []


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse TOML text into a Config; errors name the source and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return configfile.build(Config, data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(path: str | None) -> Config:
    """Load the config file; a missing *default* file means all defaults, a missing named file is an error."""
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG_PATH):
            return Config()
        path = DEFAULT_CONFIG_PATH
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    return parse_config(text, path)


REDACTED = "<redacted>"


def redact(config: Config) -> Config:
    """The config to show (`crispd config`, Status verbose): registry credentials are masked."""
    def mask(auth: RegistryAuthConfig) -> RegistryAuthConfig:
        secrets = {k: REDACTED for k in ("password", "auth", "identity_token") if getattr(auth, k)}
        return dataclasses.replace(auth, **secrets)

    auths = {host: mask(auth) for host, auth in config.image.auths.items()}
    return dataclasses.replace(config, image=dataclasses.replace(config.image, auths=auths))


def with_overrides(config: Config, **overrides: Any) -> Config:
    """The config with top-level keys replaced (command-line flags), checked like file values."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    if not changes:
        return config
    return parse_config(dump_toml(dataclasses.replace(config, **changes)), "command line")


def dump_toml(config: Config) -> str:
    """The config as TOML that `parse_config` reads back to an equal Config."""
    return configfile.dump(config)
