"""The executor's pure parts: spec parsing, mount options, sysctl rules, the handshake, and the order of the
identity calls (recorded at the Syscalls seam, no root needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runtime import errors
from runtime.bundle import OVERLAY_ANNOTATION, Overlay
from runtime.executor import mountopts, protocol, sysctls
from runtime.executor.oci import Linux, Mount, Namespace, parse_spec
from runtime.executor.process import ExecError, ProcessSetup, find_executable
from runtime.executor.rootfs import MountError, check_proc_destination
from runtime.linux import syscalls as sc


def spec(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"ociVersion": "1.1.0", "root": {"path": "rootfs"},
                            "process": {"args": ["/bin/sh"], "cwd": "/"}, "linux": {}}
    base.update(changes)
    return base


def test_parse_spec_resolves_root_against_the_bundle() -> None:
    parsed = parse_spec(spec(), Path("/b"))
    assert parsed.root_path == "/b/rootfs"
    assert parse_spec(spec(root={"path": "/abs"}), Path("/b")).root_path == "/abs"


@pytest.mark.parametrize("change, message", [
    ({"process": {"args": []}}, "process.args"),
    ({"process": {"args": ["x"], "cwd": "rel"}}, "process.cwd"),
    ({"process": {"args": ["x"], "user": {"uid": 2**32}}}, "process.user.uid"),
    ({"process": {"args": ["x"], "user": {"uid": 0, "username": "bob"}}}, "process.user.username"),
    ({"process": {"args": ["x"], "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 2, "hard": 1}]}}, "rlimits[0]"),
    ({"process": {"args": ["x"], "env": ["NOEQUALS"]}}, "process.env[0]"),
    ({"linux": {"uidMappings": [{"containerID": 0, "hostID": 1, "size": 1}]}}, "linux.uidMappings"),
    ({"linux": {"namespaces": [{"type": "user"}]}}, "joins a user namespace by path"),
    ({"linux": {"namespaces": [{"type": "pid"}, {"type": "pid"}]}}, "listed twice"),
    ({"linux": {"namespaces": [{"type": "bogus"}]}}, "unknown namespace type"),
    ({"linux": {"sysctl": {"../x": "1"}}}, "not a sysctl name"),
    ({"linux": {"cgroupsPath": "/a/../b"}}, "linux.cgroupsPath"),
    ({"linux": {"rootfsPropagation": "sideways"}}, "rootfsPropagation"),
    ({"mounts": [{"destination": "relative"}]}, "mounts[0].destination"),
    ({"annotations": {OVERLAY_ANNOTATION: "{not json"}}, "not JSON"),
    ({"annotations": {OVERLAY_ANNOTATION: json.dumps({"lowerdirs": []})}}, "at least one lower dir"),
    ({"annotations": {OVERLAY_ANNOTATION: json.dumps({"lowerdirs": ["/a:b"]})}}, "must not contain"),
])
def test_bad_specs_are_invalid_argument_with_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_spec(spec(**change), Path("/b"))


def test_overlay_annotation_and_long_layer_lists() -> None:
    parsed = parse_spec(spec(annotations={OVERLAY_ANNOTATION: json.dumps(
        {"lowerdirs": ["/s/2/fs", "/s/1/fs"], "upperdir": "/c/u", "workdir": "/c/w"})}), Path("/b"))
    assert parsed.overlay == Overlay(("/s/2/fs", "/s/1/fs"), "/c/u", "/c/w")
    assert parsed.overlay.mount_data() == ("lowerdir=/s/2/fs:/s/1/fs,upperdir=/c/u,workdir=/c/w", None)
    base = "/var/lib/crisp/images/snapshots"
    many = Overlay(tuple(f"{base}/{'a' * 61}{i:03d}/fs" for i in range(55)), "/var/lib/crisp/c/u",
                   "/var/lib/crisp/c/w")
    data, chdir = many.mount_data()
    assert chdir == base and len(data) < 4096 and "upperdir=/var/lib/crisp/c/u" in data
    assert data.startswith(f"lowerdir={'a' * 61}000/fs:")


def test_mount_options() -> None:
    opts = mountopts.parse_options(["rbind", "ro", "nosuid", "rprivate", "rro", "mode=755", "size=1k"])
    assert opts.flags == sc.MS_BIND | sc.MS_REC | sc.MS_RDONLY | sc.MS_NOSUID
    assert opts.propagation == (sc.MS_PRIVATE | sc.MS_REC,)
    assert opts.attr_set == sc.MOUNT_ATTR_RDONLY and opts.data == "mode=755,size=1k"
    assert mountopts.parse_options(["ro", "rw"]).flags == 0
    with pytest.raises(mountopts.UnsupportedOption):
        mountopts.parse_options(["idmap"])


@pytest.mark.parametrize("dest, fstype, ok", [
    ("/proc", "proc", True), ("/proc/cpuinfo", "bind", True), ("/proc/sys", "bind", False),
    ("/proc", "tmpfs", False), ("/procfs", "bind", True),
])
def test_nothing_but_proc_goes_into_proc(dest: str, fstype: str, ok: bool) -> None:
    mount = Mount(dest, fstype, "x", ())
    if ok:
        check_proc_destination(mount)
    else:
        with pytest.raises(MountError):
            check_proc_destination(mount)


def test_executor_refuses_sysctls_for_shared_namespaces() -> None:
    new_net = Linux(namespaces=(Namespace("network"),), sysctl={"net.ipv4.ip_forward": "1"})
    sysctls.check_sysctls(new_net)
    sysctls.check_sysctls(Linux(namespaces=(Namespace("uts"),), sysctl={"kernel.domainname": "x"}))
    with pytest.raises(errors.InvalidArgument, match="shares the host UTS"):
        sysctls.check_sysctls(Linux(namespaces=(), sysctl={"kernel.domainname": "x"}))
    with pytest.raises(errors.InvalidArgument, match="shares the host"):
        sysctls.check_sysctls(Linux(namespaces=(), sysctl={"net.ipv4.ip_forward": "1"}))
    # a "path" that is the very namespace we are in is the host's
    host_path = Linux(namespaces=(Namespace("network", "/proc/self/ns/net"),), sysctl={"net.core.somaxconn": "1"})
    with pytest.raises(errors.InvalidArgument, match="shares the host"):
        sysctls.check_sysctls(host_path)


def test_protocol_round_trip_and_typed_errors() -> None:
    for message in (protocol.Go(), protocol.ChildPid(42), protocol.Ready(), protocol.Failure("NotFound", "x")):
        assert protocol.decode(protocol.encode(message)) == message
    error = protocol.Failure(errors.kind_of(errors.InvalidArgument("bad")), "bad").to_error()
    assert isinstance(error, errors.InvalidArgument) and str(error) == "bad"
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(b'{"type": "nope"}')


class Recorder(sc.Syscalls):
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
        self.calls.append(("prctl", (option, arg2)))
        return 0

    def setgroups(self, gids: Any) -> None:
        self.calls.append(("setgroups", (list(gids),)))

    def setresgid(self, rgid: int, egid: int, sgid: int) -> None:
        self.calls.append(("setresgid", (rgid,)))

    def setresuid(self, ruid: int, euid: int, suid: int) -> None:
        self.calls.append(("setresuid", (ruid,)))

    def capget(self) -> tuple[int, int, int]:
        return (2**41 - 1, 2**41 - 1, 0)

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        self.calls.append(("capset", (effective, permitted, inheritable)))


def test_identity_calls_come_in_the_kernel_order(monkeypatch: pytest.MonkeyPatch) -> None:
    process = parse_spec(spec(process={
        "args": ["x"], "noNewPrivileges": True,
        "user": {"uid": 1000, "gid": 1001, "additionalGids": [5, 6], "umask": 0o22},
        "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"],
                         "ambient": []}}), Path("/b")).process
    monkeypatch.setattr("os.umask", lambda mask: 0)
    rec = Recorder()
    ProcessSetup(rec, process, None).apply_identity()
    names = [name for name, _ in rec.calls]
    drops = [args[1] for name, args in rec.calls if name == "prctl" and args[0] == sc.PR_CAPBSET_DROP]
    assert 5 not in drops and len(drops) >= 39  # CAP_KILL (5) stays in the bounding set
    first_drop = next(i for i, (n, a) in enumerate(rec.calls) if a[0] == sc.PR_CAPBSET_DROP)
    order = [names.index("setgroups"), names.index("setresgid"), names.index("setresuid"), names.index("capset")]
    assert first_drop < order[0] and order == sorted(order)
    assert rec.calls[names.index("setgroups")][1] == ([5, 6],)
    assert ("prctl", (sc.PR_SET_KEEPCAPS, 1)) in rec.calls[:names.index("setresuid")]
    assert rec.calls[names.index("capset")][1] == (1 << 5, 1 << 5, 0)
    assert rec.calls[-1] == ("prctl", (sc.PR_SET_NO_NEW_PRIVS, 1))


def test_find_executable_messages(tmp_path: Path) -> None:
    (tmp_path / "prog").write_text("#!/bin/sh\n")
    (tmp_path / "prog").chmod(0o755)
    assert find_executable("prog", {"PATH": f"/nonexistent:{tmp_path}"}) == f"{tmp_path}/prog"
    with pytest.raises(ExecError, match='exec: "nope": executable file not found in \\$PATH'):
        find_executable("nope", {"PATH": str(tmp_path)})
    with pytest.raises(ExecError, match='exec: "/no/such": no such file or directory'):
        find_executable("/no/such", {})
