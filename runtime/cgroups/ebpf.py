"""The cgroup v2 device filter: a BPF_PROG_TYPE_CGROUP_DEVICE program assembled here and attached with bpf(2).

The kernel runs the program on every device open and mknod in the cgroup (and below), with a
`struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }` in R1, where access_type is
`(access bits << 16) | device type`. Returning 0 makes the access fail with EPERM.

Program shape (see devices.py for the semantics): load type, access, major and minor into R2..R5; then for each
access bit (mknod, read, write) that the access asks for, walk the rules last to first; the first rule that covers
the device and the bit allows it (go on with the next bit) or denies it (return 0). A bit no rule covers gets the
default. All bits allowed: return 1.

Attaching follows runc: the new program is attached with BPF_F_ALLOW_MULTI first and the programs that were there
before are detached afterwards, so the cgroup is never without a filter while it is being replaced (during the
swap both run and both must allow).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from runtime import errors
from runtime.cgroups.devices import ACC_MKNOD, ACC_READ, ACC_WRITE, DEV_BLOCK, DEV_CHAR, DeviceRule, effective_rules
from runtime.linux.syscalls import bpf

log = logging.getLogger(__name__)

BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
LICENSE = "Apache-2.0"

# opcodes (include/uapi/linux/bpf_common.h, bpf.h)
_LDX_MEM_W = 0x61  # dst = *(u32 *)(src + off)
_ALU32_AND_K = 0x54  # dst = (u32)(dst & imm)
_ALU32_RSH_K = 0x74  # dst = (u32)(dst >> imm)
_ALU64_MOV_K = 0xB7  # dst = imm
_ALU64_MOV_X = 0xBF  # dst = src
_JMP_JEQ_K = 0x15  # if dst == imm goto +off
_JMP_JNE_K = 0x55  # if dst != imm goto +off
_JMP_JA = 0x05  # goto +off
_JMP_EXIT = 0x95

R0, R1, R2, R3, R4, R5 = range(6)
_TYPE, _ACCESS, _MAJOR, _MINOR = R2, R3, R4, R5
_TYPES = {"c": DEV_CHAR, "b": DEV_BLOCK}


@dataclass(frozen=True)
class _Insn:
    op: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    label: str | None = None  # a jump target, resolved into off by _encode


class _Program:
    """A tiny assembler: instructions with symbolic jump targets."""

    def __init__(self) -> None:
        self.insns: list[_Insn] = []
        self.labels: dict[str, int] = {}
        self._next_label = 0

    def new_label(self) -> str:
        self._next_label += 1
        return f"L{self._next_label}"

    def mark(self, label: str) -> None:
        self.labels[label] = len(self.insns)

    def emit(self, op: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0, label: str | None = None) -> None:
        self.insns.append(_Insn(op, dst, src, off, imm, label))

    def ret(self, value: int) -> None:
        self.emit(_ALU64_MOV_K, R0, imm=value)
        self.emit(_JMP_EXIT)

    def encode(self) -> bytes:
        out = bytearray()
        for pc, insn in enumerate(self.insns):
            off = insn.off
            if insn.label is not None:
                off = self.labels[insn.label] - (pc + 1)
                if not 0 <= off < 1 << 15:
                    raise errors.InvalidArgument("device filter program too large")
            out += struct.pack("<BBhi", insn.op, (insn.src << 4) | insn.dst, off, insn.imm)
        return bytes(out)


def build_program(rules: Sequence[DeviceRule]) -> bytes:
    """The eBPF instructions (8 bytes each) that enforce `rules`."""
    default_allow, effective = effective_rules(rules)
    p = _Program()
    # R2 = device type (low 16 bits of access_type), R3 = access bits (high 16), R4 = major, R5 = minor
    p.emit(_LDX_MEM_W, _TYPE, R1, 0)
    p.emit(_ALU32_AND_K, _TYPE, imm=0xFFFF)
    p.emit(_LDX_MEM_W, _ACCESS, R1, 0)
    p.emit(_ALU32_RSH_K, _ACCESS, imm=16)
    p.emit(_LDX_MEM_W, _MAJOR, R1, 4)
    p.emit(_LDX_MEM_W, _MINOR, R1, 8)
    for bit in (ACC_MKNOD, ACC_READ, ACC_WRITE):
        bit_done = p.new_label()
        # skip this bit unless the access asks for it (R1 is free once the context is loaded)
        p.emit(_ALU64_MOV_X, R1, _ACCESS)
        p.emit(_ALU32_AND_K, R1, imm=bit)
        p.emit(_JMP_JEQ_K, R1, imm=0, label=bit_done)
        for rule in reversed(effective):
            if not rule.access_bits & bit:
                continue
            next_rule = p.new_label()
            if rule.type != "a":
                p.emit(_JMP_JNE_K, _TYPE, imm=_TYPES[rule.type], label=next_rule)
            if rule.major is not None:
                p.emit(_JMP_JNE_K, _MAJOR, imm=rule.major, label=next_rule)
            if rule.minor is not None:
                p.emit(_JMP_JNE_K, _MINOR, imm=rule.minor, label=next_rule)
            if rule.allow:
                p.emit(_JMP_JA, label=bit_done)
            else:
                p.ret(0)
            p.mark(next_rule)
        if not default_allow:
            p.ret(0)
        p.mark(bit_done)
    p.ret(1)
    return p.encode()


def load_program(insns: bytes) -> int:
    """Load the program; a rejected program raises FailedPrecondition with the verifier's log."""
    try:
        fd, _ = bpf.bpf_prog_load(BPF_PROG_TYPE_CGROUP_DEVICE, insns, LICENSE, BPF_CGROUP_DEVICE)
        return fd
    except OSError:
        pass
    try:  # again, with the verifier log for the error message
        fd, _ = bpf.bpf_prog_load(BPF_PROG_TYPE_CGROUP_DEVICE, insns, LICENSE, BPF_CGROUP_DEVICE, 1 << 16)
        return fd
    except OSError as exc:
        raise errors.FailedPrecondition(f"cannot load the device filter (bpf): {exc.strerror}") from exc


def attached_programs(cgroup_fd: int) -> list[int]:
    """Ids of the device programs attached to the cgroup itself."""
    try:
        return bpf.bpf_prog_query(cgroup_fd, BPF_CGROUP_DEVICE)
    except OSError as exc:
        raise errors.FailedPrecondition(f"cannot query device filters (bpf): {exc.strerror}") from exc


def attach_device_filter(cgroup_dir: str, rules: Sequence[DeviceRule]) -> int:
    """Replace the device filter of the cgroup at `cgroup_dir` with one enforcing `rules`; returns the number of
    instructions."""
    insns = build_program(rules)
    cgroup_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        old_ids = attached_programs(cgroup_fd)
        prog_fd = load_program(insns)
        try:
            try:
                bpf.bpf_prog_attach(cgroup_fd, prog_fd, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)
            except OSError as exc:
                raise errors.FailedPrecondition(
                    f"cannot attach the device filter to {cgroup_dir}: {exc.strerror}"
                ) from exc
        finally:
            os.close(prog_fd)  # the attachment holds its own reference
        for prog_id in old_ids:
            _detach(cgroup_fd, prog_id, cgroup_dir)
    finally:
        os.close(cgroup_fd)
    return len(insns) // 8


def _detach(cgroup_fd: int, prog_id: int, cgroup_dir: str) -> None:
    try:
        old_fd = bpf.bpf_prog_get_fd_by_id(prog_id)
    except FileNotFoundError:
        return  # already gone
    except OSError as exc:
        raise errors.FailedPrecondition(f"cannot open old device filter {prog_id} of {cgroup_dir}: {exc}") from exc
    try:
        bpf.bpf_prog_detach(cgroup_fd, old_fd, BPF_CGROUP_DEVICE)
    except FileNotFoundError:
        pass  # detached meanwhile
    except OSError as exc:
        raise errors.FailedPrecondition(f"cannot detach old device filter {prog_id} of {cgroup_dir}: {exc}") from exc
    finally:
        os.close(old_fd)
