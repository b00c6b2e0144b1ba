"""Device rules and the eBPF program built from them. The program is run here by a small interpreter of the few
instructions the builder emits and checked against the rules' reference semantics (`devices.decide`); the kernel
runs the same programs in tests/integration/cgroups/test_devices.py."""

from __future__ import annotations

import itertools
import random
import struct

import pytest

from runtime import errors
from runtime.cgroups.devices import (
    ACC_MKNOD,
    ACC_READ,
    ACC_WRITE,
    DEFAULT_RULES,
    DEV_BLOCK,
    DEV_CHAR,
    DeviceRule,
    decide,
    rules_from_oci,
    with_default_rules,
)
from runtime.cgroups.ebpf import build_program

_MASK64 = (1 << 64) - 1
_ACCESS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}


def execute(code: bytes, dev_type: str, major: int, minor: int, access: str) -> int:
    """Run the program on a bpf_cgroup_dev_ctx; any opcode build_program should not emit fails the test."""
    acc = sum(_ACCESS[c] for c in access)
    ctx = struct.pack("<III", (acc << 16) | {"c": DEV_CHAR, "b": DEV_BLOCK}[dev_type], major, minor)
    regs = [0] * 11
    ctx_in_r1 = True  # R1 points at the context until the program writes R1
    pc = 0
    for _ in range(100_000):
        op, regbyte, off, imm = struct.unpack_from("<BBhi", code, pc * 8)
        dst, src = regbyte & 0xF, regbyte >> 4
        pc += 1
        if op == 0x61:  # ldxw dst, [src + off]
            assert src == 1 and ctx_in_r1 and off in (0, 4, 8), "loads only from the context"
            regs[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif op == 0x54:  # and32 dst, imm
            regs[dst] = regs[dst] & imm & 0xFFFFFFFF
        elif op == 0x74:  # rsh32 dst, imm
            regs[dst] = (regs[dst] & 0xFFFFFFFF) >> imm
        elif op == 0xB7:  # mov64 dst, imm
            regs[dst] = imm & _MASK64
        elif op == 0xBF:  # mov64 dst, src
            regs[dst] = regs[src]
        elif op == 0x15:  # jeq dst, imm, +off
            pc += off if regs[dst] == imm & _MASK64 else 0
        elif op == 0x55:  # jne dst, imm, +off
            pc += off if regs[dst] != imm & _MASK64 else 0
        elif op == 0x05:  # ja +off
            pc += off
        elif op == 0x95:  # exit
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")
        assert 0 <= pc < len(code) // 8, "jump out of the program"
        if dst == 1 and op not in (0x15, 0x55, 0x05):
            ctx_in_r1 = False
    raise AssertionError("runaway program")


def _allowed(rules: list[DeviceRule], dev_type: str, major: int, minor: int, access: str) -> bool:
    verdict = execute(build_program(rules), dev_type, major, minor, access)
    assert verdict in (0, 1)
    assert bool(verdict) == decide(rules, dev_type, major, minor, access)
    return bool(verdict)


UNPRIVILEGED = with_default_rules(rules_from_oci([{"allow": False, "access": "rwm"}]))


@pytest.mark.parametrize(
    ("dev", "access", "allowed"),
    [
        (("c", 1, 3), "rw", True),  # null
        (("c", 1, 5), "r", True),  # zero
        (("c", 1, 7), "rw", True),  # full
        (("c", 1, 8), "r", True),  # random
        (("c", 1, 9), "r", True),  # urandom
        (("c", 5, 0), "rw", True),  # tty
        (("c", 5, 2), "rw", True),  # ptmx
        (("c", 136, 0), "rw", True),  # pts/0
        (("c", 136, 4095), "rw", True),
        (("c", 1, 11), "r", False),  # kmsg
        (("c", 1, 1), "r", False),  # mem
        (("c", 5, 1), "rw", False),  # console: not on runc's list
        (("c", 10, 200), "rw", False),  # tun: not on the list
        (("b", 8, 0), "r", False),  # a disk
        (("c", 240, 7), "m", True),  # mknod of any char device
        (("b", 8, 0), "m", True),  # and of any block device
        (("c", 1, 3), "m", True),
        (("c", 1, 11), "mr", False),  # mknod allowed, read not: both asked, so denied
    ],
)
def test_unprivileged_defaults(dev: tuple[str, int, int], access: str, allowed: bool) -> None:
    assert _allowed(UNPRIVILEGED, *dev, access) is allowed


def test_no_rules_denies_everything() -> None:
    assert not _allowed([], "c", 1, 3, "r")
    assert not _allowed([], "b", 8, 0, "m")


def test_allow_all_and_its_exceptions() -> None:
    rules = rules_from_oci([
        {"allow": True, "access": "rwm"},
        {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "w"},
        {"allow": False, "type": "b", "access": "r"},
    ])
    assert _allowed(rules, "c", 1, 3, "r")
    assert not _allowed(rules, "c", 1, 3, "w")
    assert not _allowed(rules, "c", 1, 3, "rw")
    assert _allowed(rules, "c", 1, 5, "rw")
    assert not _allowed(rules, "b", 8, 0, "r")
    assert _allowed(rules, "b", 8, 0, "w")


def test_later_rules_win_per_access_bit() -> None:
    rules = [
        DeviceRule(allow=True, type="c", major=1, minor=3, access="r"),
        DeviceRule(allow=True, type="c", major=1, minor=3, access="w"),
    ]
    assert _allowed(rules, "c", 1, 3, "rw")  # r from the first rule, w from the second
    rules.append(DeviceRule(allow=False, type="c", major=1, access="rwm"))
    assert not _allowed(rules, "c", 1, 3, "r")
    rules.append(DeviceRule(allow=True, type="c", major=1, minor=3, access="r"))
    assert _allowed(rules, "c", 1, 3, "r")
    assert not _allowed(rules, "c", 1, 3, "rw")


def test_a_full_wildcard_resets_what_came_before() -> None:
    rules = [DeviceRule(allow=True, type="c", major=1, minor=11), DeviceRule(allow=False)]
    assert not _allowed(rules, "c", 1, 11, "r")
    assert build_program(rules) == build_program([DeviceRule(allow=False)])  # the first rule is gone


def test_random_rule_sets_agree_with_the_reference() -> None:
    rng = random.Random(4)  # fixed seed: the same cases every run
    majors, minors = [None, 1, 5, 136], [None, 0, 3, 7]
    accesses = ["r", "w", "m", "rw", "rwm", "wm"]
    for _ in range(300):
        rules = [
            DeviceRule(
                allow=rng.random() < 0.6,
                type=rng.choice("acb"),
                major=rng.choice(majors),
                minor=rng.choice(minors),
                access=rng.choice(accesses),
            )
            for _ in range(rng.randrange(0, 7))
        ]
        code = build_program(rules)
        for dev_type, major, minor, access in itertools.product("cb", (1, 5, 136), (0, 3, 7), accesses):
            assert bool(execute(code, dev_type, major, minor, access)) == decide(
                rules, dev_type, major, minor, access
            ), (rules, dev_type, major, minor, access)


def test_default_rules_are_runcs() -> None:
    assert [str(r) for r in DEFAULT_RULES] == [
        "allow c *:* m",
        "allow b *:* m",
        "allow c 1:3 rwm",
        "allow c 1:8 rwm",
        "allow c 1:7 rwm",
        "allow c 5:0 rwm",
        "allow c 1:5 rwm",
        "allow c 1:9 rwm",
        "allow c 136:* rwm",
        "allow c 5:2 rwm",
    ]


def test_rules_from_oci() -> None:
    assert rules_from_oci([
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 10, "minor": -1, "access": "rw"},
        {"allow": True, "type": "b", "major": 8, "minor": 0},
    ]) == [
        DeviceRule(allow=False),
        DeviceRule(allow=True, type="c", major=10, minor=None, access="rw"),
        DeviceRule(allow=True, type="b", major=8, minor=0, access="rwm"),
    ]


@pytest.mark.parametrize(
    "rule",
    [
        {"access": "rwm"},
        {"allow": "yes"},
        {"allow": True, "type": "x"},
        {"allow": True, "access": "rwx"},
        {"allow": True, "major": "1"},
        {"allow": True, "major": 1 << 12},
        {"allow": True, "minor": 1 << 20},
    ],
)
def test_bad_oci_rules_are_invalid_argument(rule: dict[str, object]) -> None:
    with pytest.raises(errors.InvalidArgument):
        rules_from_oci([rule])
