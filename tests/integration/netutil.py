"""What the network tests share: unique names and subnets, pod namespaces and pod processes, leak checks.

Everything here is local to this machine: namespaces made with `ip netns add crisp-<unique>`, pod processes started
with `ip netns exec` (Debian's busybox-static httpd/nc, or this Python for a UDP echo), and traffic only to pod
addresses, bridge addresses and loopback.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")
BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def need_root_and_tools(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for tool in ("ip", *tools):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            pytest.skip(f"needs {tool}")


def unique(prefix: str = "") -> str:
    return prefix + secrets.token_hex(4)


def _host_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for family in ("-4", "-6"):
        out = subprocess.run(["ip", "-j", family, "route", "show", "table", "all"], capture_output=True, text=True,
                             check=True).stdout
        for route in json.loads(out or "[]"):
            dst = route.get("dst", "")
            if dst and dst != "default":
                with contextlib.suppress(ValueError):
                    nets.append(ipaddress.ip_network(dst, strict=False))
        out = subprocess.run(["ip", "-j", family, "addr"], capture_output=True, text=True, check=True).stdout
        for link in json.loads(out or "[]"):
            for addr in link.get("addr_info", ()):
                with contextlib.suppress(ValueError):
                    nets.append(ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    return nets


def free_subnet4(prefixlen: int = 24) -> ipaddress.IPv4Network:
    """A random 10.128.0.0/9 subnet that overlaps nothing this host routes or has (other tests run alongside)."""
    taken = [n for n in _host_networks() if n.version == 4]
    for _ in range(200):
        base = ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.128.0.0")) + random.randrange(1 << 23))
        subnet = ipaddress.IPv4Network(f"{base}/{prefixlen}", strict=False)
        if not any(subnet.overlaps(n) for n in taken if n.prefixlen > 0):  # type: ignore[arg-type]
            return subnet
    raise RuntimeError("no free IPv4 subnet found")


def free_subnet6() -> ipaddress.IPv6Network:
    """A random unique-local /64."""
    taken = [n for n in _host_networks() if n.version == 6]
    for _ in range(50):
        subnet = ipaddress.IPv6Network((int(ipaddress.IPv6Address("fd00::")) | (random.getrandbits(56) << 64), 64))
        if not any(subnet.overlaps(n) for n in taken if n.prefixlen > 0):  # type: ignore[arg-type]
            return subnet
    raise RuntimeError("no free IPv6 subnet found")


def free_port() -> int:
    """A port free for both TCP and UDP on every address right now."""
    for _ in range(100):
        with socket.socket() as tcp:
            tcp.bind(("0.0.0.0", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("0.0.0.0", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def wait_for(check: Callable[[], T | None], timeout: float = 15.0, interval: float = 0.1, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value is not None and value is not False:
                return value
        except Exception as exc:  # keep trying; report the last failure
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or check}: {last!r}")


class Netns:
    """`ip netns add crisp-<unique>`; `close()` kills what the test started in it and deletes it."""

    def __init__(self) -> None:
        self.name = unique("crisp-t")
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.path = f"/run/netns/{self.name}"
        self.procs: list[subprocess.Popen[bytes]] = []

    def run(self, *argv: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def start(self, *argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, close_fds=True, start_new_session=True)
        self.procs.append(proc)
        return proc

    def httpd(self, docroot: Path, body: str, port: int = 80) -> None:
        docroot.mkdir(parents=True, exist_ok=True)
        (docroot / "index.html").write_text(body)
        self.start(BUSYBOX, "httpd", "-f", "-p", str(port), "-h", str(docroot))

    def udp_echo(self, port: int) -> None:
        """A UDP server that answers every datagram with `echo:` + the datagram."""
        code = ("import socket\n"
                "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"s.bind(('0.0.0.0', {port}))\n"
                "while True:\n"
                "    data, peer = s.recvfrom(2048)\n"
                "    s.sendto(b'echo:' + data, peer)\n")
        self.start(sys.executable, "-c", code)

    def http_get(self, host: str, port: int, path: str = "/index.html") -> str:
        """An HTTP GET from inside the namespace, with busybox nc (busybox-static's wget crashes on this Debian);
        returns the body."""
        request = f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()
        result = subprocess.run(["ip", "netns", "exec", self.name, BUSYBOX, "nc", "-w", "3", host, str(port)],
                                input=request, capture_output=True, timeout=20, check=False)
        head, sep, raw = result.stdout.partition(b"\r\n\r\n")
        if result.returncode != 0 or not sep or b" 200 " not in head.split(b"\r\n")[0]:
            raise AssertionError(f"GET {host}:{port}{path} from {self.name} failed ({result.returncode}): "
                                 f"{result.stdout[:200]!r} {result.stderr.decode(errors='replace').strip()}")
        body = raw.decode()
        return body

    def links(self) -> list[str]:
        out = self.run("ip", "-j", "link").stdout
        return [link["ifname"] for link in json.loads(out or "[]")]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)


@contextlib.contextmanager
def namespaces() -> Iterator[Callable[[], Netns]]:
    """A factory of pod namespaces, all removed at the end (also when the test fails)."""
    made: list[Netns] = []

    def make() -> Netns:
        ns = Netns()
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in made:
            ns.close()


def http_get(host: str, port: int, path: str = "/index.html", timeout: float = 3.0) -> str:
    """An HTTP GET straight to host:port (no proxy, whatever the environment says)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def udp_ask(host: str, port: int, data: bytes, timeout: float = 1.0) -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, (host, port))
        return s.recvfrom(2048)[0]


def host_links() -> list[str]:
    out = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout
    return [link["ifname"] for link in json.loads(out)]


def delete_link(name: str) -> None:
    subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)


# CNI plugins' iptables leftovers (the CNI tests and the network bench)
PORTMAP_CHAINS = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK")
PORTMAP_JUMPS = (
    ("PREROUTING", ["-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"]),
    ("OUTPUT", ["-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"]),
    ("POSTROUTING", ["-m", "comment", "--comment", "CNI portfwd requiring masquerade", "-j", "CNI-HOSTPORT-MASQ"]),
)


def iptables_nat() -> str:
    return subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=False).stdout


def remove_rules_of(sandbox_ids: set[str]) -> None:
    """Rules (and the chains they jump to) that plugins left for these pods: the bridge plugin cannot remove its
    masquerade rules on a DEL without the pod's namespace, as it reads the addresses from there."""
    chains: set[str] = set()
    for line in iptables_nat().splitlines():
        if line.startswith("-A ") and any(sid in line for sid in sandbox_ids):
            args = shlex.split(line)
            if "-j" in args and args[args.index("-j") + 1].startswith("CNI-"):
                chains.add(args[args.index("-j") + 1])
            subprocess.run(["iptables", "-t", "nat", "-D", *args[1:]], capture_output=True, check=False)
    for chain in chains:
        subprocess.run(["iptables", "-t", "nat", "-F", chain], capture_output=True, check=False)
        subprocess.run(["iptables", "-t", "nat", "-X", chain], capture_output=True, check=False)


def remove_portmap_globals() -> None:
    """portmap's shared chains, once no pod uses them (the plugin never removes them)."""
    if "CNI-DN-" in iptables_nat():
        return
    for chain, rule in PORTMAP_JUMPS:
        while subprocess.run(["iptables", "-t", "nat", "-D", chain, *rule], capture_output=True).returncode == 0:
            pass
    for chain in PORTMAP_CHAINS:
        subprocess.run(["iptables", "-t", "nat", "-F", chain], capture_output=True, check=False)
        subprocess.run(["iptables", "-t", "nat", "-X", chain], capture_output=True, check=False)
