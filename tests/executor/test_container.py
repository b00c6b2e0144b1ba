"""The built-in executor, observed from inside real containers (root, real namespaces, mounts, cgroups)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from runtime.cgroups import CgroupV2Manager
from runtime.linux import sealed
from tests.executor.conftest import Bundles, Runtime
from tests.executor.rootfs import DEFAULT_CAPS, MASKED_PATHS, READONLY_PATHS, make_spec

pytestmark = pytest.mark.root

BB = "/bin/busybox"
CAP_BITS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
            "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_RAW": 13,
            "CAP_SYS_CHROOT": 18, "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31, "CAP_SYS_ADMIN": 21}


def sh(script: str) -> list[str]:
    return [BB, "sh", "-c", script]


def status_field(text: str, name: str) -> str:
    match = re.search(rf"^{name}:\s*(\S+)", text, re.M)
    assert match, text
    return match.group(1)


def run_ok(runtime: Runtime, bundles: Bundles, spec: dict[str, object]) -> str:
    result = runtime.run(bundles.make(spec))
    assert result.create == 0, result.err
    assert result.exit == 0, (result.out, result.err, result.raw)
    return result.out


def test_capabilities_no_new_privs_and_seccomp(builtin: Runtime, bundles: Bundles) -> None:
    seccomp = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
    out = run_ok(builtin, bundles, make_spec(
        sh(f"{BB} cat /proc/self/status; {BB} mkdir /tmp/blocked || echo MKDIR-DENIED"),
        linux_seccomp=seccomp))
    expected = sum(1 << CAP_BITS[c] for c in DEFAULT_CAPS)
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status_field(out, field), 16) == expected, field
    assert int(status_field(out, "CapInh"), 16) == 0
    assert int(status_field(out, "CapAmb"), 16) == 0
    assert status_field(out, "NoNewPrivs") == "1"
    assert status_field(out, "Seccomp") == "2"
    assert "MKDIR-DENIED" in out


def test_no_new_privs_off_and_no_seccomp(builtin: Runtime, bundles: Bundles) -> None:
    out = run_ok(builtin, bundles, make_spec([BB, "cat", "/proc/self/status"], process_noNewPrivileges=False))
    assert status_field(out, "NoNewPrivs") == "0"
    assert status_field(out, "Seccomp") == "0"


def test_seccomp_without_no_new_privs(builtin: Runtime, bundles: Bundles) -> None:
    # loaded while the executor still has CAP_SYS_ADMIN, before the capabilities are dropped
    seccomp = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
    out = run_ok(builtin, bundles, make_spec(
        sh(f"{BB} cat /proc/self/status; {BB} mkdir /tmp/x || echo MKDIR-DENIED"),
        process_noNewPrivileges=False, linux_seccomp=seccomp, process_user={"uid": 1000, "gid": 1000}))
    assert status_field(out, "NoNewPrivs") == "0"
    assert status_field(out, "Seccomp") == "2"
    assert "MKDIR-DENIED" in out


def test_user_groups_and_umask(builtin: Runtime, bundles: Bundles) -> None:
    out = run_ok(builtin, bundles, make_spec(
        sh(f"{BB} id; umask; {BB} cat /proc/self/status"),
        process_user={"uid": 1000, "gid": 1000, "additionalGids": [2000], "umask": 0o027}))
    assert "uid=1000(user) gid=1000(user) groups=2000(extra)" in out
    assert "0027" in out
    # a non-root user keeps no capability across exec (none are ambient)
    assert int(status_field(out, "CapEff"), 16) == 0


def test_hostname_ulimits_and_cwd(builtin: Runtime, bundles: Bundles) -> None:
    out = run_ok(builtin, bundles, make_spec(
        sh(f"{BB} hostname; ulimit -n; ulimit -Hn; {BB} pwd"),
        hostname="crisp-box", process_cwd="/made/for/me",
        process_rlimits=[{"type": "RLIMIT_NOFILE", "soft": 321, "hard": 654}]))
    assert out.split() == ["crisp-box", "321", "654", "/made/for/me"]


def test_pivot_root_hides_the_host(builtin: Runtime, bundles: Bundles, tmp_path: Path) -> None:
    out = run_ok(builtin, bundles, make_spec(sh(f"{BB} cat /proc/self/mountinfo; echo LS; {BB} ls /")))
    mountinfo, _, listing = out.partition("LS\n")
    # field 5 is where each mount is; (field 4, the path inside the source filesystem, names host dirs for binds)
    mounts = [line.split()[4] for line in mountinfo.splitlines()]
    assert mounts[0] == "/"
    # masked and read-only paths are mounts too, where this kernel has them
    extra = {p for p in (*MASKED_PATHS, *READONLY_PATHS) if os.path.exists(p)}
    assert set(mounts) == {"/", "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"} | extra
    assert set(listing.split()) == {p.name for p in (bundles.rootfs).iterdir()}


def test_read_only_and_masked_paths(builtin: Runtime, bundles: Bundles) -> None:
    out = run_ok(builtin, bundles, make_spec(sh(
        f"echo 1 > /proc/sys/kernel/domainname || echo SYS-RO; "
        f"echo 1 > /proc/irq/x || echo IRQ-RO; "
        f"{BB} wc -c /proc/keys /proc/timer_list; echo FIRMWARE=$({BB} ls -A /sys/firmware | {BB} wc -l); "
        f"{BB} touch /rootfs-is-writable && echo ROOT-RW"),
    ))
    assert "SYS-RO" in out and "IRQ-RO" in out
    assert re.search(r"^\s*0 /proc/keys$", out, re.M) and re.search(r"^\s*0 /proc/timer_list$", out, re.M), out
    assert "FIRMWARE=0" in out
    assert "ROOT-RW" in out


def test_read_only_root(builtin: Runtime, bundles: Bundles) -> None:
    out = run_ok(builtin, bundles, make_spec(
        sh(f"{BB} touch /x 2>&1 || echo ROOT-RO; {BB} touch /dev/shm/ok && echo SHM-RW"),
        root={"path": "rootfs", "readonly": True}))
    assert "Read-only file system" in out and "ROOT-RO" in out
    assert "SHM-RW" in out


def test_devices(builtin: Runtime, bundles: Bundles) -> None:
    out = run_ok(builtin, bundles, make_spec(sh(
        f"{BB} ls -l /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty /dev/ptmx /dev/fd; "
        f"{BB} head -c 4 /dev/zero | {BB} wc -c")))
    for dev in ("null", "zero", "full", "random", "urandom", "tty"):
        assert re.search(rf"^crw-rw-rw- .* /dev/{dev}$", out, re.M), (dev, out)
    assert "/dev/ptmx -> pts/ptmx" in out
    assert "/dev/fd -> /proc/self/fd" in out


def test_device_filter(builtin: Runtime, bundles: Bundles) -> None:
    tun = {"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200, "fileMode": 0o666, "uid": 0, "gid": 0}
    probe = sh("(exec 3<>/dev/net/tun) 2>&1 && echo TUN-OPENED; (exec 3<>/dev/null) && echo NULL-OPENED")
    denied = run_ok(builtin, bundles, make_spec(probe, linux_devices=[tun],
                                                linux_resources={"devices": [{"allow": False, "access": "rwm"}]}))
    assert "Operation not permitted" in denied and "TUN-OPENED" not in denied
    assert "NULL-OPENED" in denied
    allowed = run_ok(builtin, bundles, make_spec(probe, linux_devices=[tun], linux_resources={"devices": [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"}]}))
    assert "TUN-OPENED" in allowed and "NULL-OPENED" in allowed


def test_namespaces_are_new_and_joinable(builtin: Runtime, bundles: Bundles) -> None:
    name = f"crisp-t-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        netns = f"/run/netns/{name}"
        spec = make_spec(sh(f"for n in net ipc uts pid mnt; do {BB} readlink /proc/self/ns/$n; done; echo PID=$$"))
        spec["linux"]["namespaces"] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")] + [
            {"type": "network", "path": netns}]
        out = run_ok(builtin, bundles, spec)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)
    inside = dict(re.findall(r"(\w+):\[(\d+)\]", out))
    for kind in ("ipc", "uts", "pid", "mnt"):
        assert inside[kind] != str(os.stat(f"/proc/self/ns/{kind}").st_ino), kind
    # the network namespace is the one given by path: it was pinned, and the container saw its inode
    assert inside["net"] != str(os.stat("/proc/self/ns/net").st_ino)
    assert "PID=1" in out


def test_joining_another_containers_pid_namespace(builtin: Runtime, bundles: Bundles) -> None:
    """A pod's shared PID namespace: the second container joins the first one's by path and sees its processes."""
    first = bundles.make(make_spec([BB, "sleep", "300"]))
    cid = f"crisp-t-{uuid.uuid4().hex[:8]}"
    subprocess.run(builtin.command("create", "--bundle", str(first), "--pid-file", str(first / "pid"), cid),
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        subprocess.run(builtin.command("start", cid), check=True)
        init = int((first / "pid").read_text())
        spec = make_spec(sh(f"echo PID=$$; {BB} ps -o pid,args"))
        spec["linux"]["namespaces"] = [{"type": "pid", "path": f"/proc/{init}/ns/pid"}] + [
            {"type": t} for t in ("ipc", "uts", "mount", "network")]
        out = run_ok(builtin, bundles, spec)
    finally:
        subprocess.run(builtin.command("delete", "--force", cid), capture_output=True)
    assert "PID=1" not in out
    assert re.search(r"^\s*1 .*sleep 300", out, re.M), out


def test_sysctls_in_the_container_namespaces(builtin: Runtime, bundles: Bundles) -> None:
    host = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()
    out = run_ok(builtin, bundles, make_spec(
        sh(f"{BB} cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shm_rmid_forced"),
        linux_sysctl={"net.ipv4.ip_unprivileged_port_start": "80", "kernel.shm_rmid_forced": "1"}))
    assert out.split() == ["80", "1"]
    assert Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text() == host


@pytest.mark.parametrize("sysctl, dropped", [
    ("net.ipv4.ip_forward", "network"),
    ("kernel.shm_rmid_forced", "ipc"),
    ("kernel.panic", None),
])
def test_sysctl_that_would_reach_the_host_is_refused(builtin: Runtime, bundles: Bundles, sysctl: str,
                                                      dropped: str | None) -> None:
    spec = make_spec([BB, "true"], linux_sysctl={sysctl: "1"})
    if dropped:
        spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != dropped]
    result = builtin.run(bundles.make(spec))
    assert result.create != 0
    assert sysctl in result.err
    assert not builtin.root.exists() or not any(builtin.root.iterdir())


def test_overlay_annotation_is_mounted_inside_only(builtin: Runtime, bundles: Bundles, busybox_rootfs: Path,
                                                   tmp_path: Path) -> None:
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    overlay = {"lowerdirs": [str(busybox_rootfs)], "upperdir": str(upper), "workdir": str(work)}
    spec = make_spec(sh(f"echo hi > /written; {BB} grep ' / / ' /proc/self/mountinfo"),
                     annotations={"io.crisp.rootfs.overlay": json.dumps(overlay)})
    bundle = bundles.make(spec, copy_rootfs=False)
    (bundle / "rootfs").mkdir()
    result = builtin.run(bundle)
    assert result.create == 0 and result.exit == 0, result.err
    out = result.out
    assert " - overlay " in out
    assert (upper / "written").read_text() == "hi\n"
    assert not (busybox_rootfs / "written").exists()
    assert str(bundle) not in Path("/proc/self/mountinfo").read_text()


def test_mount_destination_symlink_stays_inside_the_root(builtin: Runtime, bundles: Bundles,
                                                         tmp_path: Path) -> None:
    source = tmp_path / "volume"
    source.mkdir()
    (source / "data").write_text("volume\n")
    spec = make_spec(sh(f"{BB} cat /inside/volume/data"))
    spec["mounts"].append({"destination": "/link/volume", "type": "bind", "source": str(source),
                           "options": ["rbind", "ro"]})
    bundle = bundles.make(spec)
    # a symlink in the image that points out of the root (as seen from the host)
    (bundle / "rootfs/link").symlink_to("../../../../../../../../../inside")
    (bundle / "rootfs/inside").mkdir()
    result = builtin.run(bundle)
    assert result.create == 0 and result.exit == 0, result.err
    assert result.out == "volume\n"
    assert not Path("/inside").exists()
    assert (bundle / "rootfs/inside/volume").is_dir()


def test_recursive_read_only_bind(builtin: Runtime, bundles: Bundles, tmp_path: Path) -> None:
    source = tmp_path / "rro"
    (source / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "crisp-test-rro", str(source / "sub")], check=True)
    try:
        spec = make_spec(sh(f"{BB} touch /v/sub/f 2>&1 || echo SUB-RO; {BB} touch /v/f 2>&1 || echo TOP-RO"))
        spec["mounts"].append({"destination": "/v", "type": "bind", "source": str(source),
                               "options": ["rbind", "rro"]})
        out = run_ok(builtin, bundles, spec)
    finally:
        subprocess.run(["umount", str(source / "sub")], check=True)
    assert "SUB-RO" in out and "TOP-RO" in out


def test_oom_score_adj_is_clamped_not_failed(builtin: Runtime, bundles: Bundles) -> None:
    mine = int(Path("/proc/self/oom_score_adj").read_text())
    out = run_ok(builtin, bundles, make_spec([BB, "cat", "/proc/self/oom_score_adj"], process_oomScoreAdj=-999))
    assert int(out) >= -999
    assert int(out) == max(-999, mine) or int(out) == -999
    out = run_ok(builtin, bundles, make_spec([BB, "cat", "/proc/self/oom_score_adj"], process_oomScoreAdj=500))
    assert int(out) == 500


def test_dynamic_binary_runs(builtin: Runtime, bundles: Bundles) -> None:
    out = run_ok(builtin, bundles, make_spec(["/usr/bin/busybox-dyn", "cat", "/proc/self/status"]))
    assert status_field(out, "NoNewPrivs") == "1"


def test_terminal_over_console_socket(builtin: Runtime, bundles: Bundles, tmp_path: Path) -> None:
    import socket

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock_path = tmp_path / "console.sock"
    listener.bind(str(sock_path))
    listener.listen(1)
    bundle = bundles.make(make_spec(sh(f"{BB} tty; {BB} sleep 30"), process_terminal=True))
    cid = f"crisp-t-{uuid.uuid4().hex[:8]}"
    try:
        create = subprocess.run(builtin.command("create", "--bundle", str(bundle), "--console-socket",
                                                str(sock_path), cid), capture_output=True, text=True)
        assert create.returncode == 0, create.stderr
        conn, _ = listener.accept()
        _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
        master = fds[0]
        subprocess.run(builtin.command("start", cid), check=True)
        data = b""
        deadline = time.monotonic() + 10
        while b"/dev/" not in data and time.monotonic() < deadline:
            data += os.read(master, 1024)
        assert b"/dev/pts/0" in data or b"/dev/console" in data, data
        os.close(master)
        conn.close()
    finally:
        listener.close()
        subprocess.run(builtin.command("delete", "--force", cid), capture_output=True)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("spec_change, message", [
    ({"args": ["/bin/foo"]}, 'exec: "/bin/foo": no such file or directory'),
    ({"args": ["nosuchprogram"]}, 'exec: "nosuchprogram": executable file not found in $PATH'),
    ({"args": ["/etc/passwd"]}, 'exec: "/etc/passwd": permission denied'),
    ({"cwd": "/etc/passwd"}, "cwd '/etc/passwd' set in config.json cannot be made a directory"),
    ({"cwd": "relative"}, "process.cwd: 'relative' must be an absolute path"),
    ({"user": {"uid": -1, "gid": 0}}, "process.user.uid: -1 is out of range"),
    ({"user": {"uid": "bob", "gid": 0}}, "process.user.uid: expected an integer"),
])
def test_clear_errors_and_nothing_left(builtin: Runtime, bundles: Bundles, spec_change: dict[str, object],
                                       message: str) -> None:
    spec = make_spec([BB, "true"])
    spec["process"].update(spec_change)
    cid = f"crisp-t-{uuid.uuid4().hex[:8]}"
    result = builtin.run(bundles.make(spec), cid)
    assert result.create != 0
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert message in lines[0]
    assert not builtin.root.exists() or not any(builtin.root.iterdir())
    assert not _cgroup_dir(cid).exists()


# ---------------------------------------------------------------------------------------------- lifecycle


def _wait_status(runtime: Runtime, cid: str, want: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while True:
        state = json.loads(subprocess.run(runtime.command("state", cid), capture_output=True, text=True,
                                          check=True).stdout)
        if state["status"] == want or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def test_lifecycle_state_kill_delete_leaves_nothing(builtin: Runtime, bundles: Bundles) -> None:
    bundle = bundles.make(make_spec([BB, "sleep", "300"]))
    cid = f"crisp-t-{uuid.uuid4().hex[:8]}"
    pid_file = bundle / "pid"
    subprocess.run(builtin.command("create", "--bundle", str(bundle), "--pid-file", str(pid_file), cid),
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = int(pid_file.read_text())
    state = _wait_status(builtin, cid, "created")
    assert state["status"] == "created" and state["pid"] == pid and state["bundle"] == str(bundle)
    assert state["rootfs"] == str(bundle / "rootfs")
    again = subprocess.run(builtin.command("create", "--bundle", str(bundle), cid), capture_output=True, text=True)
    assert again.returncode != 0 and "already exists" in again.stderr
    subprocess.run(builtin.command("start", cid), check=True)
    assert _wait_status(builtin, cid, "running")["status"] == "running"
    refused = subprocess.run(builtin.command("delete", cid), capture_output=True, text=True)
    assert refused.returncode != 0 and "running" in refused.stderr
    cgroup_dir = _cgroup_dir(cid)
    assert str(pid) in (cgroup_dir / "cgroup.procs").read_text()
    subprocess.run(builtin.command("kill", cid, "KILL"), check=True)
    assert _wait_status(builtin, cid, "stopped")["status"] == "stopped"
    subprocess.run(builtin.command("delete", cid), check=True)
    assert not (builtin.root / cid).exists()
    assert not cgroup_dir.exists()
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    missing = subprocess.run(builtin.command("state", cid), capture_output=True, text=True)
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def _cgroup_dir(cid: str) -> Path:
    return CgroupV2Manager.discover().mount / f"crisp-{cid}"


def test_kill_all_reaches_every_process_of_the_cgroup(builtin: Runtime, bundles: Bundles) -> None:
    # the init ignores SIGTERM... as PID 1 without a handler does; its child does not
    bundle = bundles.make(make_spec(sh(f"{BB} sleep 300 & {BB} sleep 301; wait")))
    cid = f"crisp-t-{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run(builtin.command("create", "--bundle", str(bundle), "--pid-file", str(bundle / "pid"), cid),
                       check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(builtin.command("start", cid), check=True)
        procs = _cgroup_dir(cid) / "cgroup.procs"
        deadline = time.monotonic() + 10
        while len(procs.read_text().split()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(procs.read_text().split()) == 3
        subprocess.run(builtin.command("kill", "--all", cid, "SIGKILL"), check=True)
        assert procs.read_text().split() == []
        assert _wait_status(builtin, cid, "stopped")["status"] == "stopped"
        unknown = subprocess.run(builtin.command("kill", cid, "SIGNOPE"), capture_output=True, text=True)
        assert unknown.returncode != 0 and "unknown signal" in unknown.stderr
    finally:
        subprocess.run(builtin.command("delete", "--force", cid), capture_output=True)
    assert not _cgroup_dir(cid).exists()


def test_update_changes_the_limits_of_a_live_container(builtin: Runtime, bundles: Bundles, tmp_path: Path) -> None:
    """`update --resources F ID`, as runc has it: the limits of a created or running container, required as at
    create (a limit whose controller is missing fails), never its device rules, nothing for a stopped one."""
    bundle = bundles.make(make_spec([BB, "sleep", "300"]))
    cid = f"crisp-t-{uuid.uuid4().hex[:8]}"
    resources = tmp_path / "resources.json"

    def update(limits: dict[str, object]) -> subprocess.CompletedProcess[str]:
        resources.write_text(json.dumps(limits))
        return subprocess.run(builtin.command("update", "--resources", str(resources), cid), capture_output=True,
                              text=True)

    try:
        subprocess.run(builtin.command("create", "--bundle", str(bundle), "--pid-file", str(bundle / "pid"), cid),
                       check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # core cgroup files need no controller: this host has them too
        assert update({"unified": {"cgroup.max.descendants": "7"}}).returncode == 0
        assert (_cgroup_dir(cid) / "cgroup.max.descendants").read_text().strip() == "7"
        subprocess.run(builtin.command("start", cid), check=True)
        assert update({"unified": {"cgroup.max.descendants": "9"}}).returncode == 0
        assert (_cgroup_dir(cid) / "cgroup.max.descendants").read_text().strip() == "9"
        if "pids" not in (_cgroup_dir(cid).parent / "cgroup.subtree_control").read_text().split():
            refused = update({"pids": {"limit": 10}})
            assert refused.returncode != 0 and "no controller" in refused.stderr
        refused = update({"devices": [{"allow": True, "access": "rwm"}]})
        assert refused.returncode != 0 and "device rules" in refused.stderr
        subprocess.run(builtin.command("kill", cid, "KILL"), check=True)
        assert _wait_status(builtin, cid, "stopped")["status"] == "stopped"
        refused = update({"unified": {"cgroup.max.descendants": "3"}})
        assert refused.returncode != 0 and "stopped" in refused.stderr
    finally:
        subprocess.run(builtin.command("delete", "--force", cid), capture_output=True)
    assert not _cgroup_dir(cid).exists()


def test_delete_force_of_a_created_container(builtin: Runtime, bundles: Bundles) -> None:
    bundle = bundles.make(make_spec([BB, "sleep", "300"]))
    cid = f"crisp-t-{uuid.uuid4().hex[:8]}"
    subprocess.run(builtin.command("create", "--bundle", str(bundle), "--pid-file", str(bundle / "pid"), cid),
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = int((bundle / "pid").read_text())
    subprocess.run(builtin.command("delete", "--force", cid), check=True)
    assert not (builtin.root / cid).exists() and not _cgroup_dir(cid).exists()
    time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_created_init_reaches_no_host_binary_through_proc_self_exe(builtin: Runtime, bundles: Bundles) -> None:
    """crisp-executor as a program re-execs itself from a sealed copy of its interpreter before `create` forks (as
    runc does): the waiting init's /proc/self/exe, what a `#!/proc/self/exe` entrypoint would run, is that copy."""
    bundle = bundles.make(make_spec([BB, "sleep", "300"]))
    cid = f"crisp-t-{uuid.uuid4().hex[:8]}"
    subprocess.run(builtin.command("create", "--bundle", str(bundle), "--pid-file", str(bundle / "pid"), cid),
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    init = int((bundle / "pid").read_text())
    assert os.readlink(f"/proc/{init}/exe").startswith("/memfd:crisp-python")
    fd = os.open(f"/proc/{init}/exe", os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert sealed.is_sealed(fd)
    finally:
        os.close(fd)
    subprocess.run(builtin.command("delete", "--force", cid), check=True)


# ---------------------------------------------------------------------------------------------- exec


def test_exec_has_the_container_identity(builtin: Runtime, bundles: Bundles) -> None:
    seccomp = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
    spec = make_spec([BB, "sleep", "300"], linux_seccomp=seccomp,
                     process_user={"uid": 1000, "gid": 1000, "additionalGids": [2000]})
    bundle = bundles.make(spec)
    cid = f"crisp-t-{uuid.uuid4().hex[:8]}"
    subprocess.run(builtin.command("create", "--bundle", str(bundle), "--pid-file", str(bundle / "pid"), cid),
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        subprocess.run(builtin.command("start", cid), check=True)
        init = int((bundle / "pid").read_text())
        process = dict(spec["process"])
        process["args"] = sh(f"{BB} id; for n in mnt pid net ipc uts; do {BB} readlink /proc/self/ns/$n; done; "
                             f"{BB} cat /proc/self/status /proc/self/cgroup;"
                             f" {BB} mkdir /tmp/x || echo MKDIR-DENIED; {BB} ls /; exit 7")
        (bundle / "process.json").write_text(json.dumps(process))
        run = subprocess.run(builtin.command("exec", "--process", str(bundle / "process.json"), cid),
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 7, run.stderr
        out = run.stdout
        assert "uid=1000(user) gid=1000(user) groups=2000(extra)" in out
        for kind in ("mnt", "pid", "net", "ipc", "uts"):
            assert f"{kind}:[{os.stat(f'/proc/{init}/ns/{kind}').st_ino}]" in out, kind
        assert status_field(out, "NoNewPrivs") == "1" and status_field(out, "Seccomp") == "2"
        assert "MKDIR-DENIED" in out
        assert Path(f"/proc/{init}/cgroup").read_text().split("\n")[0].split(":")[-1] in out
        assert "busybox-dyn" not in out and "home" in out  # the container's root
        missing = dict(process, args=["/nope"])
        (bundle / "process.json").write_text(json.dumps(missing))
        bad = subprocess.run(builtin.command("exec", "--process", str(bundle / "process.json"), cid),
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode != 0 and 'exec: "/nope": no such file or directory' in bad.stderr
        detached = dict(process, args=[BB, "sleep", "60"])
        (bundle / "process.json").write_text(json.dumps(detached))
        # the detached process keeps the stdio it is given (the shim's pipes): a file here, not our pipe
        with open(bundle / "exec.err", "w") as err:
            run = subprocess.run(builtin.command("exec", "--detach", "--pid-file", str(bundle / "exec.pid"),
                                                 "--process", str(bundle / "process.json"), cid),
                                 stdin=subprocess.DEVNULL, stdout=err, stderr=err, timeout=60)
        assert run.returncode == 0, (bundle / "exec.err").read_text()
        exec_pid = int((bundle / "exec.pid").read_text())
        assert os.stat(f"/proc/{exec_pid}/ns/pid").st_ino == os.stat(f"/proc/{init}/ns/pid").st_ino
        assert str(exec_pid) in (_cgroup_dir(cid) / "cgroup.procs").read_text()
        os.kill(exec_pid, 9)
        os.waitpid(exec_pid, 0)  # we are its subreaper, as the shim is
    finally:
        subprocess.run(builtin.command("delete", "--force", cid), capture_output=True)
    assert not _cgroup_dir(cid).exists()
