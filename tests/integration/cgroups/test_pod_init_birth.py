"""The pod init's worker (runtime/namespaces/forked.py) forks PID 1 straight into the cgroup it is given: nobody
moves it afterwards (crispd's write to cgroup.procs waits for an RCU grace period)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from runtime.procs import process_start_time
from tests.integration.cgroups.conftest import Sandbox

# the worker's body runs in a process of its own, as in the zygote's fork: it unshares a PID namespace
WORKER = ("import json, sys\nfrom runtime.namespaces import forked\n"
          "print(json.dumps(forked.start_pod_init(json.loads(sys.argv[1]))))")


def test_pod_init_is_born_in_the_cgroup_it_is_given(cgroups: Sandbox, tmp_path: Path) -> None:
    leaf = cgroups.manager.create(cgroups.path("podinit"))
    request = {"log": str(tmp_path / "podinit.log"), "userns": "", "cgroup": str(leaf.dir)}
    out = subprocess.run([sys.executable, "-c", WORKER, json.dumps(request)], check=True, capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[3], timeout=30).stdout
    answer = json.loads(out)
    assert answer["ok"], answer
    pid = int(answer["pid"])
    assert process_start_time(pid) is not None
    assert leaf.procs() == [pid]
    assert f"0::{leaf.path}" in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "catatonit"
    # the fixture kills what is left in its subtree (PID 1 with it)


def test_pod_init_without_a_cgroup_stays_where_its_worker_is(cgroups: Sandbox, tmp_path: Path) -> None:
    worker_cgroup = cgroups.manager.create(cgroups.path("worker"))
    request = {"log": str(tmp_path / "podinit.log"), "userns": ""}
    code = f"import os\nopen('{worker_cgroup.dir}/cgroup.procs', 'w').write(str(os.getpid()))\n"
    out = subprocess.run([sys.executable, "-c", code + WORKER, json.dumps(request)], check=True, capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[3], timeout=30).stdout
    answer = json.loads(out)
    assert answer["ok"], answer
    assert worker_cgroup.procs() == [int(answer["pid"])]
