"""The parts of an OCI runtime spec (config.json) the executor applies, parsed into frozen dataclasses.

Parsing checks types and values once, so the setup code can trust them; a bad document is `InvalidArgument` with
the JSON path of the bad field. Features the executor does not implement (new user namespaces: it only joins a
pod's, personality, Intel RDT, time namespaces, per-mount id maps) are refused rather than ignored: a container
must never run with less isolation than its spec asks for.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.bundle import Idmap, Overlay, idmap_of, load_config, overlay_of, rootfs_path
from runtime.executor.hooks import Hooks, parse_hooks

NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "cgroup", "user", "time")
MAX_ID = 2**32 - 2


class SpecError(errors.InvalidArgument):
    """config.json (or an exec process.json) is not a spec the executor can apply."""


def _fail(where: str, message: str) -> SpecError:
    return SpecError(f"{where}: {message}")


def _obj(value: object, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(where, f"expected an object, got {type(value).__name__}")
    return value


def _list(value: object, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(where, f"expected an array, got {type(value).__name__}")
    return value


def _str(value: object, where: str, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise _fail(where, f"expected a string, got {type(value).__name__}")
    return value


def _strs(value: object, where: str) -> tuple[str, ...]:
    return tuple(_str(v, f"{where}[{i}]") for i, v in enumerate(_list(value, where)))


def _int(value: object, where: str, default: int = 0, lo: int | None = None, hi: int | None = None) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"expected an integer, got {type(value).__name__} {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _fail(where, f"{value} is out of range")
    return value


def _bool(value: object, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _fail(where, f"expected true or false, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class User:
    uid: int = 0
    gid: int = 0
    umask: int | None = None
    additional_gids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Capabilities:
    bounding: tuple[str, ...] = ()
    effective: tuple[str, ...] = ()
    permitted: tuple[str, ...] = ()
    inheritable: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rlimit:
    type: str
    soft: int
    hard: int


@dataclass(frozen=True)
class Process:
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    user: User = field(default_factory=User)
    terminal: bool = False
    capabilities: Capabilities | None = None
    no_new_privileges: bool = False
    rlimits: tuple[Rlimit, ...] = ()
    oom_score_adj: int | None = None
    # process.consoleSize (width, height): the terminal's size before the process starts
    console_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class Mount:
    destination: str
    type: str = ""
    source: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Namespace:
    type: str
    path: str = ""


@dataclass(frozen=True)
class Device:
    path: str
    type: str
    major: int
    minor: int
    file_mode: int | None = None
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class SeccompArg:
    index: int
    value: int
    value_two: int
    op: str


@dataclass(frozen=True)
class SeccompRule:
    names: tuple[str, ...]
    action: str
    errno_ret: int | None = None
    args: tuple[SeccompArg, ...] = ()


@dataclass(frozen=True)
class Seccomp:
    default_action: str
    default_errno_ret: int | None = None
    architectures: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    syscalls: tuple[SeccompRule, ...] = ()


@dataclass(frozen=True)
class Linux:
    namespaces: tuple[Namespace, ...] = ()
    cgroups_path: str = ""
    resources: Mapping[str, Any] = field(default_factory=dict)
    devices: tuple[Device, ...] = ()
    sysctl: Mapping[str, str] = field(default_factory=dict)
    seccomp: Seccomp | None = None
    rootfs_propagation: str = ""
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()

    def namespace(self, ns_type: str) -> Namespace | None:
        for ns in self.namespaces:
            if ns.type == ns_type:
                return ns
        return None


@dataclass(frozen=True)
class Spec:
    oci_version: str
    root_path: str
    root_readonly: bool
    process: Process
    hostname: str = ""
    domainname: str = ""
    mounts: tuple[Mount, ...] = ()
    linux: Linux = field(default_factory=Linux)
    annotations: Mapping[str, str] = field(default_factory=dict)
    overlay: Overlay | None = None
    idmap: Idmap | None = None
    hooks: Hooks = field(default_factory=Hooks)


# ---------------------------------------------------------------------------------------------- parsing


def _abs_path(value: object, where: str) -> str:
    path = _str(value, where)
    if not path.startswith("/"):
        raise _fail(where, f"{path!r} must be an absolute path")
    return posixpath.normpath(path)


def parse_user(data: object, where: str) -> User:
    d = _obj(data, where)
    if d.get("username"):
        raise _fail(f"{where}.username", "the executor takes numeric ids only (resolve the name to uid/gid)")
    umask = d.get("umask")
    return User(
        uid=_int(d.get("uid"), f"{where}.uid", lo=0, hi=MAX_ID),
        gid=_int(d.get("gid"), f"{where}.gid", lo=0, hi=MAX_ID),
        umask=None if umask is None else _int(umask, f"{where}.umask", lo=0, hi=0o777),
        additional_gids=tuple(_int(g, f"{where}.additionalGids[{i}]", lo=0, hi=MAX_ID)
                              for i, g in enumerate(_list(d.get("additionalGids"), f"{where}.additionalGids"))),
    )


def _rlimit_value(value: object, where: str) -> int:
    return _int(value, where, lo=0, hi=2**64 - 1)


def parse_process(data: object, where: str = "process") -> Process:
    d = _obj(data, where)
    args = _strs(d.get("args"), f"{where}.args")
    if not args or not args[0]:
        raise _fail(f"{where}.args", "the process needs at least one argument (the program to run)")
    cwd = _str(d.get("cwd"), f"{where}.cwd", "/")
    if not cwd.startswith("/"):
        raise _fail(f"{where}.cwd", f"{cwd!r} must be an absolute path")
    for key in ("apparmorProfile", "selinuxLabel"):
        if d.get(key):
            raise _fail(f"{where}.{key}", "not supported on this host (no AppArmor/SELinux)")
    caps = None
    if d.get("capabilities") is not None:
        c = _obj(d["capabilities"], f"{where}.capabilities")
        caps = Capabilities(**{
            name: _strs(c.get(name), f"{where}.capabilities.{name}")
            for name in ("bounding", "effective", "permitted", "inheritable", "ambient")
        })
    rlimits = []
    for i, item in enumerate(_list(d.get("rlimits"), f"{where}.rlimits")):
        r = _obj(item, f"{where}.rlimits[{i}]")
        rl = Rlimit(
            type=_str(r.get("type"), f"{where}.rlimits[{i}].type"),
            soft=_rlimit_value(r.get("soft"), f"{where}.rlimits[{i}].soft"),
            hard=_rlimit_value(r.get("hard"), f"{where}.rlimits[{i}].hard"),
        )
        if rl.soft > rl.hard:
            raise _fail(f"{where}.rlimits[{i}]", f"soft limit {rl.soft} is above the hard limit {rl.hard}")
        rlimits.append(rl)
    oom = d.get("oomScoreAdj")
    console_size = None
    if d.get("consoleSize") is not None:
        cs = _obj(d.get("consoleSize"), f"{where}.consoleSize")
        console_size = (_int(cs.get("width"), f"{where}.consoleSize.width", lo=0, hi=65535),
                        _int(cs.get("height"), f"{where}.consoleSize.height", lo=0, hi=65535))
    for i, e in enumerate(_strs(d.get("env"), f"{where}.env")):
        if "=" not in e:
            raise _fail(f"{where}.env[{i}]", f"{e!r} is not NAME=value")
    return Process(
        args=args,
        env=_strs(d.get("env"), f"{where}.env"),
        cwd=posixpath.normpath(cwd),
        user=parse_user(d.get("user"), f"{where}.user"),
        terminal=_bool(d.get("terminal"), f"{where}.terminal"),
        capabilities=caps,
        no_new_privileges=_bool(d.get("noNewPrivileges"), f"{where}.noNewPrivileges"),
        rlimits=tuple(rlimits),
        oom_score_adj=None if oom is None else _int(oom, f"{where}.oomScoreAdj", lo=-1000, hi=1000),
        console_size=console_size,
    )


def _parse_seccomp(data: object, where: str) -> Seccomp | None:
    if data is None:
        return None
    d = _obj(data, where)
    rules = []
    for i, item in enumerate(_list(d.get("syscalls"), f"{where}.syscalls")):
        w = f"{where}.syscalls[{i}]"
        r = _obj(item, w)
        args = []
        for j, a in enumerate(_list(r.get("args"), f"{w}.args")):
            aw = f"{w}.args[{j}]"
            ad = _obj(a, aw)
            args.append(SeccompArg(
                index=_int(ad.get("index"), f"{aw}.index", lo=0, hi=5),
                value=_int(ad.get("value"), f"{aw}.value", lo=0, hi=2**64 - 1),
                value_two=_int(ad.get("valueTwo"), f"{aw}.valueTwo", lo=0, hi=2**64 - 1),
                op=_str(ad.get("op"), f"{aw}.op"),
            ))
        errno_ret = r.get("errnoRet")
        rules.append(SeccompRule(
            names=_strs(r.get("names"), f"{w}.names"),
            action=_str(r.get("action"), f"{w}.action"),
            errno_ret=None if errno_ret is None else _int(errno_ret, f"{w}.errnoRet", lo=0, hi=0xFFFF),
            args=tuple(args),
        ))
    default_errno = d.get("defaultErrnoRet")
    if d.get("listenerPath"):
        raise _fail(f"{where}.listenerPath", "seccomp notify listeners are not supported")
    return Seccomp(
        default_action=_str(d.get("defaultAction"), f"{where}.defaultAction"),
        default_errno_ret=None if default_errno is None else _int(default_errno, f"{where}.defaultErrnoRet",
                                                                   lo=0, hi=0xFFFF),
        architectures=_strs(d.get("architectures"), f"{where}.architectures"),
        flags=_strs(d.get("flags"), f"{where}.flags"),
        syscalls=tuple(rules),
    )


def _parse_linux(data: object) -> Linux:
    d = _obj(data, "linux")
    for key in ("intelRdt", "personality", "timeOffsets"):
        if d.get(key):
            raise _fail(f"linux.{key}", "not supported by the built-in executor")
    namespaces = []
    seen = set()
    for i, item in enumerate(_list(d.get("namespaces"), "linux.namespaces")):
        n = _obj(item, f"linux.namespaces[{i}]")
        ns_type = _str(n.get("type"), f"linux.namespaces[{i}].type")
        if ns_type not in NAMESPACE_TYPES:
            raise _fail(f"linux.namespaces[{i}].type", f"unknown namespace type {ns_type!r}")
        if ns_type == "time":
            raise _fail(f"linux.namespaces[{i}]", "time namespaces are not supported by the built-in executor")
        if ns_type in seen:
            raise _fail(f"linux.namespaces[{i}]", f"the {ns_type} namespace is listed twice")
        seen.add(ns_type)
        path = _str(n.get("path"), f"linux.namespaces[{i}].path")
        if ns_type == "user" and not path:
            # a pod's user namespace is made (and mapped) with the pod; a container only joins it
            raise _fail(f"linux.namespaces[{i}]", "the built-in executor joins a user namespace by path, it "
                        "makes none")
        if path and not path.startswith("/"):
            raise _fail(f"linux.namespaces[{i}].path", f"{path!r} must be an absolute path")
        namespaces.append(Namespace(ns_type, path))
    devices = []
    for i, item in enumerate(_list(d.get("devices"), "linux.devices")):
        w = f"linux.devices[{i}]"
        dv = _obj(item, w)
        dev_type = _str(dv.get("type"), f"{w}.type")
        if dev_type not in ("c", "b", "u", "p"):
            raise _fail(f"{w}.type", f"{dev_type!r} is not one of c, b, u, p")
        mode = dv.get("fileMode")
        uid = dv.get("uid")
        gid = dv.get("gid")
        devices.append(Device(
            path=_abs_path(dv.get("path"), f"{w}.path"),
            type=dev_type,
            major=_int(dv.get("major"), f"{w}.major", lo=0, hi=2**32 - 1),
            minor=_int(dv.get("minor"), f"{w}.minor", lo=0, hi=2**32 - 1),
            file_mode=None if mode is None else _int(mode, f"{w}.fileMode", lo=0, hi=0o7777),
            uid=None if uid is None else _int(uid, f"{w}.uid", lo=0, hi=MAX_ID),
            gid=None if gid is None else _int(gid, f"{w}.gid", lo=0, hi=MAX_ID),
        ))
    sysctl = _obj(d.get("sysctl"), "linux.sysctl")
    for key, value in sysctl.items():
        _str(value, f"linux.sysctl.{key}")
        if not key or "/" in key or ".." in key or key.startswith("."):
            raise _fail("linux.sysctl", f"{key!r} is not a sysctl name")
    propagation = _str(d.get("rootfsPropagation"), "linux.rootfsPropagation")
    if propagation not in ("", "private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable",
                           "runbindable"):
        raise _fail("linux.rootfsPropagation", f"{propagation!r} is not a propagation mode")
    cgroups_path = _str(d.get("cgroupsPath"), "linux.cgroupsPath")
    if cgroups_path and ".." in cgroups_path.split("/"):
        raise _fail("linux.cgroupsPath", f"{cgroups_path!r} must not contain '..'")
    if "user" not in seen:
        for key in ("uidMappings", "gidMappings"):
            if d.get(key):
                raise _fail(f"linux.{key}", "id mappings need a user namespace")
    return Linux(
        namespaces=tuple(namespaces),
        cgroups_path=cgroups_path,
        resources=_obj(d.get("resources"), "linux.resources"),
        devices=tuple(devices),
        sysctl=dict(sysctl),
        seccomp=_parse_seccomp(d.get("seccomp"), "linux.seccomp"),
        rootfs_propagation=propagation,
        masked_paths=tuple(_abs_path(p, f"linux.maskedPaths[{i}]")
                           for i, p in enumerate(_list(d.get("maskedPaths"), "linux.maskedPaths"))),
        readonly_paths=tuple(_abs_path(p, f"linux.readonlyPaths[{i}]")
                             for i, p in enumerate(_list(d.get("readonlyPaths"), "linux.readonlyPaths"))),
    )


def parse_spec(data: object, bundle: Path) -> Spec:
    """A config.json document as a Spec; root.path is made absolute against the bundle dir."""
    d = _obj(data, "config.json")
    root = _obj(d.get("root"), "root")
    root_path = _str(root.get("path"), "root.path")
    if not root_path:
        raise _fail("root.path", "the spec has no root filesystem")
    if "process" not in d:
        raise _fail("process", "the spec has no process")
    mounts = []
    for i, item in enumerate(_list(d.get("mounts"), "mounts")):
        m = _obj(item, f"mounts[{i}]")
        mounts.append(Mount(
            destination=_abs_path(m.get("destination"), f"mounts[{i}].destination"),
            type=_str(m.get("type"), f"mounts[{i}].type"),
            source=_str(m.get("source"), f"mounts[{i}].source"),
            options=_strs(m.get("options"), f"mounts[{i}].options"),
        ))
        if m.get("uidMappings") or m.get("gidMappings"):
            raise _fail(f"mounts[{i}]", "id-mapped mounts are not supported by the built-in executor")
    annotations = {k: _str(v, f"annotations.{k}") for k, v in _obj(d.get("annotations"), "annotations").items()}
    return Spec(
        oci_version=_str(d.get("ociVersion"), "ociVersion"),
        root_path=rootfs_path(str(bundle), d),
        root_readonly=_bool(root.get("readonly"), "root.readonly"),
        process=parse_process(d["process"]),
        hostname=_str(d.get("hostname"), "hostname"),
        domainname=_str(d.get("domainname"), "domainname"),
        mounts=tuple(mounts),
        linux=_parse_linux(d.get("linux")),
        annotations=annotations,
        overlay=overlay_of(annotations),
        idmap=idmap_of(annotations),
        hooks=parse_hooks(d.get("hooks")),
    )


def load_spec(bundle: Path) -> tuple[Spec, dict[str, Any]]:
    """Read and parse `<bundle>/config.json`; also returns the raw document."""
    raw = load_config(str(bundle))
    return parse_spec(raw, bundle), raw
