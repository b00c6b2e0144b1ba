"""A compact schema of the OCI runtime spec (config.json, Linux parts), after runtime-spec 1.0.2's config-schema:
required fields, types, value ranges and enums. `check_spec(spec)` returns the list of problems ([] = valid)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Check = Callable[[Any, str, list[str]], None]

UINT32 = 2**32
UINT64 = 2**64
INT64 = 2**63


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(lo: int, hi: int) -> Check:
    def check(value: Any, where: str, errors: list[str]) -> None:
        if not _is_int(value) or not lo <= value < hi:
            errors.append(f"{where}: expected an integer in [{lo}, {hi}), got {value!r}")

    return check


uint32 = integer(0, UINT32)
uint64 = integer(0, UINT64)
int64 = integer(-INT64, INT64)
int32 = integer(-(2**31), 2**31)


def boolean(value: Any, where: str, errors: list[str]) -> None:
    if not isinstance(value, bool):
        errors.append(f"{where}: expected a boolean, got {value!r}")


def string(value: Any, where: str, errors: list[str]) -> None:
    if not isinstance(value, str):
        errors.append(f"{where}: expected a string, got {value!r}")


def abs_path(value: Any, where: str, errors: list[str]) -> None:
    if not isinstance(value, str) or not value.startswith("/"):
        errors.append(f"{where}: expected an absolute path, got {value!r}")


def pattern(regex: str) -> Check:
    compiled = re.compile(regex)

    def check(value: Any, where: str, errors: list[str]) -> None:
        if not isinstance(value, str) or not compiled.fullmatch(value):
            errors.append(f"{where}: {value!r} does not match {regex}")

    return check


def enum(*values: str) -> Check:
    def check(value: Any, where: str, errors: list[str]) -> None:
        if value not in values:
            errors.append(f"{where}: {value!r} is not one of {values}")

    return check


def array(item: Check, *, min_items: int = 0, unique: bool = False) -> Check:
    def check(value: Any, where: str, errors: list[str]) -> None:
        if not isinstance(value, list):
            errors.append(f"{where}: expected an array, got {value!r}")
            return
        if len(value) < min_items:
            errors.append(f"{where}: needs at least {min_items} item(s)")
        if unique and len({repr(v) for v in value}) != len(value):
            errors.append(f"{where}: items must be unique")
        for i, v in enumerate(value):
            item(v, f"{where}[{i}]", errors)

    return check


def string_map(value: Any, where: str, errors: list[str]) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        errors.append(f"{where}: expected an object of strings, got {value!r}")


def obj(required: dict[str, Check], optional: dict[str, Check] | None = None) -> Check:
    optional = optional or {}

    def check(value: Any, where: str, errors: list[str]) -> None:
        if not isinstance(value, dict):
            errors.append(f"{where}: expected an object, got {value!r}")
            return
        for key in required:
            if key not in value:
                errors.append(f"{where}: missing required {key!r}")
        for key, item in value.items():
            sub = required.get(key) or optional.get(key)
            if sub is None:
                errors.append(f"{where}: unknown field {key!r}")
            else:
                sub(item, f"{where}.{key}", errors)

    return check


CAPABILITY = pattern(r"CAP_[A-Z_]+")
SECCOMP_ACTION = enum(
    "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP", "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY",
)
SECCOMP_ARCH = pattern(r"SCMP_ARCH_[A-Z0-9_]+")
SECCOMP_OP = enum(
    "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"
)

_capabilities = obj({}, {k: array(CAPABILITY, unique=True)
                         for k in ("bounding", "effective", "inheritable", "permitted", "ambient")})
_process = obj(
    {"cwd": abs_path, "user": obj({"uid": uint32, "gid": uint32},
                                  {"umask": uint32, "additionalGids": array(uint32), "username": string})},
    {
        "terminal": boolean,
        "consoleSize": obj({"height": uint64, "width": uint64}),
        "args": array(string, min_items=1),
        "env": array(pattern(r"[^=]+=.*")),
        "capabilities": _capabilities,
        "rlimits": array(obj({"type": pattern(r"RLIMIT_[A-Z]+"), "hard": uint64, "soft": uint64})),
        "noNewPrivileges": boolean,
        "oomScoreAdj": integer(-1000, 1001),
        "apparmorProfile": string,
        "selinuxLabel": string,
    },
)
_mount = obj({"destination": abs_path}, {"source": string, "options": array(string), "type": string})
_namespace = obj({"type": enum("mount", "pid", "network", "uts", "ipc", "user", "cgroup")}, {"path": abs_path})
_device = obj(
    {"type": enum("c", "b", "u", "p"), "path": abs_path},
    {"major": int64, "minor": int64, "fileMode": uint32, "uid": uint32, "gid": uint32},
)
_device_rule = obj(
    {"allow": boolean},
    {"type": enum("a", "b", "c"), "major": int64, "minor": int64, "access": pattern(r"[rwm]{1,3}")},
)
_resources = obj(
    {},
    {
        "devices": array(_device_rule),
        "memory": obj({}, {"limit": int64, "reservation": int64, "swap": int64, "kernel": int64,
                           "kernelTCP": int64, "swappiness": uint64, "disableOOMKiller": boolean}),
        "cpu": obj({}, {"shares": uint64, "quota": int64, "period": uint64, "realtimeRuntime": int64,
                        "realtimePeriod": uint64, "cpus": string, "mems": string}),
        "pids": obj({"limit": int64}),
        "hugepageLimits": array(obj({"pageSize": pattern(r"[0-9]+[KMG]B"), "limit": uint64})),
        "unified": string_map,
    },
)
_seccomp = obj(
    {"defaultAction": SECCOMP_ACTION},
    {
        "defaultErrnoRet": uint32,
        "architectures": array(SECCOMP_ARCH, unique=True),
        "flags": array(string),
        "listenerPath": abs_path,
        "listenerMetadata": string,
        "syscalls": array(
            obj(
                {"names": array(string, min_items=1), "action": SECCOMP_ACTION},
                {"errnoRet": uint32, "args": array(obj({"index": integer(0, 6), "value": uint64, "op": SECCOMP_OP},
                                                       {"valueTwo": uint64}))},
            )
        ),
    },
)
_linux = obj(
    {},
    {
        "namespaces": array(_namespace),
        "devices": array(_device),
        "cgroupsPath": abs_path,
        "resources": _resources,
        "rootfsPropagation": enum("private", "shared", "slave", "unbindable", "rprivate", "rshared", "rslave",
                                  "runbindable"),
        "seccomp": _seccomp,
        "sysctl": string_map,
        "maskedPaths": array(abs_path),
        "readonlyPaths": array(abs_path),
        "mountLabel": string,
    },
)
SPEC = obj(
    {"ociVersion": pattern(r"1\.[0-9]+\.[0-9]+(-.*)?")},
    {
        "root": obj({"path": string}, {"readonly": boolean}),
        "process": _process,
        "hostname": string,
        "mounts": array(_mount),
        "annotations": string_map,
        "linux": _linux,
    },
)


def check_spec(spec: Any) -> list[str]:
    errors: list[str] = []
    SPEC(spec, "spec", errors)
    if not errors:
        types = [ns["type"] for ns in spec.get("linux", {}).get("namespaces", [])]
        if len(types) != len(set(types)):
            errors.append(f"spec.linux.namespaces: a namespace type appears twice: {types}")
        destinations = [m["destination"] for m in spec.get("mounts", [])]
        if len(destinations) != len(set(destinations)):
            errors.append(f"spec.mounts: a destination appears twice: {destinations}")
    return errors
