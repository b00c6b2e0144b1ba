"""bpf(2) through the raw syscall: loading, attaching and querying the cgroup v2 device filter
(runtime/cgroups/ebpf.py)."""

from __future__ import annotations

import ctypes
import struct

from runtime.linux.syscalls import _check, _raw_syscall

# bpf(2) commands used by the cgroup v2 device filter (runtime/cgroups/ebpf.py)
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
# union bpf_attr is larger than any layout used here; the kernel accepts a shorter, zero-padded attr
_BPF_ATTR_SIZE = 128


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char], call: str) -> int:
    return _check(_raw_syscall("bpf", ctypes.c_int(cmd), ctypes.byref(attr), ctypes.c_uint(_BPF_ATTR_SIZE)), call)


def bpf_prog_load(prog_type: int, insns: bytes, license: str, expected_attach_type: int = 0,
                  log_size: int = 0) -> tuple[int, str]:
    """BPF_PROG_LOAD: (program fd, verifier log). With log_size > 0 the verifier log is returned, and added to the
    OSError's message when the load fails."""
    if len(insns) % 8:
        raise ValueError("eBPF instructions are 8 bytes each")
    attr = ctypes.create_string_buffer(_BPF_ATTR_SIZE)
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(log_size) if log_size else None
    struct.pack_into("=IIQQ", attr, 0, prog_type, len(insns) // 8, ctypes.addressof(code), ctypes.addressof(lic))
    if log is not None:
        struct.pack_into("=IIQ", attr, 24, 1, log_size, ctypes.addressof(log))
    struct.pack_into("=I", attr, 68, expected_attach_type)
    try:
        fd = _bpf(BPF_PROG_LOAD, attr, "bpf(BPF_PROG_LOAD)")
    except OSError as exc:
        if log is not None and log.value:
            raise OSError(exc.errno, f"{exc.strerror}; verifier log: {log.value.decode(errors='replace')}") from None
        raise
    return fd, log.value.decode(errors="replace") if log is not None else ""


def bpf_prog_attach(target_fd: int, prog_fd: int, attach_type: int, flags: int, replace_fd: int = 0) -> None:
    """BPF_PROG_ATTACH: attach prog_fd to target_fd (a cgroup dir fd)."""
    attr = ctypes.create_string_buffer(_BPF_ATTR_SIZE)
    struct.pack_into("=IIIII", attr, 0, target_fd, prog_fd, attach_type, flags, replace_fd)
    _bpf(BPF_PROG_ATTACH, attr, "bpf(BPF_PROG_ATTACH)")


def bpf_prog_detach(target_fd: int, prog_fd: int, attach_type: int) -> None:
    """BPF_PROG_DETACH: detach one program (prog_fd) from target_fd."""
    attr = ctypes.create_string_buffer(_BPF_ATTR_SIZE)
    struct.pack_into("=III", attr, 0, target_fd, prog_fd, attach_type)
    _bpf(BPF_PROG_DETACH, attr, "bpf(BPF_PROG_DETACH)")


def bpf_prog_query(target_fd: int, attach_type: int, max_progs: int = 64) -> list[int]:
    """BPF_PROG_QUERY: the ids of the programs attached directly to target_fd for attach_type."""
    attr = ctypes.create_string_buffer(_BPF_ATTR_SIZE)
    ids = (ctypes.c_uint32 * max_progs)()
    struct.pack_into("=IIIIQI", attr, 0, target_fd, attach_type, 0, 0, ctypes.addressof(ids), max_progs)
    _bpf(BPF_PROG_QUERY, attr, "bpf(BPF_PROG_QUERY)")
    (count,) = struct.unpack_from("=I", attr, 24)
    return [int(ids[i]) for i in range(min(count, max_progs))]


def bpf_prog_get_fd_by_id(prog_id: int) -> int:
    """BPF_PROG_GET_FD_BY_ID: a new fd for the loaded program with that id."""
    attr = ctypes.create_string_buffer(_BPF_ATTR_SIZE)
    struct.pack_into("=I", attr, 0, prog_id)
    return _bpf(BPF_PROG_GET_FD_BY_ID, attr, "bpf(BPF_PROG_GET_FD_BY_ID)")
