"""The eBPF device filter, enforced by this host's kernel on a process in the cgroup."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.cgroups import DeviceRule, rules_from_oci
from runtime.cgroups.ebpf import attached_programs
from tests.integration.cgroups.conftest import Sandbox

pytestmark = pytest.mark.root

PROBE = """
import json, os, sys
results = {}
for spec in json.loads(sys.argv[1]):
    path, flags = spec
    try:
        os.close(os.open(path, getattr(os, flags)))
        results[path + ' ' + flags] = 'ok'
    except OSError as e:
        results[path + ' ' + flags] = e.errno
for path, major, minor in json.loads(sys.argv[2]):
    try:
        os.mknod(path, 0o600 | 0o020000, os.makedev(major, minor))
        results['mknod ' + path] = 'ok'
    except OSError as e:
        results['mknod ' + path] = e.errno
print(json.dumps(results), flush=True)
"""


def _run_in(cgroups: Sandbox, path: str, opens: list[tuple[str, str]], mknods: list[tuple[str, int, int]]) -> dict:
    """Start a probe, move it into the cgroup, then let it open devices; its results by "path flags"."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys\nsys.stdin.readline()\n" + PROBE, json.dumps(opens), json.dumps(mknods)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, close_fds=True,
    )
    cgroups.procs.append(proc)
    cgroups.manager.open(path).add_process(proc.pid)
    out, _ = proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0
    return dict(json.loads(out))


def _node(tmp: Path, name: str, major: int, minor: int) -> str:
    path = tmp / name
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(major, minor))
    return str(path)


@pytest.fixture
def devdir(tmp_path: Path) -> Path:
    if "nodev" in _mount_options(tmp_path):
        pytest.skip(f"{tmp_path} is mounted nodev")
    return tmp_path


def _mount_options(path: Path) -> str:
    best, options = "", ""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if str(path).startswith(fields[4]) and len(fields[4]) >= len(best):
            best, options = fields[4], fields[5]
    return options


def test_default_rules_allow_the_basics_and_deny_the_rest(cgroups: Sandbox, devdir: Path) -> None:
    path = cgroups.path("crisp-dev")
    cg = cgroups.manager.create(path)
    # what a spec for an unprivileged container says: deny everything (runc's defaults come after)
    cg.set_device_filter(rules_from_oci([{"allow": False, "access": "rwm"}]))
    kmsg = _node(devdir, "kmsg", 1, 11)  # a real device, not on the list
    full = _node(devdir, "full", 1, 7)  # a copy of /dev/full: listed
    made_up = _node(devdir, "madeup", 240, 7)  # no such driver: ENXIO outside the cgroup
    results = _run_in(
        cgroups, path,
        [("/dev/null", "O_RDWR"), ("/dev/zero", "O_RDONLY"), ("/dev/urandom", "O_RDONLY"), (full, "O_RDWR"),
         (kmsg, "O_RDONLY"), (made_up, "O_RDONLY")],
        [(str(devdir / "new-null"), 1, 3), (str(devdir / "new-odd"), 240, 8)],
    )
    assert results["/dev/null O_RDWR"] == "ok"
    assert results["/dev/zero O_RDONLY"] == "ok"
    assert results["/dev/urandom O_RDONLY"] == "ok"
    assert results[f"{full} O_RDWR"] == "ok"
    assert results[f"{kmsg} O_RDONLY"] == 1  # EPERM
    assert results[f"{made_up} O_RDONLY"] == 1  # EPERM, not ENXIO: the filter said no before the driver lookup
    assert results[f"mknod {devdir}/new-null"] == "ok"  # mknod of any char device is allowed
    assert results[f"mknod {devdir}/new-odd"] == "ok"
    # the control: outside the cgroup the same nodes open (or fail for their own reasons)
    os.close(os.open(kmsg, os.O_RDONLY))
    with pytest.raises(OSError) as exc:
        os.open(made_up, os.O_RDONLY)
    assert exc.value.errno == 6  # ENXIO


def test_only_listed_access_is_allowed(cgroups: Sandbox, devdir: Path) -> None:
    path = cgroups.path("crisp-dev-ro")
    cg = cgroups.manager.create(path)
    cg.set_device_filter([DeviceRule(allow=True, type="c", major=1, minor=3, access="r")], defaults=False)
    full = _node(devdir, "full", 1, 7)
    results = _run_in(
        cgroups, path,
        [("/dev/null", "O_RDONLY"), ("/dev/null", "O_WRONLY"), ("/dev/null", "O_RDWR"), (full, "O_RDONLY")],
        [(str(devdir / "new-null"), 1, 3)],
    )
    assert results["/dev/null O_RDONLY"] == "ok"
    assert results["/dev/null O_WRONLY"] == 1
    assert results["/dev/null O_RDWR"] == 1
    assert results[f"{full} O_RDONLY"] == 1
    assert results[f"mknod {devdir}/new-null"] == 1  # no "m" anywhere, and no defaults


def test_a_later_deny_punches_a_hole_in_an_earlier_allow(cgroups: Sandbox, devdir: Path) -> None:
    path = cgroups.path("crisp-dev-hole")
    cg = cgroups.manager.create(path)
    cg.set_device_filter(
        rules_from_oci([
            {"allow": True, "type": "c", "access": "rwm"},
            {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "w"},
        ]),
        defaults=False,
    )
    results = _run_in(cgroups, path, [("/dev/null", "O_RDONLY"), ("/dev/null", "O_WRONLY"), ("/dev/zero", "O_RDWR")],
                      [])
    assert results == {"/dev/null O_RDONLY": "ok", "/dev/null O_WRONLY": 1, "/dev/zero O_RDWR": "ok"}


def test_privileged_allow_all(cgroups: Sandbox, devdir: Path) -> None:
    path = cgroups.path("crisp-dev-all")
    cg = cgroups.manager.create(path)
    cg.set_device_filter(rules_from_oci([{"allow": True, "access": "rwm"}]))
    kmsg = _node(devdir, "kmsg", 1, 11)
    results = _run_in(cgroups, path, [(kmsg, "O_RDONLY")], [])
    assert results == {f"{kmsg} O_RDONLY": "ok"}


def test_replacing_the_filter_leaves_one_program(cgroups: Sandbox, devdir: Path) -> None:
    path = cgroups.path("crisp-dev-swap")
    cg = cgroups.manager.create(path)
    cg.set_device_filter([DeviceRule(allow=True, type="c", major=1, minor=3, access="rw")], defaults=False)
    fd = os.open(cg.dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        first = attached_programs(fd)
        cg.set_device_filter([DeviceRule(allow=True, type="c", major=1, minor=5, access="rw")], defaults=False)
        second = attached_programs(fd)
    finally:
        os.close(fd)
    assert len(first) == 1 and len(second) == 1 and first != second
    results = _run_in(cgroups, path, [("/dev/null", "O_RDONLY"), ("/dev/zero", "O_RDONLY")], [])
    assert results == {"/dev/null O_RDONLY": 1, "/dev/zero O_RDONLY": "ok"}


def test_the_filter_covers_child_cgroups(cgroups: Sandbox) -> None:
    pod = cgroups.manager.create(cgroups.path("crisp-dev-pod"))
    child = cgroups.path("crisp-dev-pod", "crisp-c")
    cgroups.manager.create(child)
    pod.set_device_filter([DeviceRule(allow=False, type="c", major=1, minor=5)])  # + defaults, which allow 1:5
    pod.set_device_filter([DeviceRule(allow=True, type="c", major=1, minor=3)], defaults=False)
    results = _run_in(cgroups, child, [("/dev/null", "O_RDONLY"), ("/dev/zero", "O_RDONLY")], [])
    assert results == {"/dev/null O_RDONLY": "ok", "/dev/zero O_RDONLY": 1}
