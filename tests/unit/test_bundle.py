"""The OCI bundle contract in code (runtime/bundle.py): what cri/oci writes is what the shim and the executor read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runtime import errors
from runtime.bundle import (
    IDMAP_ANNOTATION,
    OVERLAY_ANNOTATION,
    Idmap,
    Overlay,
    StagedMount,
    exec_process,
    executor_argv,
    idmap_of,
    load_config,
    mount_refused_in_proc,
    overlay_of,
    read_json,
    rootfs_path,
    staged_path,
    write_config,
)
from runtime.ociedit import update_resources


def test_the_overlay_annotation_round_trips() -> None:
    overlay = Overlay(("/s/2/fs", "/s/1/fs"), "/c/upper", "/c/work")
    assert overlay_of({OVERLAY_ANNOTATION: overlay.annotation()}) == overlay
    assert overlay_of({"other": "x"}) is None and overlay_of(None) is None
    read_only = Overlay(("/s/1/fs",))
    assert overlay_of({OVERLAY_ANNOTATION: read_only.annotation()}) == read_only
    assert read_only.mount_data() == ("lowerdir=/s/1/fs", None)


@pytest.mark.parametrize(("value", "message"), [
    ("{not json", "not JSON"),
    (json.dumps({"lowerdirs": []}), "at least one lower dir"),
    (json.dumps({"lowerdirs": "/a"}), "list of lowerdirs"),
    (json.dumps({"lowerdirs": ["a/relative"]}), "not an absolute path"),
    (json.dumps({"lowerdirs": ["/a:b"]}), "must not contain"),
    (json.dumps({"lowerdirs": ["/a"], "upperdir": "/u"}), "go together"),
])
def test_a_bad_annotation_is_invalid_and_named(value: str, message: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=message):
        overlay_of({OVERLAY_ANNOTATION: value})


def test_the_idmap_annotation_round_trips_and_is_checked() -> None:
    idmap = Idmap("/s/ns/user", (StagedMount("/b/idmap/0", source="/snap/1/fs"),
                                 StagedMount("/b/idmap/1", source="/vol:with,odd chars"),
                                 StagedMount("/b/idmap/2", lowerdirs=("/b/idmap/0", "/b/idmap/1"))))
    assert idmap_of({IDMAP_ANNOTATION: idmap.annotation()}) == idmap
    assert idmap_of({}) is None
    assert staged_path("/b", 3) == "/b/idmap/3"
    for bad, message in (('{"userns": "rel", "mounts": []}', "userns"),
                         ('{"userns": "/u", "mounts": [{"target": "/t", "lowerdirs": ["/a"]}]}', "two lowerdirs"),
                         ('{"userns": "/u", "mounts": [{"target": "/t:x", "source": "/a"}]}', "target"),
                         ("[]", "needs a userns")):
        with pytest.raises(errors.InvalidArgument, match=message):
            idmap_of({IDMAP_ANNOTATION: bad})


def test_many_layers_are_named_relative_to_their_parent() -> None:
    base = "/var/lib/crisp/images/snapshots"
    many = Overlay(tuple(f"{base}/{'a' * 61}{i:03d}/fs" for i in range(55)), "/c/u", "/c/w")
    data, cwd = many.mount_data()
    assert cwd == base and data.startswith(f"lowerdir={'a' * 61}000/fs:")
    assert data.endswith(",upperdir=/c/u,workdir=/c/w")
    with pytest.raises(errors.InvalidArgument, match="do not fit"):
        Overlay(tuple(f"{base}/{'a' * 200}{i:03d}/fs" for i in range(40))).mount_data()


def test_an_exec_has_the_container_identity_and_a_tty_a_term() -> None:
    container = {"args": ["/app"], "env": ["PATH=/bin", "A=1"], "cwd": "/srv", "user": {"uid": 5, "gid": 6},
                 "terminal": False, "consoleSize": {"width": 1, "height": 1}}
    process = exec_process(container, ["sh"], tty=True, env=["A=2", "B=3"], console_size=(80, 24))
    assert process["args"] == ["sh"] and process["user"] == {"uid": 5, "gid": 6} and process["cwd"] == "/srv"
    assert process["env"] == ["PATH=/bin", "A=2", "TERM=xterm", "B=3"]
    assert process["terminal"] is True and process["consoleSize"] == {"width": 80, "height": 24}
    plain = exec_process(container, ["ls"], tty=False, cwd="/tmp")
    assert "consoleSize" not in plain and plain["env"] == ["PATH=/bin", "A=1"] and plain["cwd"] == "/tmp"
    assert container["args"] == ["/app"]  # the container's own is untouched
    with pytest.raises(errors.InvalidArgument):
        exec_process(container, [], tty=False)


def test_the_executor_command_line_and_the_rootfs() -> None:
    assert executor_argv(["runc"], "/r", "kill", "c1", "9") == ["runc", "--root", "/r", "kill", "c1", "9"]
    argv = executor_argv(["runc"], "/r", "delete", "c1", log="/b/executor.log", cgroup2_bind="/sys/fs/cgroup/unified")
    assert argv[:2] == ["unshare", "--mount"] and "/sys/fs/cgroup/unified" in argv
    assert argv[-9:] == ["runc", "--root", "/r", "--log", "/b/executor.log", "--log-format", "json", "delete", "c1"]
    assert rootfs_path("/b", {"root": {"path": "rootfs"}}) == "/b/rootfs"
    assert rootfs_path("/b", {"root": {"path": "/abs/root"}}) == "/abs/root"
    assert rootfs_path("/b", {}) == "/b/rootfs"


def test_the_contract_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"ociVersion": "1.0.2"}')
    assert load_config(str(tmp_path)) == {"ociVersion": "1.0.2"}
    with pytest.raises(errors.NotFound):
        load_config(str(tmp_path / "missing"))
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(errors.InvalidArgument, match="not a JSON object"):
        read_json(str(tmp_path / "list.json"), "resources")


@pytest.mark.parametrize(("destination", "fstype", "refused"), [
    ("/proc", "proc", False), ("/proc", "bind", True), ("/proc/sys", "bind", True), ("proc/1/fd", "tmpfs", True),
    ("/proc/sys/../kcore", "bind", True), ("/proc/cpuinfo", "bind", False), ("/procfs/x", "bind", False),
    ("/proc/../etc/x", "bind", False),
])
def test_what_may_be_mounted_in_proc(destination: str, fstype: str, refused: bool) -> None:
    """One rule for cri/oci (a volume where the image's symlinks take it) and the executor (every mount where it
    lands): procfs on /proc and lxcfs's few files, nothing else at or below /proc."""
    assert mount_refused_in_proc(destination, fstype) is refused


def test_a_written_config_is_read_back_whole(tmp_path: Path) -> None:
    spec = {"ociVersion": "1.2.0", "process": {"args": ["sleep", "1"]}}
    write_config(str(tmp_path), spec)
    assert load_config(str(tmp_path)) == spec
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no temporary file left


def test_an_update_changes_the_limits_given_and_keeps_the_others() -> None:
    """A container not made yet gets its update in its spec as a live one changes its cgroup: the limits given
    replace the spec's, the others (and the device rules) stay."""
    devices = [{"allow": False, "access": "rwm"}]
    spec = {"linux": {"resources": {"cpu": {"shares": 2, "quota": 50000, "period": 100000},
                                    "memory": {"limit": 1 << 30}, "pids": {"limit": 100}, "devices": devices}}}
    update_resources(spec, {"cpu": {"shares": 512}, "unified": {"cgroup.max.descendants": "13"}})
    assert spec["linux"]["resources"] == {
        "cpu": {"shares": 512, "quota": 50000, "period": 100000}, "memory": {"limit": 1 << 30},
        "pids": {"limit": 100}, "devices": devices, "unified": {"cgroup.max.descendants": "13"}}
    bare: dict[str, Any] = {}
    update_resources(bare, {"memory": {"limit": 64 << 20, "swap": 64 << 20}})
    assert bare == {"linux": {"resources": {"memory": {"limit": 64 << 20, "swap": 64 << 20}}}}
