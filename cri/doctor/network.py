"""The pod network (the CNI config dir versus the built-in bridge, routes that collide with the pod CIDR, nftables)
and the registry mirrors of hosts.toml: reachable or not."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cri.doctor.report import Check, fail, ok, warn
from runtime import errors
from runtime.image.hosts import registry_hosts
from runtime.network.bridge import pod_cidr_conflict
from runtime.network.cni import CniBackend, config_files
from runtime.network.ipam import DEFAULT_POD_CIDR, parse_pod_cidrs
from runtime.network.nft import nft_binary_path

if TYPE_CHECKING:
    from cri.config import Config

CONNECT_TIMEOUT = 3.0


def check_network(config: Config, pod_cidr: str) -> list[Check]:
    """`pod_cidr`: the one in force (a running crispd's, which may be the kubelet's), or "" for the config's."""
    net = config.network
    if config_files(net.cni_config_dir):
        cni = CniBackend(cache_dir=Path(config.root) / "network" / "cni", config_dir=net.cni_config_dir,
                         bin_dirs=tuple(net.cni_bin_dirs))
        status = asyncio.run(cni.status())
        if not status.ready:
            return [fail("pod network", f"CNI (a config in {net.cni_config_dir} replaces the built-in bridge): "
                         f"{status.message}", "install the plugins the config names, or fix or remove the config")]
        return [ok("pod network", f"CNI: the first config in {net.cni_config_dir} (it replaces the built-in "
                   "bridge); its plugins are installed")]
    checks = [ok("pod network", f"the built-in bridge {net.bridge} (no CNI config in {net.cni_config_dir})")]
    cidr = pod_cidr or net.pod_cidr or DEFAULT_POD_CIDR
    try:
        subnets = tuple(parse_pod_cidrs(cidr))
    except errors.InvalidArgument as exc:
        return [*checks, fail("pod CIDR", str(exc), "set [network] pod_cidr to a CIDR (or a v4,v6 pair)")]
    conflict = pod_cidr_conflict(net.bridge, subnets)
    if conflict:
        checks.append(fail("pod CIDR", conflict, "set [network] pod_cidr to a range no host route uses"))
    else:
        checks.append(ok("pod CIDR", f"{cidr}: no host route sends any of it elsewhere"))
    checks.append(_check_nftables())
    return checks


def _check_nftables() -> Check:
    nft = nft_binary_path()
    if nft is None:
        return fail("nftables", "the nft tool is missing: the bridge's masquerade and hostPorts need it",
                    "apt-get install nftables")
    try:
        result = subprocess.run([nft, "list", "tables"], capture_output=True, text=True, timeout=10,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return fail("nftables", f"{nft} list tables: {exc}", "a kernel with nf_tables")
    if result.returncode != 0:
        return fail("nftables", f"{nft} list tables: {result.stderr.strip() or result.returncode}",
                    "a kernel with nf_tables (modprobe nf_tables), and root")
    return ok("nftables", f"{nft} works")


def check_registries(config: Config) -> list[Check]:
    """Each mirror and upstream of every hosts.toml answers a TCP connection."""
    directory = config.image.registry_config_path
    try:
        registries = sorted(d for d in os.listdir(directory) if os.path.isfile(os.path.join(directory, d,
                                                                                           "hosts.toml")))
    except OSError:
        registries = []
    if not registries:
        return [ok("registry mirrors", f"none in {directory}: registries are asked directly")]
    broken, unreachable, reached = [], [], []
    for registry in registries:
        try:
            hosts = registry_hosts(directory, registry)
        except errors.CrispError as exc:
            broken.append(str(exc))
            continue
        for host in hosts:
            parts = urlsplit(host.base_url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                with socket.create_connection((parts.hostname or "", port), timeout=CONNECT_TIMEOUT):
                    reached.append(host.base_url)
            except OSError as exc:
                unreachable.append(f"{host.base_url} ({registry}: {exc.strerror or exc})")
    if broken:
        return [warn("registry mirrors", "; ".join(broken), "fix the hosts.toml (docs/registry.md): pulls from "
                     "those registries fail")]
    if unreachable:
        return [warn("registry mirrors", f"unreachable: {', '.join(unreachable)}",
                     "start the mirror or remove it from hosts.toml (docs/registry.md); pulls go on to the next host")]
    return [ok("registry mirrors", f"{len(reached)} host(s) of {len(registries)} registr(ies) answer")]
