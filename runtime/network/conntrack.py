"""Forgetting UDP conntrack entries over ctnetlink, with the standard library (the network helper's teardown).

One dump of the whole table (every family) finds the entries of all the pods of a teardown: walking the table is
the kernel's cost (~10 ms with the 262144 buckets of a large host), and a filtered dump still walks all of it, so
one dump per teardown instead of two per address. Each entry's attributes are read with `struct` (pyroute2's
parser costs ~0.7 ms an entry), and a matching entry is deleted by sending its own original tuple back.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Collection, Iterator

NETLINK_NETFILTER = 12
_CT_NEW = 1 << 8  # NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_NEW: what a dump's entries come as
_CT_GET = (1 << 8) | 1  # IPCTNL_MSG_CT_GET
_CT_DELETE = (1 << 8) | 2  # IPCTNL_MSG_CT_DELETE
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_DUMP = 0x1, 0x4, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_NLA_F_NESTED = 0x8000
# linux/netfilter/nfnetlink_conntrack.h
_CTA_TUPLE_ORIG, _CTA_TUPLE_REPLY, _CTA_ZONE, _CTA_FILTER = 1, 2, 18, 25
_CTA_FILTER_ORIG_FLAGS = 1
_CTA_FILTER_FLAG_PROTO_NUM = 1 << 3
_CTA_TUPLE_IP, _CTA_TUPLE_PROTO = 1, 2
_CTA_IP_V4_SRC, _CTA_IP_V6_SRC = 1, 3
_CTA_PROTO_NUM, _CTA_PROTO_DST_PORT = 1, 3
_HEADER = struct.Struct("=IHHII")  # nlmsghdr
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id
_NLA = struct.Struct("=HH")


def _attrs(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    end = len(data) if end is None else end
    while start + 4 <= end:
        length, kind = _NLA.unpack_from(data, start)
        if length < 4:
            return
        yield kind & _NLA_TYPE_MASK, data[start + 4:start + length]
        start += (length + 3) & ~3


def _tuple(raw: bytes) -> tuple[bytes, int, int]:
    """(source address, packed; protocol; destination port) of a CTA_TUPLE_* attribute."""
    src, proto, dport = b"", 0, 0
    for kind, value in _attrs(raw):
        if kind == _CTA_TUPLE_IP:
            for ip_kind, ip in _attrs(value):
                if ip_kind in (_CTA_IP_V4_SRC, _CTA_IP_V6_SRC):
                    src = ip
        elif kind == _CTA_TUPLE_PROTO:
            for proto_kind, field in _attrs(value):
                if proto_kind == _CTA_PROTO_NUM:
                    proto = field[0]
                elif proto_kind == _CTA_PROTO_DST_PORT:
                    dport = int.from_bytes(field[:2], "big")
    return src, proto, dport


def _nla(kind: int, payload: bytes) -> bytes:
    data = _NLA.pack(4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


class _Socket:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.seq = 0

    def send(self, kind: int, flags: int, family: int, payload: bytes = b"") -> int:
        self.seq += 1
        body = _NFGEN.pack(family, 0, 0) + payload
        self.sock.send(_HEADER.pack(_HEADER.size + len(body), kind, flags, self.seq, 0) + body)
        return self.seq

    def messages(self) -> Iterator[tuple[int, int, bytes]]:
        """(type, seq, message) of what the kernel sends, until a dump's end."""
        while True:
            data = self.sock.recv(1 << 20)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    return
                yield kind, seq, data[offset:offset + length]
                if kind == _NLMSG_DONE:
                    return
                offset += (length + 3) & ~3

    def close(self) -> None:
        self.sock.close()


def _error_code(message: bytes) -> int:
    code: int = -struct.unpack_from("=i", message, _HEADER.size)[0]
    return code


def forget_udp(pod_ips: Collection[str], host_ports: Collection[int]) -> int:
    """Delete the UDP entries from or to any of `pod_ips` (the original or the reply direction's source) and those
    to any of `host_ports`; returns how many went. OSError when the kernel refuses the dump (no
    nf_conntrack_netlink, say)."""
    ips = {ipaddress.ip_address(ip).packed for ip in pod_ips}
    ports = set(host_ports)
    if not ips and not ports:
        return 0
    nl = _Socket()
    try:
        doomed: list[tuple[int, bytes]] = []  # (family, the attributes naming the entry)
        families = {socket.AF_INET if len(ip) == 4 else socket.AF_INET6 for ip in ips}
        if ports:
            families |= {socket.AF_INET, socket.AF_INET6}
        for family in sorted(families):
            doomed += _find(nl, family, ips, ports)
        return _delete(nl, doomed)
    finally:
        nl.close()


def _find(nl: _Socket, family: int, ips: set[bytes], ports: set[int]) -> list[tuple[int, bytes]]:
    """The entries of `family` to forget: (family, the attributes naming the entry)."""
    # the kernel sends UDP entries only (a filter since Linux 5.8, of one family at a time; it still walks the
    # whole table)
    udp_only = (_nla(_CTA_TUPLE_ORIG | _NLA_F_NESTED, _nla(_CTA_TUPLE_PROTO | _NLA_F_NESTED, _nla(
        _CTA_PROTO_NUM, bytes([socket.IPPROTO_UDP])))) + _nla(_CTA_FILTER | _NLA_F_NESTED, _nla(
            _CTA_FILTER_ORIG_FLAGS, struct.pack("=I", _CTA_FILTER_FLAG_PROTO_NUM))))
    nl.send(_CT_GET, _NLM_F_REQUEST | _NLM_F_DUMP, family, udp_only)
    found: list[tuple[int, bytes]] = []
    for kind, _seq, message in nl.messages():
        if kind == _NLMSG_ERROR and _error_code(message):
            code = _error_code(message)
            raise OSError(code, f"conntrack dump: {os.strerror(code)}")
        if kind != _CT_NEW:
            continue
        orig = reply = zone = b""
        for attr, value in _attrs(message, _HEADER.size + _NFGEN.size):
            if attr == _CTA_TUPLE_ORIG:
                orig = value
            elif attr == _CTA_TUPLE_REPLY:
                reply = value
            elif attr == _CTA_ZONE:
                zone = value
        src, proto, dport = _tuple(orig)
        if proto != socket.IPPROTO_UDP:
            continue
        if src in ips or dport in ports or _tuple(reply)[0] in ips:
            naming = _nla(_CTA_TUPLE_ORIG | _NLA_F_NESTED, orig) + (_nla(_CTA_ZONE, zone) if zone else b"")
            found.append((family, naming))
    return found


def _delete(nl: _Socket, doomed: list[tuple[int, bytes]]) -> int:
    deleted = 0
    for family, naming in doomed:
        seq = nl.send(_CT_DELETE, _NLM_F_REQUEST | _NLM_F_ACK, family, naming)
        for kind, got, message in nl.messages():
            if kind == _NLMSG_ERROR and got == seq:
                code = _error_code(message)
                if code == 0:
                    deleted += 1
                elif code != errno.ENOENT:  # gone already (expired, or found twice)
                    raise OSError(code, f"conntrack delete: {os.strerror(code)}")
                break
    return deleted
