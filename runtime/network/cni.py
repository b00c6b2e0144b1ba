"""CNI: when the node has a CNI network config, pods get their network from its plugins (CNI spec 1.0).

- Config: the lexically first `*.conflist`, `*.conf` or `*.json` file of the config dir (a `.conf` holds one
  plugin and is run as a list of one). Plugins are executables named by their `type`, looked up in the bin dirs.
- ADD runs the list's plugins in order, each given the previous one's result as `prevResult`; DEL runs them in
  reverse, each given the cached ADD result; CHECK runs them in order with the cached result (spec >= 0.4.0, unless
  the list says `disableCheck`). Capability args go to plugins that declare them: `portMappings` and `dns`.
- Before ADD, crisp records the config and the pod in its cache (`<root>/network/cni/<sandbox id>.json`), and the
  result after it: a DEL after a crash or restart runs with the config the pod was attached with, and a pod that
  never reached ADD has no cache file and nothing to delete. DEL passes an empty CNI_NETNS when the namespace is
  gone, as the spec allows, so plugins clean up what they can.
- Like containerd, crisp also runs the `loopback` plugin (when installed) for the pod's `lo`, as its own network.
Plugins run with asyncio subprocess, a timeout and a minimal environment; crispd never enters a namespace itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.command import run_command
from runtime.network.types import (
    NOT_READY_REASON,
    POD_IFNAME,
    DNSConfig,
    Interface,
    IPConfig,
    NetworkError,
    NetworkResult,
    NetworkStatus,
    PodNetworkRequest,
    Route,
)
from runtime.rollback import Rollback

log = logging.getLogger(__name__)

DEFAULT_CONFIG_DIR = "/etc/cni/net.d"
DEFAULT_BIN_DIRS = ("/opt/cni/bin", "/usr/lib/cni")
CONFIG_SUFFIXES = (".conflist", ".conf", ".json")
LOOPBACK_IFNAME = "lo"
LOOPBACK_NETWORK: dict[str, Any] = {"cniVersion": "1.0.0", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}
# what a plugin gets in its environment besides the CNI_* variables: plugins run iptables, ip, ... from PATH
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (0,)


@dataclass(frozen=True)
class NetworkList:
    """A CNI network configuration list (a `.conf` file becomes a list of one plugin)."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    disable_check: bool = False
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"cniVersion": self.cni_version, "name": self.name, "disableCheck": self.disable_check,
                "plugins": [dict(p) for p in self.plugins]}

    @classmethod
    def from_json(cls, data: object, source: str = "") -> NetworkList:
        where = source or "CNI config"
        if not isinstance(data, dict):
            raise errors.InvalidArgument(f"{where}: not a JSON object")
        if "plugins" in data:
            plugins = data["plugins"]
            if not isinstance(plugins, list) or not plugins:
                raise errors.InvalidArgument(f"{where}: 'plugins' must be a non-empty list")
        elif "type" in data:  # a single-plugin .conf
            plugins = [{k: v for k, v in data.items() if k not in ("name", "cniVersion")}]
        else:
            raise errors.InvalidArgument(f"{where}: neither a plugin list ('plugins') nor a plugin ('type')")
        name, version = data.get("name"), data.get("cniVersion")
        if not isinstance(name, str) or not name:
            raise errors.InvalidArgument(f"{where}: 'name' must be a non-empty string")
        if not isinstance(version, str) or not version:
            raise errors.InvalidArgument(f"{where}: 'cniVersion' must be a non-empty string")
        for i, plugin in enumerate(plugins):
            kind = plugin.get("type") if isinstance(plugin, dict) else None
            if not isinstance(kind, str) or not kind or "/" in kind or kind in (".", ".."):
                raise errors.InvalidArgument(f"{where}: plugin {i} has no valid 'type'")
        return cls(name=name, cni_version=version, plugins=tuple(plugins),
                   disable_check=bool(data.get("disableCheck", False)), source=source)


def config_files(config_dir: str) -> list[Path]:
    """The config dir's candidate files, lexically ordered (no dir: none)."""
    try:
        names = sorted(os.listdir(config_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [Path(config_dir, n) for n in names if n.endswith(CONFIG_SUFFIXES) and Path(config_dir, n).is_file()]


def load_network(config_dir: str) -> NetworkList | None:
    """The network of the lexically first config file; None when there is none; InvalidArgument if it is bad."""
    files = config_files(config_dir)
    if not files:
        return None
    path = files[0]
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise errors.InvalidArgument(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise errors.InvalidArgument(f"{path}: not valid JSON: {exc}") from None
    return NetworkList.from_json(data, str(path))


def find_plugin(kind: str, bin_dirs: tuple[str, ...]) -> str | None:
    for directory in bin_dirs:
        path = os.path.join(directory, kind)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def cni_args(pod: PodNetworkRequest) -> str:
    return ";".join([
        "IgnoreUnknown=1",
        f"K8S_POD_NAMESPACE={pod.namespace}",
        f"K8S_POD_NAME={pod.name}",
        f"K8S_POD_INFRA_CONTAINER_ID={pod.sandbox_id}",
        f"K8S_POD_UID={pod.uid}",
    ])


def runtime_config(plugin: dict[str, Any], pod: PodNetworkRequest) -> dict[str, Any]:
    """The capability args the plugin asked for (and crisp has something to say about)."""
    caps = plugin.get("capabilities") or {}
    out: dict[str, Any] = {}
    if caps.get("portMappings") and pod.port_mappings:
        out["portMappings"] = [pm.to_json() for pm in pod.port_mappings]
    if caps.get("dns") and (pod.dns.servers or pod.dns.searches or pod.dns.options):
        out["dns"] = pod.dns.to_json()
    return out


def plugin_config(net: NetworkList, plugin: dict[str, Any], pod: PodNetworkRequest,
                  prev_result: dict[str, Any] | None) -> dict[str, Any]:
    """What a plugin reads on stdin: its own config, the list's name and version, prevResult, runtimeConfig."""
    conf = {k: v for k, v in plugin.items() if k not in ("runtimeConfig", "prevResult")}
    conf["name"] = net.name
    conf["cniVersion"] = net.cni_version
    if prev_result is not None:
        conf["prevResult"] = prev_result
    rc = runtime_config(plugin, pod)
    if rc:
        conf["runtimeConfig"] = rc
    return conf


def parse_result(result: dict[str, Any], network: str) -> NetworkResult:
    """A CNI result of any spec version as a NetworkResult (0.1/0.2 `ip4`/`ip6`, 0.3+ `interfaces`/`ips`)."""
    interfaces = tuple(Interface(name=str(i.get("name", "")), mac=str(i.get("mac", "")),
                                 sandbox=str(i.get("sandbox", ""))) for i in result.get("interfaces") or ())
    ips: list[IPConfig] = []
    routes: list[Route] = [Route(dst=str(r["dst"]), gw=str(r.get("gw", ""))) for r in result.get("routes") or ()]
    if "ips" in result:
        for ip in result.get("ips") or ():
            ips.append(IPConfig(address=str(ip["address"]), gateway=str(ip.get("gateway", "")),
                                interface=ip.get("interface")))
    else:
        for key in ("ip4", "ip6"):
            legacy = result.get(key)
            if legacy:
                ips.append(IPConfig(address=str(legacy["ip"]), gateway=str(legacy.get("gateway", ""))))
                routes += [Route(dst=str(r["dst"]), gw=str(r.get("gw", ""))) for r in legacy.get("routes") or ()]
    for ip in ips:
        try:
            ipaddress.ip_interface(ip.address)
        except ValueError:
            raise NetworkError(f"CNI network {network}: the result's address {ip.address!r} is not an IP") from None
    # the pod's addresses are those on its interface (a result may list host-side interfaces too)
    inside = {i for i, iface in enumerate(interfaces) if iface.sandbox}
    pod_ips = [ip for ip in ips if ip.interface is None or not inside or ip.interface in inside]
    return NetworkResult(backend="cni", network=network, interfaces=interfaces, ips=tuple(pod_ips),
                         routes=tuple(routes), dns=DNSConfig.from_json(result.get("dns")))


@dataclass
class Attachment:
    """One network a pod is attached to (the loopback network, the main one) and its cached ADD result."""

    network: NetworkList
    ifname: str
    result: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"network": self.network.to_json(), "ifname": self.ifname, "result": self.result}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attachment:
        return cls(network=NetworkList.from_json(data["network"]), ifname=str(data["ifname"]),
                   result=data.get("result"))


@dataclass
class CacheRecord:
    pod: PodNetworkRequest
    attachments: list[Attachment] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"pod": self.pod.to_json(), "attachments": [a.to_json() for a in self.attachments]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CacheRecord:
        return cls(pod=PodNetworkRequest.from_json(data["pod"]),
                   attachments=[Attachment.from_json(a) for a in data["attachments"]])


class ResultCache:
    """`<dir>/<sandbox id>.json`, written atomically (temp file, fsync, rename) in a worker thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, sandbox_id: str) -> Path:
        return self.directory / f"{sandbox_id}.json"

    def _write(self, record: CacheRecord) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.path(record.pod.sandbox_id)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(record.to_json(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _read(self, sandbox_id: str) -> CacheRecord | None:
        try:
            data = json.loads(self.path(sandbox_id).read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise NetworkError(f"pod {sandbox_id}: the CNI cache {self.path(sandbox_id)} is corrupt: {exc}") from exc
        return CacheRecord.from_json(data)

    def sandbox_ids(self) -> set[str]:
        try:
            return {p.stem for p in self.directory.iterdir() if p.suffix == ".json"}
        except FileNotFoundError:
            return set()

    def _remove(self, sandbox_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(sandbox_id).unlink()

    async def write(self, record: CacheRecord) -> None:
        await asyncio.to_thread(self._write, record)

    async def read(self, sandbox_id: str) -> CacheRecord | None:
        return await asyncio.to_thread(self._read, sandbox_id)

    async def remove(self, sandbox_id: str) -> None:
        await asyncio.to_thread(self._remove, sandbox_id)


class CniBackend:
    """`NetworkBackend` running the node's CNI plugins."""

    name = "cni"

    def __init__(self, *, cache_dir: Path, config_dir: str = DEFAULT_CONFIG_DIR,
                 bin_dirs: tuple[str, ...] = DEFAULT_BIN_DIRS, timeout: float = 60.0,
                 localnet_guard: Callable[[], Awaitable[object]] | None = None) -> None:
        """`localnet_guard` makes sure, before any plugin runs, that nothing from a pod reaches 127.0.0.0/8 (see
        nft.py: the portmap plugin turns route_localnet on)."""
        self.config_dir = config_dir
        self.localnet_guard = localnet_guard
        self.bin_dirs = tuple(bin_dirs)
        self.timeout = timeout
        self.cache = ResultCache(cache_dir)

    async def configured(self) -> bool:
        """Whether the config dir holds a config (valid or not): then CNI, not the built-in bridge, is the network."""
        return bool(await asyncio.to_thread(config_files, self.config_dir))

    def _load(self) -> NetworkList:
        """The network to attach new pods to, with every plugin installed (runs in a worker thread)."""
        net = load_network(self.config_dir)
        if net is None:
            raise errors.FailedPrecondition(f"no CNI network config in {self.config_dir}")
        missing = [p["type"] for p in net.plugins if find_plugin(p["type"], self.bin_dirs) is None]
        if missing:
            raise errors.FailedPrecondition(
                f"CNI network {net.name} ({net.source}): plugin(s) {', '.join(missing)} not found in "
                f"{':'.join(self.bin_dirs)}")
        return net

    async def _network(self) -> NetworkList:
        return await asyncio.to_thread(self._load)

    async def status(self) -> NetworkStatus:
        try:
            await self._network()
        except errors.CrispError as exc:
            return NetworkStatus(False, NOT_READY_REASON, f"cni config uninitialized: {exc}")
        return NetworkStatus(True)

    async def attached(self, pod: PodNetworkRequest) -> bool:
        return await asyncio.to_thread(self.cache.path(pod.sandbox_id).exists)

    async def attached_sandboxes(self) -> set[str]:
        return await asyncio.to_thread(self.cache.sandbox_ids)

    async def setup(self, pod: PodNetworkRequest) -> NetworkResult:
        net = await self._network()
        if self.localnet_guard is not None:
            await self.localnet_guard()
        if await self.attached(pod):
            await self.teardown(pod)
        attachments = []
        if await asyncio.to_thread(find_plugin, "loopback", self.bin_dirs) is not None:
            attachments.append(Attachment(NetworkList.from_json(LOOPBACK_NETWORK), LOOPBACK_IFNAME))
        else:
            log.warning("pod %s: CNI loopback plugin not found in %s; lo stays as it is", pod.sandbox_id,
                        ":".join(self.bin_dirs))
        attachments.append(Attachment(net, POD_IFNAME))
        record = CacheRecord(pod=pod, attachments=attachments)
        log.info("pod %s: adding to CNI network %s (%s)", pod.sandbox_id, net.name, net.source)
        async with Rollback(f"pod {pod.sandbox_id}: CNI network setup") as rollback:
            await self.cache.write(record)  # before ADD: from here on, DEL knows what to delete
            rollback.push("CNI DEL", lambda: self.teardown(pod))
            for attachment in attachments:
                attachment.result = await self._add(attachment, pod)
                await self.cache.write(record)
            rollback.commit()
        main = attachments[-1]
        assert main.result is not None
        result = parse_result(main.result, net.name)
        log.info("pod %s: added to CNI network %s as %s", pod.sandbox_id, net.name, ", ".join(result.pod_ips))
        return result

    async def _add(self, attachment: Attachment, pod: PodNetworkRequest) -> dict[str, Any]:
        prev: dict[str, Any] | None = None
        for plugin in attachment.network.plugins:
            conf = plugin_config(attachment.network, plugin, pod, prev)
            out = await self._exec(plugin["type"], "ADD", conf, pod, attachment.ifname, pod.netns)
            if out is None:
                raise NetworkError(f"pod {pod.sandbox_id}: CNI plugin {plugin['type']} ADD printed no result")
            prev = out
        assert prev is not None
        return prev

    async def teardown(self, pod: PodNetworkRequest) -> None:
        record = await self.cache.read(pod.sandbox_id)
        if record is None:
            log.debug("pod %s: not attached to a CNI network", pod.sandbox_id)
            return
        netns = pod.netns or record.pod.netns
        if not await asyncio.to_thread(os.path.exists, netns):
            netns = ""  # the spec's way of saying "gone": plugins release what they can
        failures: list[str] = []
        for attachment in reversed(record.attachments):
            for plugin in reversed(attachment.network.plugins):
                conf = plugin_config(attachment.network, plugin, record.pod, attachment.result)
                try:
                    await self._exec(plugin["type"], "DEL", conf, record.pod, attachment.ifname, netns)
                except (errors.CrispError, NetworkError) as exc:
                    failures.append(str(exc))
        if failures:
            raise NetworkError(f"pod {pod.sandbox_id}: CNI DEL failed: " + "; ".join(failures))
        await self.cache.remove(pod.sandbox_id)
        log.info("pod %s: deleted from CNI network %s", pod.sandbox_id, record.attachments[-1].network.name)

    async def check(self, pod: PodNetworkRequest) -> None:
        record = await self.cache.read(pod.sandbox_id)
        if record is None or any(a.result is None for a in record.attachments):
            raise errors.FailedPrecondition(f"pod {pod.sandbox_id} is not attached to a CNI network")
        for attachment in record.attachments:
            net = attachment.network
            if net.disable_check or _version_tuple(net.cni_version) < (0, 4, 0):
                continue
            for plugin in net.plugins:
                conf = plugin_config(net, plugin, record.pod, attachment.result)
                await self._exec(plugin["type"], "CHECK", conf, record.pod, attachment.ifname, pod.netns)

    async def _exec(self, kind: str, command: str, conf: dict[str, Any], pod: PodNetworkRequest, ifname: str,
                    netns: str) -> dict[str, Any] | None:
        path = await asyncio.to_thread(find_plugin, kind, self.bin_dirs)
        if path is None:
            raise errors.FailedPrecondition(f"CNI plugin {kind} not found in {':'.join(self.bin_dirs)}")
        env = {
            "PATH": os.environ.get("PATH") or DEFAULT_PATH,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": pod.sandbox_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_ARGS": cni_args(pod),
            "CNI_PATH": ":".join(self.bin_dirs),
        }
        try:
            done = await run_command([path], kill_after=self.timeout, input=json.dumps(conf).encode(), env=env,
                                     cwd="/", what=f"pod {pod.sandbox_id}: CNI plugin {kind} {command}")
        except errors.DeadlineExceeded:
            raise errors.DeadlineExceeded(
                f"pod {pod.sandbox_id}: CNI plugin {kind} {command} did not finish within {self.timeout:g}s") from None
        stdout, stderr = done.stdout, done.stderr
        if stderr.strip():
            log.debug("pod %s: CNI plugin %s %s: %s", pod.sandbox_id, kind, command,
                      stderr.decode(errors="replace").strip())
        if done.returncode != 0:
            raise NetworkError(f"pod {pod.sandbox_id}: CNI plugin {kind} {command} failed: "
                               f"{_plugin_error(stdout, stderr, done.returncode)}")
        if command != "ADD":
            return None
        try:
            result = json.loads(stdout)
        except ValueError:
            raise NetworkError(f"pod {pod.sandbox_id}: CNI plugin {kind} ADD printed no JSON result") from None
        if not isinstance(result, dict):
            raise NetworkError(f"pod {pod.sandbox_id}: CNI plugin {kind} ADD printed {result!r}")
        return result


def _plugin_error(stdout: bytes, stderr: bytes, returncode: int | None) -> str:
    """A plugin's error object ({"code", "msg", "details"}) as one line, or what it printed."""
    try:
        err = json.loads(stdout)
    except ValueError:
        err = None
    if isinstance(err, dict) and "msg" in err:
        details = f" ({err['details']})" if err.get("details") else ""
        return f"{err['msg']}{details} [code {err.get('code')}]"
    text = (stdout or stderr).decode(errors="replace").strip()
    return text[-2000:] or f"exit status {returncode}"
