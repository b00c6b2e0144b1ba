"""Differential tests: the same bundle under crisp-executor, runc and crun must look the same from inside.

Not compared: cgroup values (on this hybrid host runc and crun use cgroup v1 for those) and mount propagation
(runc makes the root rslave by default, crisp rprivate as the CRI issue asks; the optional mountinfo fields are
left out).
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import pytest

from tests.executor.conftest import Bundles, Runtime
from tests.executor.rootfs import make_spec

pytestmark = pytest.mark.root

BB = "/bin/busybox"

OBSERVE = f"""
{BB} grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status
echo ID=$({BB} id)
echo HOST=$({BB} hostname)
echo NOFILE=$(ulimit -n):$(ulimit -Hn) UMASK=$(umask) PWD=$({BB} pwd)
echo ROOT=$({BB} ls -A / | {BB} tr '\\n' ' ')
{BB} awk '{{split($0, halves, " - "); split(halves[2], right, " "); print "MOUNT", $5, right[1], $6}}' \
    /proc/self/mountinfo | {BB} sort
{BB} wc -c /proc/keys /proc/timer_list | {BB} grep -v total | {BB} sed 's/^ */MASKED /'
echo FIRMWARE=$({BB} ls -A /sys/firmware | {BB} wc -l)
echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo PROCSYS=rw || echo PROCSYS=ro
{BB} touch /written 2>/dev/null && echo ROOTFS=rw || echo ROOTFS=ro
{BB} ls -ln /dev | {BB} awk '{{print "DEV", $1, $3, $4, $5, $6, $NF}}' | {BB} sort
for s in net.ipv4.ip_unprivileged_port_start kernel.shm_rmid_forced; do
  echo SYSCTL $s=$({BB} cat /proc/sys/$(echo $s | {BB} tr . /))
done
{BB} mkdir /tmp/seccomp-probe 2>/dev/null && echo MKDIR=allowed || echo MKDIR=denied
echo PID=$$
"""


def _observe(runtime: Runtime, bundles: Bundles, spec: dict[str, Any]) -> list[str]:
    result = runtime.run(bundles.make(spec))
    assert result.create == 0, f"{runtime.name}: {result.err}"
    assert result.exit == 0, f"{runtime.name}: {result.out}{result.err}"
    # devpts's pty index and the sizes the kernel reports for /dev/pts are per instance, not per runtime
    return [re.sub(r"\s+", " ", line).strip() for line in result.out.splitlines() if line.strip()]


SECCOMP = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
           "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}

CASES: dict[str, dict[str, Any]] = {
    "root-defaults": {},
    "user-seccomp-sysctls-readonly": {
        "process_user": {"uid": 1000, "gid": 1000, "additionalGids": [2000], "umask": 0o027},
        "process_rlimits": [{"type": "RLIMIT_NOFILE", "soft": 200, "hard": 300}],
        "process_cwd": "/tmp",
        "linux_seccomp": SECCOMP,
        "linux_sysctl": {"net.ipv4.ip_unprivileged_port_start": "100", "kernel.shm_rmid_forced": "1"},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "crisp-diff",
    },
    "no-new-privs-off-caps-added": {
        "process_noNewPrivileges": False,
        "process_capabilities": {k: ["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_KILL"]
                                 for k in ("bounding", "effective", "permitted")},
    },
}


def _coarse(lines: list[str]) -> list[str]:
    """For crun, which differs where the spec leaves room: its read-only paths drop nosuid/nodev/noexec, its masked
    files are the host's /dev/null (devtmpfs, ro) where runc and crisp bind the container's, and it links
    /dev/core even when the kernel has no /proc/kcore, and it chowns /dev/null to a non-root user. Mounts are
    compared by place and ro/rw only."""
    out = []
    for line in lines:
        if line.startswith("MOUNT "):
            _, dest, _, opts = line.split(" ")
            line = f"MOUNT {dest} {opts.split(',')[0]}"
            if dest in ("/proc/keys", "/proc/timer_list"):
                line = f"MOUNT {dest} masked"
        elif line.startswith("DEV ") and line.endswith("/proc/kcore"):
            continue
        elif line.startswith("DEV "):
            parts = line.split(" ")
            line = " ".join([*parts[:2], *parts[4:]])  # crun gives /dev/null to a non-root process user
        out.append(line)
    return sorted(out)


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_bundle_same_container(runtimes: list[Runtime], bundles: Bundles, case: str) -> None:
    spec = make_spec([BB, "sh", "-c", OBSERVE], **CASES[case])
    seen = {runtime.name: _observe(runtime, bundles, spec) for runtime in runtimes}
    reference = seen["crisp"]
    assert "PID=1" in reference and any(line.startswith("CapEff") for line in reference)
    seen["crun"], reference_crun = _coarse(seen["crun"]), _coarse(reference)
    for name, want in (("runc", reference), ("crun", reference_crun)):
        diff = "\n".join(difflib.unified_diff(want, seen[name], "crisp-executor", name, lineterm=""))
        assert seen[name] == want, f"{name} differs from crisp-executor:\n{diff}"
