"""Test support for pods and containers: a crispd with its own cgroup base, bridge and subnet, and leak checks."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri import api as cri
from tests.cri.crispd import Crispd, debug_table
from tests.integration.netutil import free_subnet4
from tests.leaks import (
    cgroups_under,
    children_of,
    kill_cgroup_tree,
    mounts_under,
    processes_mentioning,
    processes_using,
    remove_cgroup_tree,
    wait_until,
)

NO_CNI_DIR = "/nonexistent/crisp-test-no-cni"  # the built-in bridge, whatever the host has in /etc/cni/net.d


class Pods:
    """A crispd with its own cgroup base, and the leak checks of everything pods make."""

    def __init__(self, base: Path, extra_config: str = "", name: str = "crispd", cgroup_config: str = "",
                 network: str = "", netns_dir: Path | None = None, debug: bool = True, debug_config: str = "") -> None:
        """`cgroup_config` adds keys to the [cgroup] table (a TOML table is declared once); `network`: more keys of
        the [network] section (`backend = "cni"`, ...); `netns_dir`: where pods' network namespaces get their `ip
        netns` names (default: under `base`, so that a leak is a mount under it); `debug`, `debug_config`: Crispd's
        (`debug_config`: more keys of its [debug] table)."""
        self.cgroup_base = f"/crisp-test-{secrets.token_hex(4)}"
        self.cgroup_config = cgroup_config
        self.bridge = f"crispt{secrets.token_hex(4)}"
        self.subnet = free_subnet4(24)
        self.handler = ""  # the runtime handler pods get unless a test says otherwise
        self.netns_dir = netns_dir or base / f"netns-{name}"
        self.pod_ids: set[str] = set()  # the pods `run` made
        self.daemon = Crispd(base, config=self.config_text(extra_config, network), name=name, debug=debug,
                             debug_config=debug_config)

    def config_text(self, extra: str = "", network: str = "") -> str:
        """crispd's config: this test's own cgroup base, bridge (which also names its nft table) and subnet."""
        cni_dir = "" if "cni_config_dir" in network else f'cni_config_dir = "{NO_CNI_DIR}"\n'
        return (f'[cgroup]\nbase = "{self.cgroup_base}"\n{self.cgroup_config}'
                f'[network]\nbridge = "{self.bridge}"\npod_cidr = "{self.subnet}"\n'
                f'{cni_dir}netns_dir = "{self.netns_dir}"\n{network}\n'
                '[runtime.handlers.runc]\npath = "runc"\n[runtime.handlers.crun]\npath = "crun"\n'
                f'{extra}')

    def rewrite_config(self, extra: str = "", debug_config: str | None = None) -> None:
        """Replace crispd's config with this test's own plus `extra` (the metrics endpoint stays on a free port:
        never crisp's default, which another crispd on the host may hold); with `debug_config` (even ""), a [debug]
        table as a test crispd's (`debug_table`) with those keys."""
        debug = "" if debug_config is None else debug_table(debug_config)
        self.daemon.config_path.write_text('[metrics]\naddress = "127.0.0.1:0"\n' + debug + self.config_text(extra))

    def cleanup_host(self) -> None:
        """What a pod network leaves on the host by design (the bridge, its nft table), and any leftover: after a
        failed test, what still runs (`kill_containers`) and the cgroups it was in."""
        self.kill_containers()
        host = self.daemon.prefix
        subprocess.run([*host, "nft", "delete", "table", "inet", self.bridge], capture_output=True, check=False)
        subprocess.run([*host, "ip", "link", "delete", self.bridge], capture_output=True, check=False)

        def removed() -> bool:
            remove_cgroup_tree(self.cgroup_base)
            return not cgroups_under(self.cgroup_base)

        if not removed():  # what was killed just now leaves its cgroup once the kernel has reaped it
            wait_until(removed, 5)

    def kill_containers(self) -> None:
        """A failed test's last resort (nothing to do after a clean run): SIGKILL every process in this crispd's
        cgroups (containers, pod inits) and every process it left that names its state dir (shims, which outlive
        crispd by design, and their commands); never crispd itself."""
        kill_cgroup_tree(self.cgroup_base)
        running = self.daemon.proc is not None and self.daemon.proc.poll() is None
        crispd = self.daemon.proc.pid if running and self.daemon.proc is not None else None
        for process in processes_mentioning(str(self.daemon.state)):
            pid = int(process.split(":")[0])
            if pid != crispd:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def run(self, config: cri.PodSandboxConfig, handler: str | None = None) -> str:
        handler = self.handler if handler is None else handler
        response = self.daemon.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=config,
                                                                              runtime_handler=handler))
        self.pod_ids.add(response.pod_sandbox_id)
        return str(response.pod_sandbox_id)

    def cleaned_up(self, container_id: str, timeout: float = 15) -> bool:
        """Wait until the cleanup of a removed container is done (RemoveContainer answers before it: its shim,
        mounts, cgroup and dirs go after); whether it was within `timeout` seconds."""
        line = f"container {container_id}: its remains are cleaned up"
        return wait_until(lambda: line in self.daemon.log(), timeout)

    def remove_all_pods(self, timeout: float = 60) -> None:
        """Remove every pod crispd has (RemovePodSandbox stops it first), as a kubelet would at the end."""
        runtime = self.daemon.runtime
        for item in runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=timeout).items:
            runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=item.id), timeout=timeout)

    def leaks(self) -> list[str]:
        """Everything pods and containers make that is still there, as crispd sees it (call it while it runs):
        mounts in its mount namespace (pins, /dev/shm, rootfs), cgroups, processes (pod inits, shims,
        containers), pod and container dirs, the veths and hostPort rules of its network namespace, and the rows
        (pods, containers, names, IP leases)."""
        running = self.daemon.proc is not None and self.daemon.proc.poll() is None
        crispd = str(self.daemon.proc.pid) if running and self.daemon.proc else ""
        left = [f"mount {m}" for m in mounts_under(self.daemon.base, crispd or "self")]
        left += [f"cgroup {c}" for c in cgroups_under(self.cgroup_base)]
        left += [f"process {p}" for p in processes_mentioning(str(self.daemon.state))
                 if p.split(":")[0] != crispd]
        if self.netns_dir.exists():  # a shared dir (/run/netns): only the names of the pods run here
            own = self.netns_dir.is_relative_to(self.daemon.base)
            left += [f"netns name {n}" for n in self.netns_dir.iterdir()
                     if own or n.name.removeprefix("crisp-") in self.pod_ids]
        ours = {int(crispd), *children_of(int(crispd))} if crispd else set()
        left += [f"process {p}" for p in processes_using(self.daemon.base, exclude=ours)]
        for parent in (self.daemon.state / "sandboxes", self.daemon.state / "containers",
                       self.daemon.root / "containers"):
            if parent.exists():
                left += [f"dir {d}" for d in parent.iterdir()]
        left += [f"veth {name}" for name in self.veths()]
        rules = subprocess.run([*self.daemon.prefix, "nft", "list", "table", "inet", self.bridge],
                               capture_output=True, text=True).stdout
        # a pod's hostPort rules are commented `crisp:<sandbox id>` (the bridge's own rules stay, as the table does)
        left += [f"nft rule {line.strip()}" for line in rules.splitlines()
                 if re.search(r'comment "crisp:[^ "]+"', line)]
        left += [f"row {row}" for row in self.rows()]
        return left

    def veths(self) -> list[str]:
        """The ports of crispd's bridge (one veth per pod with a pod network)."""
        ports = subprocess.run([*self.daemon.prefix, "ip", "-o", "link", "show", "master", self.bridge],
                               capture_output=True, text=True).stdout.split("\n")
        return [line.split(":")[1].strip() for line in ports if line.strip()]

    def rows(self) -> list[str]:
        """The pod, container, name, IP lease and container removal rows in crispd's database (images are not a
        pod's)."""
        db = self.daemon.root / "crisp.db"
        if not db.exists():
            return []
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            found = []
            for table, column in (("sandboxes", "id"), ("containers", "id"), ("name_reservations", "name"),
                                  ("ip_leases", "ip"), ("container_removals", "id")):
                found += [f"{table} {value}" for (value,) in conn.execute(f"SELECT {column} FROM {table}")]
            return found
        finally:
            conn.close()


@contextlib.contextmanager
def running_pods(base: Path, extra_config: str = "", start_timeout: float = 30.0,
                 check_slow_callbacks: bool = True, pods: Pods | None = None,
                 cgroup_config: str = "", network: str = "", netns_dir: Path | None = None,
                 debug_config: str = "") -> Iterator[Pods]:
    """A started `Pods` crispd (`pods`, or a new one with `cgroup_config` in its [cgroup] table, `network` in its
    [network] section, pods' `ip netns` names in `netns_dir` and `debug_config` in its [debug] table); afterwards
    every pod is removed, nothing may be left, and crispd must have stopped cleanly without blocking its loop
    (unless `check_slow_callbacks` is false: under the VM tier's emulation every callback is slow)."""
    p = pods if pods is not None else Pods(base, extra_config, cgroup_config=cgroup_config, network=network,
                                           netns_dir=netns_dir, debug_config=debug_config)
    p.daemon.start(start_timeout)
    try:
        yield p
    finally:
        try:
            for item in p.daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items:
                p.daemon.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=item.id))
            leaks = p.leaks()
        finally:
            code = p.daemon.stop()
            for m in reversed(mounts_under(base)):
                subprocess.run(["umount", "-l", m], check=False)
            p.cleanup_host()
    assert leaks == [], leaks
    assert code == 0, p.daemon.log()
    if check_slow_callbacks:
        assert p.daemon.slow_callbacks() == [], p.daemon.log()


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[Pods]:
    with running_pods(tmp_path) as p:
        yield p


def pod_config(name: str = "web", **kwargs: object) -> cri.PodSandboxConfig:
    config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, namespace="default", uid=f"uid-{name}", attempt=0),
        hostname=f"{name}-host", labels={"app": name}, annotations={"note": "x"},
        log_directory="", **kwargs)  # type: ignore[arg-type]
    return config
