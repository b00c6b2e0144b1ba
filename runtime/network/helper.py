"""The network helper: `python -m runtime.network.helper` does the built-in bridge's kernel work for crispd.

Protocol: JSON lines: for each request line on stdin, one answer line on stdout; end of input is a quiet exit 0
(crispd keeps a few helpers for many requests: `helper_client.HelperRunner`). Answers:
    {"ok": true, "result": {...}}
    {"ok": false, "kind": "FailedPrecondition" | "NotFound" | ... | "NetworkError", "message": "..."}
Operations (every request carries "network": BridgeNetwork JSON):
    setup      forwarding on, the bridge with its gateway addresses, the nftables table and base rules (each
               made if missing), the pod's veth pair, its nftables rules, and eth0/lo/routes inside its netns;
               {"sandboxId", "netns", "veth", "addresses": ["10.88.0.5/16"], "portMappings": [...]}
               -> {"hostMac", "podMac"}; on failure every step of the pod made so far is undone
    teardown   for each pod of "pods" (crispd sends concurrent teardowns together), delete its rules and veth pair
               (each if present; the veths in one kernel call), forget UDP conntrack entries of its addresses and
               UDP hostPorts; {"pods": [{"sandboxId", "veth", "addresses", "portMappings"}, ...]}
    check      {"sandboxId", "netns", "veth", "addresses", "portMappings"}: FailedPrecondition naming what is
               missing
    destroy    delete the nftables table and the bridge (FailedPrecondition while ports are attached)
    stats      interface counters inside each pod netns (no "network" needed): {"netns": [path, ...]}
               -> {"namespaces": {path: {"interfaces": [InterfaceCounters JSON]} | {"error": "..."}}}
This process may fork (pyroute2 does for some calls) and setns(2) itself: it is single-threaded and not crispd.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from pyroute2 import IPRoute

from runtime import errors
from runtime.network import conntrack, hostnet, netstats, nft
from runtime.network.bridge import BridgeNetwork, check_bridge_name
from runtime.network.helper_client import HelperCrashed
from runtime.network.ipam import IPInterface, gateway
from runtime.network.types import NetworkError, PortMapping
from runtime.undo import undo_step


def _log(message: str) -> None:
    print(f"crisp-network-helper: {message}", file=sys.stderr, flush=True)


def _report(message: str, exc: BaseException) -> None:
    _log(message)


_host_socket: IPRoute | None = None


def _host_netlink() -> IPRoute:
    """The helper's netlink socket in the host's network namespace, opened at its first request and kept for the
    next ones (opening one costs more than most of a pod's link changes). Netlink sockets stay bound to the
    namespace they were opened in: `hostnet.in_netns` moves this process, not the socket."""
    global _host_socket
    if _host_socket is None:
        _host_socket = IPRoute()
    return _host_socket


def _drop_host_netlink() -> None:
    """After a failed request the socket is not trusted further: the next request opens a new one."""
    global _host_socket
    if _host_socket is not None:
        socket, _host_socket = _host_socket, None
        with contextlib.suppress(Exception):
            socket.close()


def _addresses(request: dict[str, Any]) -> list[IPInterface]:
    return [ipaddress.ip_interface(a) for a in request.get("addresses", ())]


def _mappings(request: dict[str, Any]) -> list[PortMapping]:
    return [PortMapping.from_json(p) for p in request.get("portMappings", ())]


def _ensure(ipr: IPRoute, net: BridgeNetwork) -> int:
    hostnet.enable_forwarding({s.version for s in net.subnets})
    return hostnet.ensure_bridge(ipr, net.bridge, net.mtu, [gateway(s) for s in net.subnets])


def _base_rules(net: BridgeNetwork) -> list[str]:
    return nft.base_commands(net.table, net.bridge, net.subnets, net.masquerade)


def op_setup(request: dict[str, Any]) -> dict[str, Any]:
    net = BridgeNetwork.from_json(request["network"])
    sandbox_id = str(request["sandboxId"])
    veth = str(request["veth"])
    netns = str(request["netns"])
    addresses = _addresses(request)
    mappings = _mappings(request)
    gateways = [gateway(s) for s in net.subnets if any(a.version == s.version for a in addresses)]
    pod_rules = nft.pod_commands(net.table, sandbox_id, mappings, addresses)  # bad input fails before any work
    netns_fd = hostnet.open_netns(netns, f"pod {sandbox_id}")
    failures: list[str] = []
    try:
        # the netlink socket outlives the undo steps, which need it
        with contextlib.ExitStack() as undo:
            ipr = _host_netlink()
            undo.callback(os.close, netns_fd)
            bridge_index = _ensure(ipr, net)
            earlier = hostnet.delete_link(ipr, veth)
            if earlier:
                _log(f"pod {sandbox_id}: removed veth {veth} left by an earlier attempt")
            _, host_mac = hostnet.create_veth(ipr, veth, netns_fd, net.mtu, bridge_index)
            undo.callback(undo_step(f"delete veth {veth}", hostnet.delete_link, ipr, veth, report=_report,
                                    failures=failures))
            # a pod's rules exist only while its veth does (added after it, deleted before it): no veth, no rules
            stale = nft.tagged_handles(net.table, {sandbox_id}) if earlier else []
            _write_rules(net, nft.delete_commands(net.table, stale) + pod_rules)
            undo.callback(undo_step(f"delete the nftables rules of pod {sandbox_id}", _delete_rules, net.table,
                                    {sandbox_id}, report=_report, failures=failures))
            with hostnet.in_netns(netns), IPRoute() as pod:
                pod_mac = hostnet.configure_pod(pod, addresses, gateways)
            undo.pop_all()
    except Exception as exc:
        if failures:  # crispd must clean up after this helper, as after one that was killed
            raise HelperCrashed(f"{exc}; and undoing it failed: {'; '.join(failures)}") from exc
        raise
    os.close(netns_fd)
    # datagrams to its UDP hostPorts that conntrack still sends elsewhere (an earlier pod) come here from now on
    _forget_udp(sandbox_id, [], [pm.host_port for pm in mappings if pm.protocol == "udp"])
    return {"hostMac": host_mac, "podMac": pod_mac}


def _write_rules(net: BridgeNetwork, pod_commands: list[str]) -> None:
    """The base rules (re)written with the pod's rules in one batch; with no pod rules, only if they are not this
    config's, untouched (a commit of the base chains is the costly part of an nft batch, and the commit lock is the
    host's)."""
    base = _base_rules(net)
    if pod_commands or not nft.base_rules_intact(net.table, base):
        nft.run(base + pod_commands)


def _forget_udp(sandbox_ids: str, pod_ips: list[str], host_ports: list[int]) -> None:
    """Forget the UDP connections of the pods' addresses and to their UDP hostPorts: UDP has no end, and a client
    that keeps sending to a hostPort stays in a conntrack entry DNATed to whichever pod had the port first, also
    after that pod is gone and another one took the port (TCP entries end by themselves). Best effort: a conntrack
    failure (nf_conntrack_netlink missing, say) must not fail a pod."""
    try:
        conntrack.forget_udp(pod_ips, host_ports)
    except Exception as exc:
        _log(f"pod {sandbox_ids}: cannot flush UDP conntrack entries: {exc}")


def _delete_rules(table: str, sandbox_ids: set[str]) -> None:
    nft.run(nft.delete_commands(table, nft.tagged_handles(table, sandbox_ids)))


def op_teardown(request: dict[str, Any]) -> dict[str, Any]:
    net = BridgeNetwork.from_json(request["network"])
    pods = [dict(pod) for pod in request["pods"]]
    # a pod's rules go before its veth (no veth, no rules: see op_setup)
    _delete_rules(net.table, {str(pod["sandboxId"]) for pod in pods})
    hostnet.delete_links(_host_netlink(), [str(pod["veth"]) for pod in pods])
    _forget_udp(", ".join(str(pod["sandboxId"]) for pod in pods),
                [str(a.ip) for pod in pods for a in _addresses(pod)],
                [pm.host_port for pod in pods for pm in _mappings(pod) if pm.protocol == "udp"])
    return {}


def op_check(request: dict[str, Any]) -> dict[str, Any]:
    net = BridgeNetwork.from_json(request["network"])
    sandbox_id = str(request["sandboxId"])
    veth = str(request["veth"])
    addresses = _addresses(request)
    gateways = [gateway(s) for s in net.subnets if any(a.version == s.version for a in addresses)]
    problems: list[str] = []
    ipr = _host_netlink()
    bridge_index = hostnet.lookup(ipr, net.bridge)
    index = hostnet.lookup(ipr, veth)
    if bridge_index is None:
        problems.append(f"bridge {net.bridge} is missing")
    if index is None:
        problems.append(f"veth {veth} is missing")
    else:
        link = ipr.get_links(index)[0]
        if bridge_index is not None and link.get_attr("IFLA_MASTER") != bridge_index:
            problems.append(f"veth {veth} is not on bridge {net.bridge}")
        if not link["flags"] & 1:
            problems.append(f"veth {veth} is down")
    expected = len(nft.pod_commands(net.table, sandbox_id, _mappings(request), addresses))
    found = len(nft.tagged_handles(net.table, {sandbox_id}))
    if found != expected:
        problems.append(f"{found} hostPort rule(s) instead of {expected}")
    try:
        with hostnet.in_netns(str(request["netns"])), IPRoute() as pod:
            problems += hostnet.pod_problems(pod, addresses, gateways)
    except errors.NotFound as exc:
        problems.append(str(exc))
    if problems:
        raise errors.FailedPrecondition(f"pod {sandbox_id} on bridge {net.bridge}: " + "; ".join(problems))
    return {}


def op_destroy(request: dict[str, Any]) -> dict[str, Any]:
    net = BridgeNetwork.from_json(request["network"])
    ipr = _host_netlink()
    index = hostnet.lookup(ipr, net.bridge)
    if index is not None:
        ports = hostnet.bridge_ports(ipr, index)
        if ports:
            raise errors.FailedPrecondition(f"bridge {net.bridge} still has ports: {', '.join(ports)}")
    nft.delete_table(net.table)
    if index is not None:
        hostnet.delete_link(ipr, net.bridge)
    return {}


def op_stats(request: dict[str, Any]) -> dict[str, Any]:
    """Each namespace's /proc/net/dev, read from inside it; one that is gone or unreadable says why."""
    out: dict[str, Any] = {}
    for path in request.get("netns", ()):
        path = str(path)
        try:
            with hostnet.in_netns(path):
                counters = netstats.read_interface_counters()
            out[path] = {"interfaces": [c.to_json() for c in counters]}
        except (errors.CrispError, OSError) as exc:
            out[path] = {"error": str(exc)}
    return {"namespaces": out}


def op_localnet_guard(request: dict[str, Any]) -> dict[str, Any]:
    """CNI mode: the table named `table` with only the localnet guard (nft.py), before any plugin runs."""
    table = str(request["table"])
    check_bridge_name(table)  # a table of crisp's, named like the bridge setting
    nft.run(nft.localnet_guard_commands(table))
    return {}


OPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "localnet_guard": op_localnet_guard,
    "setup": op_setup,
    "teardown": op_teardown,
    "check": op_check,
    "destroy": op_destroy,
    "stats": op_stats,
}


def handle(line: str) -> dict[str, Any]:
    try:
        request = json.loads(line)
        op = OPS.get(str(request.get("op"))) if isinstance(request, dict) else None
        if op is None:
            raise errors.InvalidArgument(f"network helper: not a known request: {line.strip()[:200]}")
        return {"ok": True, "result": op(request)}
    except (errors.CrispError, NetworkError) as exc:
        _drop_host_netlink()
        return {"ok": False, "kind": type(exc).__name__, "message": str(exc)}
    except Exception as exc:
        _drop_host_netlink()
        traceback.print_exc(file=sys.stderr)
        return {"ok": False, "kind": "NetworkError", "message": f"{type(exc).__name__}: {exc}"}


def main() -> int:
    while True:
        line = sys.stdin.readline()
        if not line:
            return 0
        if not line.strip():
            continue
        sys.stdout.write(json.dumps(handle(line)) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
