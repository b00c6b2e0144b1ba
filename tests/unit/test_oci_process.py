"""The container process in the OCI spec: args, env, cwd, user and groups, terminal, capabilities, no_new_privs,
rlimits, oom_score_adj; the exec process; the stop signal."""

from __future__ import annotations

import signal

import pytest

from cri import api as pb
from cri.config import OciConfig
from cri.oci.capabilities import DEFAULT_CAPABILITIES, capabilities_from_mask, normalize_capability
from cri.oci.signals import resolve_stop_signal
from cri.oci.spec import DEFAULT_PATH_ENV, SpecOptions, process_args
from cri.oci.user import StaticFiles
from runtime.bundle import exec_process, merge_env
from runtime.errors import FailedPrecondition, InvalidArgument
from tests.unit.oci_support import ALL_CAPS, NODE, build, container_config, replace, sandbox_config

# ---------------------------------------------------------------------------------------------- args


@pytest.mark.parametrize(
    ("command", "args", "entrypoint", "cmd", "expected"),
    [
        # nothing from CRI: the image's entrypoint + cmd
        ([], [], ["/entry"], ["a", "b"], ["/entry", "a", "b"]),
        # command replaces the entrypoint and drops cmd
        (["/cmd"], [], ["/entry"], ["a"], ["/cmd"]),
        # args replace cmd, the entrypoint stays
        ([], ["x"], ["/entry"], ["a"], ["/entry", "x"]),
        # both given: the image plays no part
        (["/cmd"], ["x", "y"], ["/entry"], ["a"], ["/cmd", "x", "y"]),
        # no entrypoint: cmd alone, or args alone
        ([], [], None, ["/bin/sh", "-c", "true"], ["/bin/sh", "-c", "true"]),
        ([], ["/bin/true"], None, ["/bin/sh"], ["/bin/true"]),
        # an entrypoint of [""] means "none" (docker's reset)
        ([], [], [""], ["/bin/sh"], ["/bin/sh"]),
    ],
)
def test_args_merge_like_the_kubelet(
    command: list[str], args: list[str], entrypoint: list[str] | None, cmd: list[str], expected: list[str]
) -> None:
    config = container_config(command=command, args=args)
    image = {"Entrypoint": entrypoint, "Cmd": cmd}
    assert process_args(config, image) == expected
    assert build(config, image=image)["process"]["args"] == expected


def test_no_command_anywhere_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="no command"):
        build(container_config(command=[], args=[]), image={"Cmd": None})


def test_malformed_image_config_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="Cmd"):
        build(container_config(command=[], args=[]), image={"Cmd": "/bin/sh"})


# ---------------------------------------------------------------------------------------------- env


def test_env_order_and_overrides() -> None:
    config = container_config(envs=[pb.KeyValue(key="B", value=b"cri"), pb.KeyValue(key="C", value=b"x=y")])
    env = build(config, image={"Env": ["A=1", "B=image", "PATH=/image/bin"]})["process"]["env"]
    assert env == ["PATH=/image/bin", "HOSTNAME=pod-host", "A=1", "B=cri", "C=x=y", "HOME=/root"]


def test_env_default_path_and_hostname_fallback() -> None:
    env = build(sandbox=sandbox_config(hostname=""))["process"]["env"]
    assert env[0] == DEFAULT_PATH_ENV
    assert "HOSTNAME=node1" in env


def test_env_home_from_passwd_unless_set() -> None:
    sc = pb.LinuxContainerSecurityContext(run_as_username="alice")
    assert "HOME=/home/alice" in build(container_config(linux=pb.LinuxContainerConfig(security_context=sc)))[
        "process"]["env"]
    config = container_config(envs=[pb.KeyValue(key="HOME", value=b"/data")],
                              linux=pb.LinuxContainerConfig(security_context=sc))
    env = build(config)["process"]["env"]
    assert "HOME=/data" in env and "HOME=/home/alice" not in env
    # a uid without a passwd entry gets HOME=/
    sc = pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=4321))
    assert "HOME=/" in build(container_config(linux=pb.LinuxContainerConfig(security_context=sc)))["process"]["env"]


def test_merge_env_removes_bare_keys() -> None:
    assert merge_env(["A=1", "B=2", "C=3"], ["B", "D=4", "A=0"]) == ["A=0", "C=3", "D=4"]


def test_invalid_env_name() -> None:
    with pytest.raises(InvalidArgument, match="environment"):
        build(container_config(envs=[pb.KeyValue(key="", value=b"x")]))


# ---------------------------------------------------------------------------------------------- cwd


def test_cwd_from_cri_then_image_then_root() -> None:
    assert build(container_config(working_dir="/work"), image={"WorkingDir": "/img"})["process"]["cwd"] == "/work"
    assert build(image={"WorkingDir": "/img"})["process"]["cwd"] == "/img"
    assert build()["process"]["cwd"] == "/"
    with pytest.raises(InvalidArgument, match="absolute"):
        build(container_config(working_dir="relative"))


# ---------------------------------------------------------------------------------------------- user


def _user(sc: pb.LinuxContainerSecurityContext | None = None, image_user: str = "",
          files: StaticFiles | None = None) -> dict[str, object]:
    config = container_config(linux=pb.LinuxContainerConfig(security_context=sc or pb.LinuxContainerSecurityContext()))
    kw = {"image_files": files} if files is not None else {}
    user: dict[str, object] = build(config, image={"User": image_user}, **kw)["process"]["user"]
    return user


def test_default_user_is_root_with_its_groups() -> None:
    assert _user() == {"uid": 0, "gid": 0, "additionalGids": [0, 10]}


def test_unset_run_as_user_is_not_uid_0() -> None:
    # the image says alice; an unset run_as_user must not turn that into root
    assert _user(image_user="alice")["uid"] == 1000
    # while an explicit 0 does
    sc = pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=0))
    assert _user(sc, image_user="alice")["uid"] == 0


@pytest.mark.parametrize(
    ("image_user", "uid", "gid", "groups"),
    [
        ("1000", 1000, 1000, [50, 1000]),  # uid: primary group from passwd, supplemental from group
        ("alice", 1000, 1000, [50, 1000]),  # name
        ("1001:29", 1001, 29, [29, 50]),  # uid:gid (bob is in staff and audio)
        ("bob:staff", 1001, 50, [29, 50]),  # name:group
        ("alice:0", 1000, 0, [0, 50]),  # name:gid
        ("4000", 4000, 0, [0]),  # a uid not in passwd runs with gid 0
        ("4000:4000", 4000, 4000, [4000]),
    ],
)
def test_image_user_forms(image_user: str, uid: int, gid: int, groups: list[int]) -> None:
    assert _user(image_user=image_user) == {"uid": uid, "gid": gid, "additionalGids": groups}


@pytest.mark.parametrize("image_user", ["nobody", "alice:nogroup", "a:b:c", ":1", "\u0661\u0662"])
def test_bad_image_user(image_user: str) -> None:
    with pytest.raises(InvalidArgument):
        _user(image_user=image_user)


def test_run_as_username_resolved_from_passwd() -> None:
    sc = pb.LinuxContainerSecurityContext(run_as_username="bob")
    assert _user(sc) == {"uid": 1001, "gid": 100, "additionalGids": [29, 50, 100]}
    with pytest.raises(InvalidArgument, match="nobody"):
        _user(pb.LinuxContainerSecurityContext(run_as_username="nobody"))


def test_run_as_username_without_passwd_file() -> None:
    with pytest.raises(InvalidArgument, match="passwd"):
        _user(pb.LinuxContainerSecurityContext(run_as_username="alice"), files=StaticFiles({}))
    # a uid needs no passwd file
    sc = pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=7))
    assert _user(sc, files=StaticFiles({})) == {"uid": 7, "gid": 0, "additionalGids": [0]}


def test_run_as_user_and_group_override_the_image() -> None:
    sc = pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=1000), run_as_group=pb.Int64Value(value=3000))
    assert _user(sc, image_user="bob:audio") == {"uid": 1000, "gid": 3000, "additionalGids": [50, 3000]}
    sc = pb.LinuxContainerSecurityContext(run_as_username="alice", run_as_group=pb.Int64Value(value=0))
    assert _user(sc)["gid"] == 0


def test_run_as_group_without_user_is_invalid() -> None:
    sc = pb.LinuxContainerSecurityContext(run_as_group=pb.Int64Value(value=5))
    with pytest.raises(InvalidArgument, match="run_as_group"):
        _user(sc, image_user="alice")


def test_run_as_group_zero_is_present() -> None:
    # Int64Value(0) is set, even though 0 is the default of int64
    sc = pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=1001), run_as_group=pb.Int64Value(value=0))
    assert _user(sc)["gid"] == 0


def test_supplemental_groups_merge_and_strict() -> None:
    sc = pb.LinuxContainerSecurityContext(run_as_username="alice", supplemental_groups=[2000, 50])
    assert _user(sc)["additionalGids"] == [50, 1000, 2000]
    sc.supplemental_groups_policy = pb.Strict
    assert _user(sc)["additionalGids"] == [50, 1000, 2000]  # 50 asked for explicitly
    sc = pb.LinuxContainerSecurityContext(run_as_username="bob", supplemental_groups=[2000],
                                          supplemental_groups_policy=pb.Strict)
    assert _user(sc)["additionalGids"] == [100, 2000]  # none of /etc/group's


def test_ids_out_of_range() -> None:
    for sc in (
        pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=-1)),
        pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=2**31)),
        pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=1), supplemental_groups=[-5]),
    ):
        with pytest.raises(InvalidArgument, match="range"):
            _user(sc)


# ---------------------------------------------------------------------------------------------- terminal


def test_terminal_and_term() -> None:
    spec = build(container_config(tty=True))
    assert spec["process"]["terminal"] is True
    assert "TERM=xterm" in spec["process"]["env"]
    spec = build(container_config(tty=True, envs=[pb.KeyValue(key="TERM", value=b"vt100")]))
    assert "TERM=vt100" in spec["process"]["env"] and "TERM=xterm" not in spec["process"]["env"]
    spec = build()
    assert spec["process"]["terminal"] is False
    assert not any(e.startswith("TERM=") for e in spec["process"]["env"])


# ---------------------------------------------------------------------------------------------- capabilities


def _caps(capability: pb.Capability | None = None, privileged: bool = False, **kw: object) -> dict[str, list[str]]:
    sc = pb.LinuxContainerSecurityContext(privileged=privileged)
    if capability is not None:
        sc.capabilities.CopyFrom(capability)
    sandbox = sandbox_config()
    sandbox.linux.security_context.privileged = privileged
    caps: dict[str, list[str]] = build(
        container_config(linux=pb.LinuxContainerConfig(security_context=sc)), sandbox, **kw
    )["process"]["capabilities"]
    return caps


def test_default_capabilities_fill_three_sets() -> None:
    caps = _caps()
    assert caps["bounding"] == list(DEFAULT_CAPABILITIES)
    assert caps["effective"] == caps["permitted"] == caps["bounding"]
    assert caps["inheritable"] == [] and caps["ambient"] == []


def test_add_and_drop_capabilities() -> None:
    caps = _caps(pb.Capability(add_capabilities=["NET_ADMIN", "sys_time"], drop_capabilities=["CHOWN", "CAP_KILL"]))
    assert "CAP_NET_ADMIN" in caps["bounding"] and "CAP_SYS_TIME" in caps["effective"]
    assert "CAP_CHOWN" not in caps["permitted"] and "CAP_KILL" not in caps["bounding"]
    assert caps["inheritable"] == []


def test_all_in_add_then_drop() -> None:
    caps = _caps(pb.Capability(add_capabilities=["ALL"], drop_capabilities=["NET_RAW"]))
    assert set(caps["bounding"]) == set(NODE.capabilities) - {"CAP_NET_RAW"}


def test_all_in_drop_then_add() -> None:
    caps = _caps(pb.Capability(add_capabilities=["NET_BIND_SERVICE"], drop_capabilities=["all"]))
    assert caps["bounding"] == caps["effective"] == ["CAP_NET_BIND_SERVICE"]


def test_unknown_capability_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="unknown capability"):
        _caps(pb.Capability(add_capabilities=["FLY"]))


def test_capability_crispd_lacks_is_a_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition, match="CAP_SYS_RESOURCE"):
        _caps(pb.Capability(add_capabilities=["SYS_RESOURCE"]))
    # with it on the node, it is granted
    node = replace(NODE, capabilities=ALL_CAPS)
    assert "CAP_SYS_RESOURCE" in _caps(pb.Capability(add_capabilities=["SYS_RESOURCE"]), node=node)["bounding"]


def test_privileged_gets_every_capability_crispd_has() -> None:
    caps = _caps(pb.Capability(drop_capabilities=["ALL"]), privileged=True)
    assert caps["bounding"] == caps["effective"] == caps["permitted"] == list(NODE.capabilities)
    assert caps["inheritable"] == []


def test_ambient_capabilities() -> None:
    caps = _caps(pb.Capability(add_ambient_capabilities=["NET_BIND_SERVICE", "NET_ADMIN"]))
    assert caps["ambient"] == caps["inheritable"] == ["CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN"]
    assert "CAP_NET_ADMIN" in caps["permitted"] and "CAP_NET_ADMIN" in caps["effective"]


def test_capability_names_and_masks() -> None:
    assert normalize_capability("net_admin") == normalize_capability("CAP_NET_ADMIN") == "CAP_NET_ADMIN"
    assert capabilities_from_mask(0x1FFFEFFFFFF) == NODE.capabilities
    assert capabilities_from_mask(0b101) == ("CAP_CHOWN", "CAP_DAC_READ_SEARCH")


# ---------------------------------------------------------------------------------------------- no_new_privs


def test_no_new_privs() -> None:
    sc = pb.LinuxContainerSecurityContext(no_new_privs=True)
    assert build(container_config(linux=pb.LinuxContainerConfig(security_context=sc)))["process"][
        "noNewPrivileges"] is True
    assert build()["process"]["noNewPrivileges"] is False


# ---------------------------------------------------------------------------------------------- rlimits


def test_rlimit_nofile_from_the_node_or_the_config() -> None:
    assert build()["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 40000, "soft": 20000}]
    options = SpecOptions.from_config(OciConfig(nofile_soft=1024, nofile_hard=4096), NODE)
    assert build(options=options)["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024}]
    options = SpecOptions.from_config(OciConfig(nofile_hard=65536), NODE)
    assert build(options=options)["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 65536, "soft": 65536}]


# ---------------------------------------------------------------------------------------------- oom_score_adj


def _oom(adj: int, **kw: object) -> object:
    config = container_config(linux=pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(oom_score_adj=adj)))
    return build(config, **kw)["process"].get("oomScoreAdj")


def test_oom_score_adj_passes_through() -> None:
    assert _oom(-997) == -997
    assert _oom(1000) == 1000
    assert "oomScoreAdj" not in build()["process"]  # no resources at all: the runtime's default
    with pytest.raises(InvalidArgument):
        _oom(1001)


def test_oom_score_adj_clamped_when_restricted() -> None:
    node = replace(NODE, oom_score_adj=200)
    options = SpecOptions(restrict_oom_score_adj=True)
    assert _oom(-997, node=node, options=options) == 200
    assert _oom(500, node=node, options=options) == 500
    assert _oom(-997, node=node, options=SpecOptions(restrict_oom_score_adj=False)) == -997


def test_restrict_oom_score_adj_auto_follows_cap_sys_resource() -> None:
    assert SpecOptions.from_config(OciConfig(), NODE).restrict_oom_score_adj is True
    with_cap = replace(NODE, capabilities=ALL_CAPS)
    assert SpecOptions.from_config(OciConfig(), with_cap).restrict_oom_score_adj is False
    assert SpecOptions.from_config(OciConfig(restrict_oom_score_adj="on"), with_cap).restrict_oom_score_adj is True
    assert SpecOptions.from_config(OciConfig(restrict_oom_score_adj="off"), NODE).restrict_oom_score_adj is False


# ---------------------------------------------------------------------------------------------- exec


def test_exec_process_keeps_identity_and_replaces_args() -> None:
    sc = pb.LinuxContainerSecurityContext(run_as_username="alice", no_new_privs=True)
    config = container_config(
        linux=pb.LinuxContainerConfig(security_context=sc, resources=pb.LinuxContainerResources(oom_score_adj=5)),
        working_dir="/srv",
    )
    container = build(config)["process"]
    process = exec_process(container, ["/bin/sh", "-c", "id"], tty=True, env=["EXTRA=1", "HOME=/x"])
    assert process["args"] == ["/bin/sh", "-c", "id"]
    assert process["terminal"] is True
    assert process["user"] == container["user"] and process["capabilities"] == container["capabilities"]
    assert process["cwd"] == "/srv" and process["noNewPrivileges"] is True
    assert "TERM=xterm" in process["env"] and "EXTRA=1" in process["env"] and "HOME=/x" in process["env"]
    assert process["oomScoreAdj"] == 5  # as containerd passes the container's process to runc exec
    assert container["args"] == ["/bin/app"]  # the container's spec is untouched
    plain = exec_process(container, ["ls"], tty=False)
    assert plain["terminal"] is False and plain["env"] == container["env"]
    # the shim's exec passes a working dir and, for a tty, the first window size
    sized = exec_process(container, ["top"], tty=True, cwd="/tmp", console_size=(80, 24))
    assert sized["cwd"] == "/tmp" and sized["consoleSize"] == {"width": 80, "height": 24}
    assert "consoleSize" not in exec_process(container, ["top"], tty=False, console_size=(80, 24))
    with pytest.raises(InvalidArgument):
        exec_process(container, [], tty=False)


# ---------------------------------------------------------------------------------------------- stop signal


def test_stop_signal() -> None:
    assert resolve_stop_signal(container_config(), {}) == signal.SIGTERM
    assert resolve_stop_signal(container_config(), {"StopSignal": "SIGQUIT"}) == signal.SIGQUIT
    assert resolve_stop_signal(container_config(), {"StopSignal": "usr1"}) == signal.SIGUSR1
    assert resolve_stop_signal(container_config(), {"StopSignal": "9"}) == signal.SIGKILL
    assert resolve_stop_signal(container_config(), {"StopSignal": "SIGRTMIN+3"}) == signal.SIGRTMIN + 3
    config = container_config(stop_signal=pb.SIGNAL_SIGINT)
    assert resolve_stop_signal(config, {"StopSignal": "SIGQUIT"}) == signal.SIGINT
    assert resolve_stop_signal(container_config(stop_signal=pb.SIGNAL_SIGRTMINPLUS2), {}) == signal.SIGRTMIN + 2
    assert resolve_stop_signal(container_config(stop_signal=pb.SIGNAL_SIGRTMAXMINUS1), {}) == signal.SIGRTMAX - 1
    with pytest.raises(InvalidArgument):
        resolve_stop_signal(container_config(), {"StopSignal": "SIGNOPE"})
