"""The pod init's worker (runtime/namespaces/forked.py) forks PID 1 straight into the cgroup it is given, and says
whether it did: nobody moves it afterwards (crispd's write to cgroup.procs waits for an RCU grace period), and
crispd's cgroupfs driver skips its placement (no mkdir of the leaf, no read of its cgroup.procs). When the kernel
refuses the birth, PID 1 starts where the worker is and the driver moves it into the leaf, as it always did."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from cri.cgroup_driver import CgroupDriver
from cri.config import CgroupConfig
from runtime.cgroups import Cgroup, CgroupV2Manager
from runtime.procs import process_start_time
from tests.integration.cgroups.conftest import Sandbox

# the worker's body runs in a process of its own, as in the zygote's fork: it unshares a PID namespace
WORKER = ("import json, sys\nfrom runtime.namespaces import forked\n"
          "print(json.dumps(forked.start_pod_init(json.loads(sys.argv[1]))))")
# what a kernel without clone3 (or a seccomp profile that denies it) answers: the worker falls back to fork
REFUSE_CLONE3 = ("import errno\nfrom runtime.linux.syscalls import libseccomp as scmp\n"
                 "refuse = scmp.SeccompFilter(scmp.SCMP_ACT_ALLOW)\n"
                 "refuse.add_rule(scmp.scmp_act_errno(errno.ENOSYS), scmp.seccomp_syscall_number('clone3'), [])\n"
                 "refuse.load()\n")
SANDBOX_ID = "0123456789abcdef" * 4


def _start_pod_init(request: dict[str, Any], prelude: str = "") -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", prelude + WORKER, json.dumps(request)], check=True,
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[3], timeout=30).stdout
    answer: dict[str, Any] = json.loads(out)
    assert answer["ok"], answer
    return answer


def _in(cgroup: Cgroup) -> str:
    """The worker's first step: into `cgroup` (so that it is known where a PID 1 it does not bear elsewhere starts)."""
    return f"import os\nopen('{cgroup.dir}/cgroup.procs', 'w').write(str(os.getpid()))\n"


def _driver(cgroups: Sandbox) -> tuple[CgroupDriver, list[str]]:
    """crispd's cgroupfs driver over the test's subtree, and a list that records each use of its cgroup manager."""
    uses: list[str] = []

    def manager() -> CgroupV2Manager:
        uses.append("manager")
        return cgroups.manager

    return CgroupDriver(CgroupConfig(driver="cgroupfs", base=cgroups.base.path), manager), uses


def test_pod_init_born_in_its_leaf_is_left_there(cgroups: Sandbox, tmp_path: Path) -> None:
    driver, uses = _driver(cgroups)
    pod = cgroups.path("pod")
    worker_cgroup = cgroups.manager.create(cgroups.path("worker"))
    birthplace = asyncio.run(driver.pod_init_birthplace(pod, SANDBOX_ID))
    leaf = cgroups.manager.cgroup(driver.layout.leaf(pod, SANDBOX_ID))
    assert birthplace == str(leaf.dir)
    answer = _start_pod_init({"log": str(tmp_path / "podinit.log"), "userns": "", "cgroup": birthplace},
                             _in(worker_cgroup))
    pid = int(answer["pid"])
    assert answer["born_in_cgroup"] is True
    assert process_start_time(pid) is not None
    assert leaf.procs() == [pid] and worker_cgroup.procs() == []
    assert f"0::{leaf.path}" in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "catatonit"
    uses.clear()
    asyncio.run(driver.place_pod_init(pod, SANDBOX_ID, pid, answer["born_in_cgroup"]))
    assert uses == []  # skipped: the leaf is not made again, its cgroup.procs not read
    assert leaf.procs() == [pid]
    # the fixture kills what is left in its subtree (PID 1 with it)


def test_pod_init_the_kernel_would_not_bear_in_its_leaf_is_moved_there(cgroups: Sandbox, tmp_path: Path) -> None:
    driver, uses = _driver(cgroups)
    pod = cgroups.path("pod")
    worker_cgroup = cgroups.manager.create(cgroups.path("worker"))
    birthplace = asyncio.run(driver.pod_init_birthplace(pod, SANDBOX_ID))
    leaf = cgroups.manager.cgroup(driver.layout.leaf(pod, SANDBOX_ID))
    answer = _start_pod_init({"log": str(tmp_path / "podinit.log"), "userns": "", "cgroup": birthplace},
                             _in(worker_cgroup) + REFUSE_CLONE3)
    pid = int(answer["pid"])
    assert answer["born_in_cgroup"] is False
    assert worker_cgroup.procs() == [pid] and leaf.procs() == []
    uses.clear()
    asyncio.run(driver.place_pod_init(pod, SANDBOX_ID, pid, answer["born_in_cgroup"]))
    assert uses  # placed, as before
    assert leaf.procs() == [pid] and worker_cgroup.procs() == []


def test_pod_init_without_a_cgroup_stays_where_its_worker_is(cgroups: Sandbox, tmp_path: Path) -> None:
    worker_cgroup = cgroups.manager.create(cgroups.path("worker"))
    answer = _start_pod_init({"log": str(tmp_path / "podinit.log"), "userns": ""}, _in(worker_cgroup))
    assert answer["born_in_cgroup"] is False
    assert worker_cgroup.procs() == [int(answer["pid"])]
