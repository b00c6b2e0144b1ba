"""The built-in bridge's nftables rules, driven through libnftables, the `nft` tool's library (runtime/network/
libnft.py; by the network helper, never by crispd).

One `inet` table per bridge network (named like the bridge) holds:
- `prerouting` / `output` (nat): traffic to a local address jumps to `hostports`; the output path covers
  connections the host itself makes, 127.0.0.1 included;
- `hostports`: one DNAT rule per pod port mapping (and IP family), each commented `crisp:<sandbox id>` so that a
  pod's teardown deletes exactly its own rules by handle;
- `postrouting` (nat): SNAT for DNATed connections from 127.0.0.0/8 (they cannot leave through the bridge with a
  loopback source; `route_localnet` on the bridge lets them be routed at all) and for pod-to-hostPort-to-pod
  (hairpin) connections, and masquerade for traffic from the pod CIDR to anywhere outside it;
- `localnet` (filter, input): packets to 127.0.0.0/8 that come in on any interface but lo and are not part of a
  DNATed connection are dropped. `route_localnet` (which the hostPorts on 127.0.0.1 need, and which Debian's
  portmap plugin sets too) would let a pod deliver them to the host's loopback-only sockets (CVE-2020-8558);
  kube-proxy drops the same by source address, which a pod with CAP_NET_RAW can fake, so here by interface.
  In CNI mode the table holds only this chain.
The base chains are flushed and rewritten in the same atomic batch as a pod's rules, so a changed pod CIDR takes
effect with the next pod and concurrent helpers never see a half-written table. A pod without hostPorts skips that
batch when the base rules are those of its config, untouched: the last one carries the digest of the batch that
wrote it (`base_rules_intact`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

from runtime import errors
from runtime.network import libnft
from runtime.network.ipam import IPInterface, IPNetwork
from runtime.network.types import NetworkError, PortMapping

HOSTPORTS = "hostports"
BASE_MARK = "crisp base rules "  # not a pod's tag (`crisp:<sandbox id>`)
# a DNAT to an IPv4 pod address only for IPv4 packets: an inet chain sees both families
_NFPROTO = {4: "ipv4", 6: "ipv6"}
_MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}
_FAMILY = {4: "ip", 6: "ip6"}


def rule_tag(sandbox_id: str) -> str:
    return f"crisp:{sandbox_id}"


def _quote(text: str) -> str:
    return json.dumps(text)  # nft accepts double-quoted strings; names are checked to be plain anyway


def localnet_guard_commands(table: str) -> list[str]:
    """The table (made if missing) with its `localnet` chain (re)written: see above."""
    t = f"inet {table}"
    return [
        f"add table {t}",
        f"add chain {t} localnet {{ type filter hook input priority filter; policy accept; }}",
        f"flush chain {t} localnet",
        # `ct status & dnat == 0`: not part of a DNATed connection (`ct status != dnat` compares the whole word)
        f'add rule {t} localnet iifname != "lo" ip daddr 127.0.0.0/8 ct status & dnat == 0 counter drop '
        'comment "crisp: nothing from outside reaches 127.0.0.0/8 unless DNATed (route_localnet)"',
    ]


def base_commands(table: str, bridge: str, subnets: Sequence[IPNetwork], masquerade: bool) -> list[str]:
    """Create the table and its chains if missing and (re)write the base chains' rules."""
    t = f"inet {table}"
    cmds = [
        *localnet_guard_commands(table),
        f"add chain {t} {HOSTPORTS}",
        f"add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}",
        f"add chain {t} output {{ type nat hook output priority -100; policy accept; }}",
        f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
        f"flush chain {t} prerouting",
        f"flush chain {t} output",
        f"flush chain {t} postrouting",
        f"add rule {t} prerouting fib daddr type local jump {HOSTPORTS}",
        f"add rule {t} output fib daddr type local jump {HOSTPORTS}",
        f"add rule {t} postrouting oifname {_quote(bridge)} ct status dnat ip saddr 127.0.0.0/8 masquerade",
    ]
    for subnet in subnets:
        fam = _FAMILY[subnet.version]
        cmds.append(f"add rule {t} postrouting ct status dnat {fam} saddr {subnet} {fam} daddr {subnet} masquerade")
        if masquerade:
            cmds.append(f"add rule {t} postrouting {fam} saddr {subnet} "
                        f"{fam} daddr != {{ {subnet}, {_MULTICAST[subnet.version]} }} masquerade")
    # the last rule names what the batch wrote, so that a helper can tell the rules of this config (base_state)
    cmds[-1] += f" comment {_quote(BASE_MARK + base_digest(cmds))}"
    return cmds


def base_digest(commands: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(commands).encode()).hexdigest()[:16]


def marked_digest(commands: Sequence[str]) -> str:
    """The digest base_commands' marker names."""
    return commands[-1].rpartition(BASE_MARK)[2].rstrip('"')


def base_rules_intact(table: str, commands: Sequence[str]) -> bool:
    """Whether the table holds the rules that the base `commands` write, untouched since: its marker names their
    digest, each base chain holds as many rules as they add, and none came after the marker (the batch's last
    rule; rule handles only grow). Anything else (a flushed chain, a deleted or added rule, a recreated table,
    another pod CIDR's rules) is not."""
    data = _list(["table", "inet", table])
    if data is None:
        return False
    marker = BASE_MARK + marked_digest(commands)
    prefix = f"add rule inet {table} "
    expected = Counter(c.removeprefix(prefix).split()[0] for c in commands if c.startswith(prefix))
    found: Counter[str] = Counter()
    marker_handle, last = -1, 0
    for item in data.get("nftables", ()):
        rule = item.get("rule")
        if rule is None or rule.get("chain") == HOSTPORTS:
            continue
        found[str(rule.get("chain"))] += 1
        last = max(last, int(rule["handle"]))
        if rule.get("comment") == marker:
            marker_handle = int(rule["handle"])
    return marker_handle == last and found == expected


def pod_commands(table: str, sandbox_id: str, mappings: Sequence[PortMapping],
                 addresses: Sequence[IPInterface]) -> list[str]:
    """The DNAT rules of one pod: each mapping to the pod's address of the host IP's family (both families when
    the mapping names no host IP)."""
    t = f"inet {table}"
    tag = _quote(rule_tag(sandbox_id))
    cmds: list[str] = []
    for pm in mappings:
        wanted = pm.host_ip_version()
        targets = [a for a in addresses if wanted is None or a.version == wanted]
        if not targets:
            raise errors.InvalidArgument(
                f"pod {sandbox_id}: host IP {pm.host_ip} of port {pm.host_port}/{pm.protocol} has no pod address "
                "of its IP family")
        for addr in targets:
            fam = _FAMILY[addr.version]
            match = f"meta nfproto {_NFPROTO[addr.version]}"
            if wanted is not None:
                match += f" {fam} daddr {pm.host_ip}"
            to = f"{addr.ip}:{pm.container_port}" if addr.version == 4 else f"[{addr.ip}]:{pm.container_port}"
            cmds.append(f"add rule {t} {HOSTPORTS} {match} meta l4proto {pm.protocol} th dport {pm.host_port} "
                        f"dnat {fam} to {to} comment {tag}")
    return cmds


def nft_binary_path() -> str | None:
    # crispd may run with a PATH without the sbin dirs (a kubelet's environment, a login shell's)
    return shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None)


def run(commands: Sequence[str]) -> None:
    """Apply the commands as one atomic nft batch."""
    if not commands:
        return
    script = "\n".join(commands) + "\n"
    result = libnft.run(script)
    if not result.ok:
        raise NetworkError(f"nft failed: {result.error.strip()}\nbatch:\n{script}")


def _list(args: Sequence[str]) -> dict[str, Any] | None:
    """`nft -j -a list ...`, or None when the object does not exist."""
    result = libnft.run("list " + " ".join(args), flags=libnft.OUTPUT_JSON | libnft.OUTPUT_HANDLE)
    if not result.ok:
        if "No such file or directory" in result.error:
            return None
        raise NetworkError(f"nft list {' '.join(args)} failed: {result.error.strip()}")
    data: dict[str, Any] = json.loads(result.output)
    return data


def tagged_handles(table: str, sandbox_ids: Collection[str]) -> list[int]:
    """Handles of the pods' rules in `hostports` (none when the table does not exist)."""
    data = _list(["chain", "inet", table, HOSTPORTS])
    if data is None:
        return []
    tags = {rule_tag(sandbox_id) for sandbox_id in sandbox_ids}
    return [int(item["rule"]["handle"]) for item in data.get("nftables", ())
            if "rule" in item and item["rule"].get("comment") in tags]


def delete_commands(table: str, handles: Sequence[int]) -> list[str]:
    return [f"delete rule inet {table} {HOSTPORTS} handle {h}" for h in handles]


def hostport_rule_count(table: str) -> int:
    """How many rules `hostports` holds (0 when the table does not exist)."""
    data = _list(["chain", "inet", table, HOSTPORTS])
    if data is None:
        return 0
    return sum(1 for item in data.get("nftables", ()) if "rule" in item)


def table_exists(table: str) -> bool:
    return _list(["table", "inet", table]) is not None


def delete_table(table: str) -> None:
    if table_exists(table):
        run([f"delete table inet {table}"])
