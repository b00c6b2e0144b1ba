"""Cgroup path strings and mount discovery from mountinfo text."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime import errors
from runtime.cgroups import find_cgroup2_mount, paths

HYBRID = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PURE = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
"""
ODD = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
50 22 0:40 / /run/my\\040cgroup rw,relatime shared:9 master:2 - cgroup2 none rw
"""


def test_mount_discovery() -> None:
    assert find_cgroup2_mount(HYBRID) == Path("/sys/fs/cgroup/unified")
    assert find_cgroup2_mount(PURE) == Path("/sys/fs/cgroup")
    assert find_cgroup2_mount(ODD) == Path("/run/my cgroup")  # optional fields and escapes handled
    assert find_cgroup2_mount(ODD + PURE.splitlines()[1] + "\n") == Path("/sys/fs/cgroup")
    assert paths.cgroup2_mounts(ODD + PURE) == [Path("/run/my cgroup"), Path("/sys/fs/cgroup")]
    with pytest.raises(errors.FailedPrecondition):
        find_cgroup2_mount(HYBRID.replace("cgroup2", "cgroupX"))
    # what an OCI runtime (which looks only at /sys/fs/cgroup) gets bound there: nothing on a pure v2 node
    assert paths.oci_runtime_bind(find_cgroup2_mount(HYBRID)) == "/sys/fs/cgroup/unified"
    assert paths.oci_runtime_bind(find_cgroup2_mount(PURE)) == ""


def test_normalize() -> None:
    assert paths.normalize("/kubepods/burstable/pod1/") == "/kubepods/burstable/pod1"
    assert paths.normalize("kubepods//pod1") == "/kubepods/pod1"
    assert paths.normalize("") == "/"
    for bad in ("/a/../b", "/a/./b", "/a/cgroup.procs", "/a b", "/a\0b", "/ä"):
        with pytest.raises(errors.InvalidArgument):
            paths.normalize(bad)


def test_layout() -> None:
    assert paths.pod_cgroup_path("/kubepods/burstable/pod123", "123") == "/kubepods/burstable/pod123"
    assert paths.pod_cgroup_path("", "6a1b-22") == "/crisp/pod6a1b-22"
    assert paths.pod_cgroup_path("", "6a1b", base="/crisp-test/x") == "/crisp-test/x/pod6a1b"
    assert paths.container_cgroup_path("/kubepods/pod1", "abc123") == "/kubepods/pod1/crisp-abc123"
    with pytest.raises(errors.InvalidArgument):
        paths.container_cgroup_path("/kubepods/pod1", "../x")
    with pytest.raises(errors.InvalidArgument):
        paths.pod_cgroup_path("", "a/b")


def test_systemd_slices() -> None:
    assert paths.expand_slice("kubepods-burstable-pod12_34.slice") == (
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12_34.slice"
    )
    assert paths.expand_slice("system.slice") == "/system.slice"
    assert paths.expand_slice("-.slice") == "/"
    for bad in ("kubepods", "a--b.slice", "-a.slice", "a/b.slice", ".slice"):
        with pytest.raises(errors.InvalidArgument):
            paths.expand_slice(bad)
    assert paths.resolve_parent("kubepods-besteffort.slice") == "/kubepods.slice/kubepods-besteffort.slice"
    assert paths.resolve_parent("/kubepods/besteffort") == "/kubepods/besteffort"
    assert paths.resolve_parent("kubepods/pod2/") == "/kubepods/pod2"
    with pytest.raises(errors.InvalidArgument):
        paths.resolve_parent("/kubepods/../../etc")
    assert paths.pod_cgroup_path("kubepods-pod9.slice", "9") == "/kubepods.slice/kubepods-pod9.slice"


def test_oci_cgroups_path() -> None:
    assert paths.from_oci("/kubepods/pod1/crisp-abc") == "/kubepods/pod1/crisp-abc"
    assert paths.from_oci("kubepods-pod1.slice:cri-containerd:abc") == (
        "/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope"
    )
    assert paths.from_oci(":crisp:abc") == "/system.slice/crisp-abc.scope"


def test_systemd_driver_layout() -> None:
    uid = "0f2c6b1e-8d4a-4e7f-9c3b-2a1d5e6f7a8b"
    assert paths.pod_slice_name(uid) == "crisp-pod0f2c6b1e_8d4a_4e7f_9c3b_2a1d5e6f7a8b.slice"
    assert paths.systemd_pod_cgroup_path("", uid) == (
        "/crisp.slice/crisp-pod0f2c6b1e_8d4a_4e7f_9c3b_2a1d5e6f7a8b.slice")
    # kind's kubelet (cgroupRoot /kubelet) under the systemd driver
    kubelet = "kubelet-kubepods-burstable-pod0f2c6b1e_8d4a.slice"
    pod = paths.systemd_pod_cgroup_path(kubelet, uid)
    assert pod == ("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/"
                   "kubelet-kubepods-burstable-pod0f2c6b1e_8d4a.slice")
    assert paths.slice_of(pod) == kubelet
    assert paths.systemd_pod_cgroup_path(pod, uid) == pod  # the kubelet sends the slice's path, too
    assert paths.systemd_cgroups_path(pod, "abc123") == f"{kubelet}:crisp:abc123"
    # the OCI form names the scope the container's cgroup path names: one layout, read both ways
    assert paths.from_oci(paths.systemd_cgroups_path(pod, "abc123")) == paths.container_cgroup_path(
        pod, "abc123", systemd=True) == f"{pod}/crisp-abc123.scope"
    assert paths.unit_of(f"{pod}/crisp-abc123.scope") == "crisp-abc123.scope"
    assert paths.unit_of(pod) == kubelet
    assert paths.shim_scope_name("abc123") == "crisp-shim-abc123.scope"
    for cgroupfs in ("/kubepods/burstable/pod1", "/kubepods/kubepods-pod1.slice", "/a.slice/b.slice"):
        with pytest.raises(errors.InvalidArgument, match="cgroupDriver must be systemd"):
            paths.systemd_pod_cgroup_path(cgroupfs, uid)
    for bad in ("a/b", "x.scope/..", ""):
        with pytest.raises(errors.InvalidArgument):
            paths.scope_name(bad)
    with pytest.raises(errors.InvalidArgument):
        paths.unit_of("/crisp/pod1")


def test_layout_per_driver() -> None:
    """One layout per driver: the pod cgroup, a leaf, the spec's cgroupsPath (read back by from_oci as the leaf),
    and which pod cgroups are crisp's own slices."""
    uid = "0f2c6b1e-8d4a"
    cgroupfs = paths.Layout(base="/crisp-base")
    pod = cgroupfs.pod("", uid)
    assert pod == "/crisp-base/pod0f2c6b1e-8d4a"
    assert cgroupfs.leaf(pod, "abc") == cgroupfs.oci(pod, "abc") == "/crisp-base/pod0f2c6b1e-8d4a/crisp-abc"
    assert cgroupfs.pod("kubepods-burstable-pod1.slice", uid) == "/kubepods.slice/kubepods-burstable.slice/" \
        "kubepods-burstable-pod1.slice"
    assert not cgroupfs.crisps_pod_slice(pod)

    systemd = paths.Layout(systemd=True, base="/crisp-base")
    own = systemd.pod("", uid)
    assert own == "/crisp.slice/crisp-pod0f2c6b1e_8d4a.slice"
    assert systemd.crisps_pod_slice(own)
    assert systemd.leaf(own, "abc") == paths.from_oci(systemd.oci(own, "abc")) == f"{own}/crisp-abc.scope"
    assert systemd.oci(own, "abc") == "crisp-pod0f2c6b1e_8d4a.slice:crisp:abc"
    kubelets = systemd.pod("kubepods-burstable-pod1.slice", uid)
    assert not systemd.crisps_pod_slice(kubelets)
    with pytest.raises(errors.InvalidArgument, match="cgroupDriver must be systemd"):
        systemd.pod("/kubepods/burstable/pod1", uid)
