"""Seccomp for a container: which profile the CRI asks for, and rendering a profile into the OCI `linux.seccomp`.

CRI traps: an unset `seccomp` message means Unconfined (unless the deprecated `seccomp_profile_path` says
otherwise), but a present, empty SecurityProfile has profile_type 0 = RuntimeDefault. The deprecated strings
`runtime/default`, `docker/default`, `unconfined` and `localhost/<absolute path>` are still honoured.
A privileged container never gets a filter.

Profiles (crisp's default and Localhost files) use the Docker/containerd profile format: `architectures` or an
`archMap`, and rules with `names` (or the old `name`), `action`, `errnoRet`, `args` and optional `includes` /
`excludes` on `caps` (the container's bounding set) and `arches` (the node's architecture); `minKernel` is
accepted and treated as satisfied. Rendering resolves those for one container and node and yields plain OCI.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cri import api as cri
from runtime.errors import InvalidArgument

_PROFILE_TYPE = cri.SecurityProfile.ProfileType
ACTIONS = frozenset(
    {
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_LOG",
        "SCMP_ACT_NOTIFY",
    }
)
OPERATORS = frozenset(
    {
        "SCMP_CMP_NE",
        "SCMP_CMP_LT",
        "SCMP_CMP_LE",
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ",
    }
)
ARCHITECTURES = frozenset(
    {
        "SCMP_ARCH_X86",
        "SCMP_ARCH_X86_64",
        "SCMP_ARCH_X32",
        "SCMP_ARCH_ARM",
        "SCMP_ARCH_AARCH64",
        "SCMP_ARCH_MIPS",
        "SCMP_ARCH_MIPS64",
        "SCMP_ARCH_MIPS64N32",
        "SCMP_ARCH_MIPSEL",
        "SCMP_ARCH_MIPSEL64",
        "SCMP_ARCH_MIPSEL64N32",
        "SCMP_ARCH_PPC",
        "SCMP_ARCH_PPC64",
        "SCMP_ARCH_PPC64LE",
        "SCMP_ARCH_S390",
        "SCMP_ARCH_S390X",
        "SCMP_ARCH_PARISC",
        "SCMP_ARCH_PARISC64",
        "SCMP_ARCH_RISCV64",
        "SCMP_ARCH_LOONGARCH64",
    }
)
FLAGS = frozenset({"SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                   "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"})

# uname -m -> (libseccomp's name for the native architecture, the names a profile's `arches` may use for it)
_NODE_ARCHES: dict[str, tuple[str, frozenset[str]]] = {
    "x86_64": ("SCMP_ARCH_X86_64", frozenset({"x86_64", "amd64"})),
    "i386": ("SCMP_ARCH_X86", frozenset({"i386", "i686", "386", "x86"})),
    "i686": ("SCMP_ARCH_X86", frozenset({"i386", "i686", "386", "x86"})),
    "aarch64": ("SCMP_ARCH_AARCH64", frozenset({"aarch64", "arm64"})),
    "armv7l": ("SCMP_ARCH_ARM", frozenset({"arm", "armv7l"})),
    "ppc64le": ("SCMP_ARCH_PPC64LE", frozenset({"ppc64le"})),
    "s390x": ("SCMP_ARCH_S390X", frozenset({"s390x"})),
    "riscv64": ("SCMP_ARCH_RISCV64", frozenset({"riscv64"})),
    "loongarch64": ("SCMP_ARCH_LOONGARCH64", frozenset({"loongarch64", "loong64"})),
    "mips64": ("SCMP_ARCH_MIPS64", frozenset({"mips64"})),
}


@dataclass(frozen=True)
class SeccompRequest:
    """What the container asked for: kind is `unconfined`, `runtime_default` or `localhost` (with its path)."""

    kind: str
    path: str = ""


_UNCONFINED = SeccompRequest("unconfined")
_RUNTIME_DEFAULT = SeccompRequest("runtime_default")
_LOCALHOST_PREFIX = "localhost/"


def _from_profile_path(value: str) -> SeccompRequest:
    if value in ("", "unconfined"):
        return _UNCONFINED
    if value in ("runtime/default", "docker/default"):
        return _RUNTIME_DEFAULT
    if value.startswith(_LOCALHOST_PREFIX):
        return _localhost(value[len(_LOCALHOST_PREFIX) :])
    raise InvalidArgument(f"seccomp_profile_path {value!r} is not runtime/default, unconfined or localhost/<path>")


def _localhost(path: str) -> SeccompRequest:
    if not path.startswith("/"):
        raise InvalidArgument(f"a Localhost seccomp profile must be an absolute path, got {path!r}")
    return SeccompRequest("localhost", path)


def requested_seccomp(sc: cri.LinuxContainerSecurityContext) -> SeccompRequest:
    """The seccomp profile a container's security context asks for (ignoring privileged)."""
    if not sc.HasField("seccomp"):
        return _from_profile_path(sc.seccomp_profile_path)
    profile = sc.seccomp
    if profile.profile_type == _PROFILE_TYPE.Localhost:
        ref = profile.localhost_ref
        if not ref:
            raise InvalidArgument("seccomp profile type Localhost needs a localhost_ref")
        if ref.startswith(_LOCALHOST_PREFIX):
            ref = ref[len(_LOCALHOST_PREFIX) :]
        return _localhost(ref)
    if profile.localhost_ref:
        raise InvalidArgument("seccomp localhost_ref may only be set with profile type Localhost")
    if profile.profile_type == _PROFILE_TYPE.Unconfined:
        return _UNCONFINED
    if profile.profile_type == _PROFILE_TYPE.RuntimeDefault:
        return _RUNTIME_DEFAULT
    raise InvalidArgument(f"unknown seccomp profile type {profile.profile_type}")


# ---------------------------------------------------------------------------------------------- rendering


def parse_profile(data: bytes, source: str) -> dict[str, Any]:
    try:
        profile = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"seccomp profile {source} is not valid JSON: {exc}") from None
    if not isinstance(profile, dict):
        raise InvalidArgument(f"seccomp profile {source} must be a JSON object")
    return profile


def _strings(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{what} must be a list of strings")
    return list(value)


def _uint(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 2**64:
        raise InvalidArgument(f"{what} must be an unsigned integer, got {value!r}")
    return value


def _applies(rule: Mapping[str, Any], arch_names: frozenset[str], caps: Collection[str], where: str) -> bool:
    for key, must in (("includes", True), ("excludes", False)):
        cond = rule.get(key) or {}
        if not isinstance(cond, dict):
            raise InvalidArgument(f"{where}.{key} must be an object")
        arches = _strings(cond.get("arches"), f"{where}.{key}.arches")
        wanted = _strings(cond.get("caps"), f"{where}.{key}.caps")
        if must:
            if arches and not arch_names & set(arches):
                return False
            if wanted and not all(c in caps for c in wanted):
                return False
        else:
            if arches and arch_names & set(arches):
                return False
            if wanted and any(c in caps for c in wanted):
                return False
    return True


def _render_arg(arg: object, where: str) -> dict[str, Any]:
    if not isinstance(arg, dict):
        raise InvalidArgument(f"{where} must be an object")
    op = arg.get("op")
    if op not in OPERATORS:
        raise InvalidArgument(f"{where}.op {op!r} is not a seccomp comparison operator")
    out: dict[str, Any] = {"index": _uint(arg.get("index"), f"{where}.index"), "value": 0, "op": op}
    out["value"] = _uint(arg.get("value", 0), f"{where}.value")
    if arg.get("valueTwo"):
        out["valueTwo"] = _uint(arg["valueTwo"], f"{where}.valueTwo")
    if out["index"] > 5:
        raise InvalidArgument(f"{where}.index must be 0..5")
    return out


def _architectures(profile: Mapping[str, Any], native: str, source: str) -> list[str]:
    arch_map = profile.get("archMap")
    plain = _strings(profile.get("architectures"), f"seccomp profile {source}: architectures")
    if arch_map and plain:
        raise InvalidArgument(f"seccomp profile {source} has both architectures and archMap")
    if arch_map:
        if not isinstance(arch_map, list):
            raise InvalidArgument(f"seccomp profile {source}: archMap must be a list")
        plain = []
        for entry in arch_map:
            if not isinstance(entry, dict):
                raise InvalidArgument(f"seccomp profile {source}: archMap entries must be objects")
            if entry.get("architecture") == native:
                plain = [native, *_strings(entry.get("subArchitectures"), f"seccomp profile {source}: archMap")]
    for arch in plain:
        if arch not in ARCHITECTURES:
            raise InvalidArgument(f"seccomp profile {source}: unknown architecture {arch!r}")
    return list(dict.fromkeys(plain))


def render_profile(
    profile: Mapping[str, Any], *, arch: str, capabilities: Collection[str], source: str
) -> dict[str, Any]:
    """A profile (crisp's default or a Localhost file) as the OCI `linux.seccomp` of one container on one node."""
    native, arch_names = _NODE_ARCHES.get(arch, ("", frozenset({arch})))
    action = profile.get("defaultAction")
    if action not in ACTIONS:
        raise InvalidArgument(f"seccomp profile {source}: defaultAction {action!r} is not a seccomp action")
    out: dict[str, Any] = {"defaultAction": action}
    if profile.get("defaultErrnoRet") is not None:
        out["defaultErrnoRet"] = _uint(profile["defaultErrnoRet"], f"seccomp profile {source}: defaultErrnoRet")
    architectures = _architectures(profile, native, source)
    if architectures:
        out["architectures"] = architectures
    flags = _strings(profile.get("flags"), f"seccomp profile {source}: flags")
    for flag in flags:
        if flag not in FLAGS:
            raise InvalidArgument(f"seccomp profile {source}: unknown flag {flag!r}")
    if flags:
        out["flags"] = flags
    if profile.get("listenerPath"):
        out["listenerPath"] = str(profile["listenerPath"])
        if profile.get("listenerMetadata"):
            out["listenerMetadata"] = str(profile["listenerMetadata"])
    rules = profile.get("syscalls") or []
    if not isinstance(rules, list):
        raise InvalidArgument(f"seccomp profile {source}: syscalls must be a list")
    syscalls = []
    for i, rule in enumerate(rules):
        where = f"seccomp profile {source}: syscalls[{i}]"
        if not isinstance(rule, dict):
            raise InvalidArgument(f"{where} must be an object")
        if not _applies(rule, arch_names, capabilities, where):
            continue
        names = _strings(rule.get("names"), f"{where}.names")
        if rule.get("name"):
            names.append(str(rule["name"]))
        if not names:
            raise InvalidArgument(f"{where} names no syscall")
        if rule.get("action") not in ACTIONS:
            raise InvalidArgument(f"{where}.action {rule.get('action')!r} is not a seccomp action")
        item: dict[str, Any] = {"names": names, "action": rule["action"]}
        if rule.get("errnoRet") is not None:
            item["errnoRet"] = _uint(rule["errnoRet"], f"{where}.errnoRet")
        args = rule.get("args") or []
        if not isinstance(args, list):
            raise InvalidArgument(f"{where}.args must be a list")
        if args:
            item["args"] = [_render_arg(a, f"{where}.args[{j}]") for j, a in enumerate(args)]
        syscalls.append(item)
    if syscalls:
        out["syscalls"] = syscalls
    return out
