"""The files a pod's containers share: hostname, hosts and resolv.conf (bind-mounted into each container)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from cri import api as cri
from runtime import errors

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
HOST_HOSTS = Path("/etc/hosts")

DEFAULT_HOSTS = """127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
ff00::0\tip6-mcastprefix
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""


MAX_HOSTNAME = 64  # the kernel's limit (HOST_NAME_MAX)


def pod_hostname(config: cri.PodSandboxConfig, host_network: bool) -> str:
    """A host-network pod has the node's hostname; any other pod its configured one, else (as containerd does)
    the node's."""
    if host_network or not config.hostname:
        return socket.gethostname()
    if len(config.hostname.encode()) > MAX_HOSTNAME or any(c in config.hostname for c in "\0/ \n"):
        raise errors.InvalidArgument(f"pod hostname {config.hostname!r} is not a valid hostname "
                                     f"(at most {MAX_HOSTNAME} bytes, no spaces or slashes)")
    return config.hostname


def resolv_conf(dns: cri.DNSConfig, host_resolv: Path = HOST_RESOLV_CONF) -> str:
    """resolv.conf from the CRI DNSConfig; an empty one means the host's file."""
    if not (dns.servers or dns.searches or dns.options):
        try:
            return host_resolv.read_text()
        except FileNotFoundError:
            return ""
    lines = []
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    lines.extend(f"nameserver {server}" for server in dns.servers)
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n"


def hosts_file(host_network: bool, host_hosts: Path = HOST_HOSTS) -> str:
    if host_network:
        try:
            return host_hosts.read_text()
        except FileNotFoundError:
            pass
    return DEFAULT_HOSTS


def write_file(path: Path, content: str, mode: int = 0o644) -> None:
    """Write atomically (temp + rename); containers bind-mount the result."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(content)
        os.fchmod(f.fileno(), mode)
    os.replace(tmp, path)


def write_pod_files(pod_dir: Path, config: cri.PodSandboxConfig, hostname: str, host_network: bool
                    ) -> dict[str, Path]:
    paths = {"hostname": pod_dir / "hostname", "hosts": pod_dir / "hosts", "resolv.conf": pod_dir / "resolv.conf"}
    write_file(paths["hostname"], hostname + "\n")
    write_file(paths["hosts"], hosts_file(host_network))
    write_file(paths["resolv.conf"], resolv_conf(config.dns_config))
    return paths
