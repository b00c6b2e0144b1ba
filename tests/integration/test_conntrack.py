"""runtime.network.conntrack against the real kernel, in a network namespace of the test's own, checked with
pyroute2's independent ctnetlink client: which UDP entries it forgets, and that it leaves every other one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.integration.netutil import namespaces, need_root_and_tools

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]

# run inside the namespace: conntrack on (an nft rule that looks at it), UDP datagrams over lo, then forget_udp
SCRIPT = r"""
import json, socket, subprocess, sys
sys.path.insert(0, sys.argv[1])
from pyroute2 import Conntrack
from runtime.network.conntrack import forget_udp

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["nft", "-f", "-"], check=True, text=True, input=(
    "add table inet t\nadd chain inet t out { type filter hook output priority 0; }\n"
    "add rule inet t out ct state new counter\n"))
for ip in ("127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.8"):
    subprocess.run(["ip", "addr", "add", f"{ip}/32", "dev", "lo"], check=True)


def send(src, dst, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((src, 0))
    sock.sendto(b"x", (dst, port))
    sock.close()


def flows():
    with Conntrack() as ct:
        return sorted(f"{e.tuple_orig.proto} {e.tuple_orig.saddr}>{e.tuple_orig.daddr}:{e.tuple_orig.dport}"
                      for e in ct.dump_entries())


send("127.0.0.5", "127.0.0.6", 4001)   # from a pod address
send("127.0.0.7", "127.0.0.5", 4002)   # to it (its reply comes from it)
send("127.0.0.7", "127.0.0.8", 4003)   # to a UDP hostPort
send("127.0.0.7", "127.0.0.8", 4004)   # none of those
server = socket.create_server(("127.0.0.6", 4005))  # TCP: left alone
client = socket.create_connection(("127.0.0.6", 4005), source_address=("127.0.0.5", 0))
before = flows()
nothing = forget_udp(["127.0.0.9"], [4999])
middle = flows()
forgotten = forget_udp(["127.0.0.5"], [4003])
print(json.dumps({"before": before, "nothing": nothing, "middle": middle, "forgotten": forgotten,
                  "after": flows()}))
"""


def test_forget_udp_takes_the_entries_of_the_addresses_and_ports_only(tmp_path: Path) -> None:
    need_root_and_tools("nft")
    script = tmp_path / "ct.py"
    script.write_text(SCRIPT)
    with namespaces() as make:
        ns = make()
        done = ns.run(sys.executable, str(script), str(REPO), timeout=60)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    udp = ["17 127.0.0.5>127.0.0.6:4001", "17 127.0.0.7>127.0.0.5:4002", "17 127.0.0.7>127.0.0.8:4003",
           "17 127.0.0.7>127.0.0.8:4004"]
    tcp = "6 127.0.0.5>127.0.0.6:4005"
    assert got["before"] == sorted([*udp, tcp])
    assert (got["nothing"], got["middle"]) == (0, got["before"])
    assert got["forgotten"] == 3
    assert got["after"] == sorted(["17 127.0.0.7>127.0.0.8:4004", tcp])
