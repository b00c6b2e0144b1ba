"""Links, addresses and routes of the built-in bridge network, through pyroute2 (netlink).

Only the network helper (`runtime.network.helper`) imports this module: it enters a pod's network namespace with
setns(2) on its own (single) thread, which must never happen in crispd. Netlink sockets stay bound to the
namespace they were opened in, so the helper opens one in the host namespace first and one per pod namespace.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import ipaddress
import os
import secrets
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netns import setns

from runtime import errors
from runtime.network.ipam import IPInterface
from runtime.network.types import POD_IFNAME, NetworkError

# IFA_F_NODAD: a pod's IPv6 address is unique by construction (leases), so it skips duplicate address detection
# and is usable at once instead of after a second of "tentative"
IFA_F_NODAD = 0x02
_DEFAULT_DST = {4: "0.0.0.0/0", 6: "::/0"}
# ioctl(2) on a namespace file: which kind of namespace it is (linux/nsfs.h _IO(0xb7, 0x3))
NS_GET_NSTYPE = 0xB703
CLONE_NEWNET = 0x40000000
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
LOOPBACK_IFINDEX = 1  # lo's index in every network namespace (the kernel's LOOPBACK_IFINDEX)
# the link groups delete_links uses for a moment: far from the small numbers people give groups (0 is the default)
_FIRST_GROUP = 1 << 24
_GROUPS = (1 << 31) - _FIRST_GROUP


def open_netns(path: str, what: str) -> int:
    """An O_RDONLY fd of the network namespace at path: NotFound when nothing is there, FailedPrecondition when it
    is not a network namespace (NS_GET_NSTYPE)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise errors.NotFound(f"{what}: network namespace {path} does not exist") from None
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        kind = 0
    if kind != CLONE_NEWNET:
        os.close(fd)
        raise errors.FailedPrecondition(f"{what}: {path} is not a network namespace")
    return fd


def bridge_mac(bridge: str) -> str:
    """A fixed, locally administered MAC for the bridge: without one, a bridge takes the lowest MAC of its ports,
    which changes as pods come and go and leaves the pods' ARP caches pointing at the wrong address."""
    digest = hashlib.sha256(f"crisp-bridge/{bridge}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def write_sysctl(path: str, value: str) -> None:
    """Set a sysctl (a /proc/sys path) if it differs, so a read-only /proc/sys with the right value is fine."""
    p = Path(path)
    if p.read_text().strip() != value:
        p.write_text(value)


def _link_kind(link: Any) -> str:
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return str(kind or "")


def find_link(ipr: IPRoute, name: str) -> Any | None:
    """The link's message (index, flags, attributes: one request), or None if there is no such link."""
    try:
        links = ipr.link("get", ifname=name)
    except NetlinkError:  # ENODEV (as pyroute2's link_lookup, which this replaces, any error is "none")
        return None
    return links[0] if links else None


def lookup(ipr: IPRoute, name: str) -> int | None:
    link = find_link(ipr, name)
    return int(link["index"]) if link is not None else None


def _mac(link: Any) -> str:
    return str(link.get_attr("IFLA_ADDRESS"))


def _addresses(ipr: IPRoute, index: int) -> set[IPInterface]:
    out: set[IPInterface] = set()
    for msg in ipr.get_addr(index=index):
        out.add(ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}"))
    return out


def _add_address(ipr: IPRoute, index: int, addr: IPInterface) -> None:
    kwargs: dict[str, Any] = {"index": index, "address": str(addr.ip), "prefixlen": addr.network.prefixlen}
    if addr.version == 6:
        kwargs["flags"] = IFA_F_NODAD
    try:
        ipr.addr("add", **kwargs)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def ensure_bridge(ipr: IPRoute, name: str, mtu: int, gateways: Sequence[IPInterface]) -> int:
    """The bridge, created if missing, up, with every gateway address; returns its index."""
    link = find_link(ipr, name)
    if link is None:
        try:
            ipr.link("add", ifname=name, kind="bridge", address=bridge_mac(name), mtu=mtu)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # a concurrent helper made it first
                raise NetworkError(f"cannot create bridge {name}: {exc}") from exc
        link = find_link(ipr, name)
        if link is None:
            raise NetworkError(f"bridge {name} vanished right after its creation")
    index = int(link["index"])
    kind = _link_kind(link)
    if kind != "bridge":
        raise errors.FailedPrecondition(f"network interface {name} exists and is a {kind or 'device'}, not a bridge")
    # added, or there already (EEXIST): listing the addresses first would read every address of the host (each
    # pod's veth has one), which grows with the pods
    for gw in gateways:
        _add_address(ipr, index, gw)
    if not link["flags"] & 1:  # IFF_UP
        ipr.link("set", index=index, state="up")
    if any(gw.version == 4 for gw in gateways):
        # connections to 127.0.0.1:<hostPort> are DNATed to a pod and leave through the bridge with a loopback
        # source (SNATed after routing): the bridge must accept routing them
        write_sysctl(f"/proc/sys/net/ipv4/conf/{name}/route_localnet", "1")
    return index


def enable_forwarding(versions: set[int]) -> None:
    if 4 in versions:
        write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")
    if 6 in versions:
        write_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")


def delete_link(ipr: IPRoute, name: str) -> bool:
    """Delete the link if it exists (a veth's peer goes with it); True if it did."""
    index = lookup(ipr, name)
    if index is None:
        return False
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise
        return False
    return True


def delete_links(ipr: IPRoute, names: Sequence[str]) -> None:
    """Delete those of the links that exist (a veth's peer goes with it), all in one kernel call.

    Each deletion call waits for an RCU grace period (synchronize_net, tens of milliseconds) while it holds the RTNL
    lock that every link change on the host needs; the kernel deletes a link group in one call, and so one wait:
    the links join a group of their own (a random number, that no other program is deleting in the same moment)
    and the group goes."""
    found = [index for index in (lookup(ipr, name) for name in names) if index is not None]
    if len(found) <= 1:
        for name in names:
            delete_link(ipr, name)
        return
    group = secrets.randbelow(_GROUPS) + _FIRST_GROUP
    for index in found:
        try:
            ipr.link("set", index=index, group=group)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:  # gone meanwhile
                raise
    try:
        ipr.link("del", group=group)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise


def bridge_ports(ipr: IPRoute, bridge_index: int) -> list[str]:
    return [str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()
            if link.get_attr("IFLA_MASTER") == bridge_index]


def create_veth(ipr: IPRoute, host_name: str, netns_fd: int, mtu: int, bridge_index: int) -> tuple[int, str]:
    """A veth pair: `host_name` on the bridge (up, hairpin on), its peer born inside the pod namespace as eth0.
    Returns the host end's index and MAC."""
    try:
        # on the bridge and up from its creation: one request instead of three
        ipr.link("add", ifname=host_name, kind="veth", mtu=mtu, master=bridge_index, state="up",
                 peer={"ifname": POD_IFNAME, "net_ns_fd": netns_fd, "mtu": mtu})
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            raise errors.FailedPrecondition(
                f"cannot create veth {host_name}: it or {POD_IFNAME} in the pod's namespace already exists") from exc
        raise NetworkError(f"cannot create veth {host_name}: {exc}") from exc
    link = find_link(ipr, host_name)
    if link is None:
        raise NetworkError(f"veth {host_name} vanished right after its creation")
    index = int(link["index"])
    # hairpin: a pod reaching its own hostPort gets the DNATed packet back through the port it came from
    ipr.brport("set", index=index, mode=1)
    return index, _mac(link)


@contextlib.contextmanager
def in_netns(netns_path: str) -> Iterator[None]:
    """Enter the namespace for the block (this whole process: the helper is single-threaded), then come back."""
    target = open_netns(netns_path, "pod")
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(target, flags=0, fork=False)
        try:
            yield
        finally:
            try:
                setns(home, flags=0, fork=False)
            except BaseException as exc:
                # a helper stuck in a pod's namespace must not serve another request: die, and let crispd see
                # a crashed helper (and clean up with a fresh one)
                print(f"crisp-network-helper: cannot return to the host network namespace: {exc}",
                      file=sys.stderr, flush=True)
                os._exit(70)
    finally:
        os.close(home)
        os.close(target)


def configure_pod(ipr: IPRoute, addresses: Sequence[IPInterface], gateways: Sequence[IPInterface]) -> str:
    """Inside the pod's namespace: lo up; eth0 with its addresses, up; default routes via the gateways.
    Returns eth0's MAC."""
    ipr.link("set", index=LOOPBACK_IFINDEX, state="up")
    link = find_link(ipr, POD_IFNAME)
    if link is None:
        raise NetworkError(f"{POD_IFNAME} did not arrive in the pod's namespace")
    eth0 = int(link["index"])
    for addr in addresses:
        _add_address(ipr, eth0, addr)
    ipr.link("set", index=eth0, state="up")
    for gw in gateways:
        try:
            ipr.route("add", family=_AF[gw.version], dst=_DEFAULT_DST[gw.version], gateway=str(gw.ip), oif=eth0)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                raise errors.FailedPrecondition(
                    f"the pod's namespace already has a default IPv{gw.version} route") from exc
            raise NetworkError(f"cannot add the default route via {gw.ip}: {exc}") from exc
    return _mac(link)  # a link's MAC stays what it was born with (up or not)


def pod_problems(ipr: IPRoute, addresses: Sequence[IPInterface], gateways: Sequence[IPInterface]) -> list[str]:
    """What is missing inside the pod's namespace (empty when everything is as configure_pod left it)."""
    problems: list[str] = []
    eth0 = lookup(ipr, POD_IFNAME)
    if eth0 is None:
        return [f"no {POD_IFNAME} in the pod's namespace"]
    if not ipr.get_links(eth0)[0]["flags"] & 1:
        problems.append(f"{POD_IFNAME} is down")
    have = _addresses(ipr, eth0)
    problems += [f"{POD_IFNAME} lacks {addr}" for addr in addresses if addr not in have]
    for gw in gateways:
        routes = ipr.get_routes(family=_AF[gw.version], dst_len=0, table=254)
        gws = {r.get_attr("RTA_GATEWAY") for r in routes}
        if str(gw.ip) not in gws:
            problems.append(f"no default IPv{gw.version} route via {gw.ip}")
    return problems
