"""Seccomp in the OCI spec: which profile (the protobuf traps and the deprecated strings), crisp's default profile
rendered per architecture and capabilities, Localhost profiles."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cri import api as pb
from cri.oci.host import HostPaths, ProfileFile
from cri.oci.seccomp import SeccompRequest, render_profile, requested_seccomp
from cri.oci.seccomp_default import CLONE_NAMESPACE_FLAGS, DEFAULT_PROFILE
from runtime.errors import InvalidArgument
from tests.unit.oci_schema import check_spec
from tests.unit.oci_support import NODE, build, container_config, replace, sandbox_config

RuntimeDefault = pb.SecurityProfile.RuntimeDefault
Unconfined = pb.SecurityProfile.Unconfined
Localhost = pb.SecurityProfile.Localhost


def _seccomp(sc: pb.LinuxContainerSecurityContext, **kw: Any) -> dict[str, Any] | None:
    sandbox = sandbox_config()
    sandbox.linux.security_context.privileged = sc.privileged
    spec = build(container_config(linux=pb.LinuxContainerConfig(security_context=sc)), sandbox, **kw)
    assert check_spec(spec) == []
    seccomp: dict[str, Any] | None = spec["linux"].get("seccomp")
    return seccomp


def _allowed(seccomp: dict[str, Any]) -> set[str]:
    """Syscalls allowed without argument conditions."""
    return {n for r in seccomp["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args") for n in r["names"]}


def _rules_for(seccomp: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in seccomp["syscalls"] if name in r["names"]]


# ---------------------------------------------------------------------------------------------- which profile


def test_unset_seccomp_means_unconfined() -> None:
    sc = pb.LinuxContainerSecurityContext()
    assert not sc.HasField("seccomp")
    assert requested_seccomp(sc) == SeccompRequest("unconfined")
    assert _seccomp(sc) is None


def test_empty_security_profile_means_runtime_default() -> None:
    sc = pb.LinuxContainerSecurityContext()
    sc.seccomp.SetInParent()  # present, every field at its default: profile_type 0 = RuntimeDefault
    assert requested_seccomp(sc) == SeccompRequest("runtime_default")
    seccomp = _seccomp(sc)
    assert seccomp is not None and seccomp["defaultAction"] == "SCMP_ACT_ERRNO"


def test_unconfined_profile() -> None:
    assert _seccomp(pb.LinuxContainerSecurityContext(seccomp=pb.SecurityProfile(profile_type=Unconfined))) is None


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", SeccompRequest("unconfined")),
        ("unconfined", SeccompRequest("unconfined")),
        ("runtime/default", SeccompRequest("runtime_default")),
        ("docker/default", SeccompRequest("runtime_default")),
        ("localhost//etc/profile.json", SeccompRequest("localhost", "/etc/profile.json")),
    ],
)
def test_deprecated_seccomp_profile_path(path: str, expected: SeccompRequest) -> None:
    assert requested_seccomp(pb.LinuxContainerSecurityContext(seccomp_profile_path=path)) == expected


def test_the_message_wins_over_the_deprecated_string() -> None:
    sc = pb.LinuxContainerSecurityContext(seccomp=pb.SecurityProfile(profile_type=Unconfined),
                                          seccomp_profile_path="runtime/default")
    assert requested_seccomp(sc).kind == "unconfined"


@pytest.mark.parametrize(
    "sc",
    [
        pb.LinuxContainerSecurityContext(seccomp_profile_path="bogus"),
        pb.LinuxContainerSecurityContext(seccomp_profile_path="localhost/relative.json"),
        pb.LinuxContainerSecurityContext(seccomp=pb.SecurityProfile(profile_type=Localhost)),
        pb.LinuxContainerSecurityContext(seccomp=pb.SecurityProfile(profile_type=RuntimeDefault, localhost_ref="/x")),
    ],
)
def test_invalid_seccomp_requests(sc: pb.LinuxContainerSecurityContext) -> None:
    with pytest.raises(InvalidArgument):
        requested_seccomp(sc)


def test_privileged_is_unconfined_even_with_a_profile() -> None:
    sc = pb.LinuxContainerSecurityContext(privileged=True, seccomp=pb.SecurityProfile(profile_type=RuntimeDefault))
    assert _seccomp(sc) is None
    sc = pb.LinuxContainerSecurityContext(privileged=True,
                                          seccomp=pb.SecurityProfile(profile_type=Localhost, localhost_ref="/gone"))
    assert _seccomp(sc) is None  # not even read
    assert _seccomp(pb.LinuxContainerSecurityContext(privileged=True, seccomp_profile_path="bogus")) is None


# ---------------------------------------------------------------------------------------------- crisp's default


def _default(**kw: Any) -> dict[str, Any]:
    sc = pb.LinuxContainerSecurityContext(seccomp=pb.SecurityProfile(), **kw)
    seccomp = _seccomp(sc)
    assert seccomp is not None
    return seccomp


def test_default_profile_basics() -> None:
    seccomp = _default()
    assert seccomp["defaultAction"] == "SCMP_ACT_ERRNO" and seccomp["defaultErrnoRet"] == 1
    assert seccomp["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    allowed = _allowed(seccomp)
    for name in ("read", "write", "openat", "execve", "clock_gettime", "futex", "epoll_wait", "arch_prctl",
                 "ptrace", "chroot"):
        assert name in allowed, name
    # host administration stays out for a default container
    for name in ("mount", "umount2", "unshare", "setns", "init_module", "kexec_load", "reboot", "bpf",
                 "clock_settime", "open_by_handle_at", "io_uring_setup", "keyctl", "add_key", "swapon", "clone"):
        assert name not in allowed, name


def test_default_profile_clone_and_clone3_without_sys_admin() -> None:
    seccomp = _default()
    clone = _rules_for(seccomp, "clone")
    assert clone == [{"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                      "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "op": "SCMP_CMP_MASKED_EQ"}]}]
    assert _rules_for(seccomp, "clone3") == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]


def test_default_profile_follows_capabilities() -> None:
    seccomp = _default(capabilities=pb.Capability(add_capabilities=["SYS_ADMIN", "SYS_TIME", "DAC_READ_SEARCH"]))
    allowed = _allowed(seccomp)
    for name in ("mount", "unshare", "setns", "clone", "clone3", "clock_settime", "open_by_handle_at"):
        assert name in allowed, name
    assert not any(r.get("args") for r in _rules_for(seccomp, "clone"))
    assert not any(r["action"] == "SCMP_ACT_ERRNO" for r in _rules_for(seccomp, "clone3"))
    # dropping CHROOT takes chroot away
    assert "chroot" not in _allowed(_default(capabilities=pb.Capability(drop_capabilities=["SYS_CHROOT"])))


def test_default_profile_argument_filters() -> None:
    seccomp = _default()
    personality = sorted(r["args"][0]["value"] for r in _rules_for(seccomp, "personality"))
    assert personality == [0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF]
    assert all(r["args"][0]["op"] == "SCMP_CMP_EQ" for r in _rules_for(seccomp, "personality"))
    socket = [(r["args"][0]["op"], r["args"][0]["value"]) for r in _rules_for(seccomp, "socket")]
    assert socket == [("SCMP_CMP_LT", 38), ("SCMP_CMP_EQ", 39), ("SCMP_CMP_GT", 40)]
    # one condition per rule: conditions on one argument would be OR-ed
    assert all(len(r.get("args", [])) <= 1 for r in seccomp["syscalls"])


def test_default_profile_per_architecture() -> None:
    sc = pb.LinuxContainerSecurityContext(seccomp=pb.SecurityProfile())
    seccomp = _seccomp(sc, node=replace(NODE, arch="aarch64"))
    assert seccomp is not None
    assert seccomp["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    allowed = _allowed(seccomp)
    assert "set_tls" in allowed and "arch_prctl" not in allowed
    s390 = render_profile(DEFAULT_PROFILE, arch="s390x", capabilities=[], source="test")
    assert [r["args"][0]["index"] for r in _rules_for(s390, "clone")] == [1]


# ---------------------------------------------------------------------------------------------- Localhost


def _localhost(data: bytes | None, error: str = "", arch: str = "x86_64") -> dict[str, Any] | None:
    sc = pb.LinuxContainerSecurityContext(seccomp=pb.SecurityProfile(profile_type=Localhost,
                                                                     localhost_ref="/var/lib/kubelet/seccomp/p.json"))
    host = HostPaths(seccomp_profiles={"/var/lib/kubelet/seccomp/p.json": ProfileFile(
        "/var/lib/kubelet/seccomp/p.json", data, error)})
    return _seccomp(sc, host=host, node=replace(NODE, arch=arch))


def test_localhost_profile() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_LOG",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": []}],
        "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13, "comment": "no mkdir"},
            {"name": "chmod", "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
            {"names": ["kill"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 1, "value": 9, "valueTwo": 0, "op": "SCMP_CMP_NE"}]},
        ],
    }
    seccomp = _localhost(json.dumps(profile).encode())
    assert seccomp == {
        "defaultAction": "SCMP_ACT_LOG",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["chmod"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["kill"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_NE"}]},
        ],
    }
    seccomp = _localhost(json.dumps(profile).encode(), arch="aarch64")
    assert seccomp is not None and seccomp["architectures"] == ["SCMP_ARCH_AARCH64"]
    assert "arch_prctl" not in _allowed(seccomp)


def test_localhost_plain_oci_profile() -> None:
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
               "syscalls": [{"names": ["reboot"], "action": "SCMP_ACT_ERRNO"}]}
    assert _localhost(json.dumps(profile).encode()) == profile


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (None, "No such file or directory", "No such file"),
        (b"{not json", "", "not valid JSON"),
        (b"[]", "", "JSON object"),
        (b'{"defaultAction": "SCMP_ACT_MAYBE"}', "", "defaultAction"),
        (b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "NOPE"}]}', "", "action"),
        (b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}', "", "names no syscall"),
        (b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW", '
         b'"args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]}', "", "0..5"),
        (b'{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}', "", "architecture"),
        (b'{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86"], '
         b'"archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}', "", "both"),
    ],
)
def test_bad_localhost_profiles(data: bytes | None, error: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        _localhost(data, error)


def test_localhost_profile_that_was_not_read() -> None:
    sc = pb.LinuxContainerSecurityContext(seccomp=pb.SecurityProfile(profile_type=Localhost, localhost_ref="/p"))
    with pytest.raises(InvalidArgument, match="was not read"):
        _seccomp(sc)
