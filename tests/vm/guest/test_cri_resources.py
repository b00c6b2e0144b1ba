"""CRI values all the way to the kernel: a ContainerConfig's LinuxContainerResources, turned into an OCI spec by
cri/oci, applied by crisp's cgroup code and, for the same spec, by runc: the cgroup files are the ones the CRI
values mean, the same as runc's (but cpu.weight, see test_differential), and the spec's device rules hold."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cri import api as pb
from cri.oci import NodeFacts, PodContext, SpecInputs, build_container_spec
from runtime.cgroups import Cgroup, CgroupV2Manager, paths, rules_from_oci
from tests.vm.guest.support import BUSYBOX, OciRuntime, busybox_rootfs, release, start_held

MiB = 1 << 20
NODE = pb.NamespaceMode.NODE
CONTAINER = pb.NamespaceMode.CONTAINER
CRI_RESOURCES = pb.LinuxContainerResources(
    cpu_shares=512, cpu_quota=20000, cpu_period=100000, memory_limit_in_bytes=32 * MiB, cpuset_cpus="0",
    cpuset_mems="0", hugepage_limits=[pb.HugepageLimit(page_size="2MB", limit=4 * MiB)],
    unified={"memory.high": str(24 * MiB)},
)
EXPECTED = {  # what those CRI values mean in cgroup v2 files
    "cpu.weight": "59",  # shares 512 on the log-quadratic curve (1024 -> 100)
    "cpu.max": "20000 100000",
    "memory.max": str(32 * MiB),
    "memory.swap.max": "0",  # no swap limit asked for: no swap at all (memory+swap = memory)
    "memory.high": str(24 * MiB),
    "cpuset.cpus": "0",
    "cpuset.mems": "0",
    "hugetlb.2MB.max": str(4 * MiB),
}


def container_spec(container_id: str, pod_cgroup: str, rootfs: Path, args: list[str]) -> dict[str, Any]:
    """The OCI spec cri/oci builds for a container of a pod on the host's network and IPC namespaces (so that no
    namespace needs pinning here), with CRI_RESOURCES."""
    sandbox = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="pod", namespace="default", uid="u1"))
    sandbox.linux.security_context.namespace_options.network = NODE
    sandbox.linux.security_context.namespace_options.ipc = NODE
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"), command=args)
    config.linux.resources.CopyFrom(CRI_RESOURCES)
    config.linux.security_context.namespace_options.network = NODE
    config.linux.security_context.namespace_options.ipc = NODE
    config.linux.security_context.namespace_options.pid = CONTAINER
    return build_container_spec(SpecInputs(
        container_id=container_id, config=config, sandbox_config=sandbox, image_config={},
        pod=PodContext(sandbox_id="pod"), node=NodeFacts.probe(), rootfs_path=str(rootfs),
        cgroup_path=paths.container_cgroup_path(pod_cgroup, container_id),
    ))


def files(cgroup_dir: Path) -> dict[str, str]:
    return {name: (cgroup_dir / name).read_text().strip() for name in EXPECTED}


def test_crisp_cgroups_write_what_the_cri_values_mean(base: Cgroup, tmp_path: Path) -> None:
    spec = container_spec("crisp1", f"{base.path}/podu1", tmp_path / "rootfs", ["/bin/sleep", "600"])
    resources = spec["linux"]["resources"]
    manager = CgroupV2Manager.discover()
    cg = manager.create(paths.from_oci(spec["linux"]["cgroupsPath"]))
    assert cg.path == f"{base.path}/podu1/crisp-crisp1"
    assert manager.missing_controllers(resources, cg.path) == []
    cg.apply({key: value for key, value in resources.items() if key != "devices"})
    cg.set_device_filter(rules_from_oci(resources["devices"]))
    assert files(cg.dir) == EXPECTED

    # the spec's device rules: runc's defaults (/dev/null, ...) but nothing else, e.g. /dev/kmsg (1:11)
    probe = start_held([str(BUSYBOX), "sh", "-c", f"{BUSYBOX} head -c 0 /dev/null && echo null-ok; "
                                                  f"{BUSYBOX} head -c 1 /dev/kmsg >/dev/null && echo kmsg-ok; exit 0"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        cg.add_process(probe.pid)
        release(probe)
        out, err = probe.communicate(timeout=60)
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
    assert out.split() == [b"null-ok"]
    assert b"Operation not permitted" in err


def test_runc_writes_the_same_for_the_same_spec(base: Cgroup, tmp_path: Path,
                                                container_ids: Callable[[OciRuntime], str]) -> None:
    runc = OciRuntime("runc", tmp_path / "runc-state")
    container_id = container_ids(runc)
    bundle = tmp_path / "bundle"
    busybox_rootfs(bundle / "rootfs")
    spec = container_spec(container_id, f"{base.path}/podu1", bundle / "rootfs", ["/bin/sleep", "600"])
    (bundle / "config.json").write_text(json.dumps(spec))
    runc.create(container_id, bundle)
    written = files(base.dir / "podu1" / f"crisp-{container_id}")
    assert written.pop("cpu.weight") == "20"  # Debian's runc 1.1.5 still maps shares linearly
    assert written == {key: value for key, value in EXPECTED.items() if key != "cpu.weight"}
