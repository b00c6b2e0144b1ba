"""libseccomp through ctypes: the seccomp filters the built-in executor loads (runtime/executor/seccomp.py).

libseccomp is opened on first use; every call raises OSError with the real errno and the call's name.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Sequence

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_KILL_THREAD = 0x00000000
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_NOTIFY = 0x7FC00000
SCMP_ACT_LOG = 0x7FFC0000
SCMP_ACT_ALLOW = 0x7FFF0000


def scmp_act_errno(errno_value: int) -> int:
    return 0x00050000 | (errno_value & 0xFFFF)


def scmp_act_trace(msg: int) -> int:
    return 0x7FF00000 | (msg & 0xFFFF)


# enum scmp_filter_attr
SCMP_FLTATR_ACT_DEFAULT = 1
SCMP_FLTATR_ACT_BADARCH = 2
SCMP_FLTATR_CTL_NNP = 3
SCMP_FLTATR_CTL_TSYNC = 4
SCMP_FLTATR_CTL_LOG = 6
SCMP_FLTATR_CTL_SSB = 7

# enum scmp_compare
SCMP_CMP = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
            "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}

NR_SCMP_ERROR = -1


class ScmpArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def preload() -> None:
    _libseccomp()


@functools.cache
def _libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(ScmpArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    return lib


def _check_scmp(result: int, call: str) -> None:
    # libseccomp returns -errno
    if result < 0:
        raise OSError(-result, f"{call}: {os.strerror(-result)}")


class SeccompFilter:
    """A libseccomp filter context: build it with rules, `load()` it into the calling thread, `release()` it."""

    def __init__(self, default_action: int) -> None:
        self._lib = _libseccomp()
        ctx = self._lib.seccomp_init(ctypes.c_uint32(default_action))
        if not ctx:
            raise OSError(22, f"seccomp_init: invalid default action {default_action:#x}")
        self._ctx: int | None = ctx

    def _handle(self) -> int:
        if self._ctx is None:
            raise ValueError("seccomp filter already released")
        return self._ctx

    def add_arch(self, arch_name: str) -> None:
        token = self._lib.seccomp_arch_resolve_name(arch_name.encode())
        if token == 0:
            raise OSError(22, f"seccomp: unknown architecture {arch_name!r}")
        result = self._lib.seccomp_arch_add(self._handle(), token)
        if result != -17:  # EEXIST: the native architecture is always there
            _check_scmp(result, f"seccomp_arch_add({arch_name})")

    def set_attr(self, attr: int, value: int) -> None:
        _check_scmp(self._lib.seccomp_attr_set(self._handle(), attr, value), f"seccomp_attr_set({attr})")

    def add_rule(self, action: int, syscall_nr: int, conditions: Sequence[tuple[int, int, int, int]]) -> None:
        """conditions: (arg index, SCMP_CMP_* value, datum_a, datum_b)."""
        array = (ScmpArgCmp * max(len(conditions), 1))(*(ScmpArgCmp(*c) for c in conditions))
        result = self._lib.seccomp_rule_add_array(self._handle(), ctypes.c_uint32(action), syscall_nr,
                                                  len(conditions), array)
        _check_scmp(result, f"seccomp_rule_add(syscall {syscall_nr})")

    def load(self) -> None:
        _check_scmp(self._lib.seccomp_load(self._handle()), "seccomp_load")

    def release(self) -> None:
        if self._ctx is not None:
            self._lib.seccomp_release(self._ctx)
            self._ctx = None


def seccomp_syscall_number(name: str) -> int:
    """The native syscall number for a name, or NR_SCMP_ERROR when libseccomp does not know it."""
    return int(_libseccomp().seccomp_syscall_resolve_name(name.encode()))
