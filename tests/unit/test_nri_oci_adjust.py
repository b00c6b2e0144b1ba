"""A merged NRI adjustment applied to an OCI spec: removals, replacements, additions, and the fields crisp refuses
by name."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from runtime import errors
from runtime.nri import api
from runtime.nri.oci_adjust import apply_adjustment


def _spec() -> dict[str, Any]:
    return {"process": {"args": ["sh"], "env": ["PATH=/bin", "DROP=1", "KEEP=2"],
                        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]},
            "annotations": {"gone": "x", "kept": "y"},
            "mounts": [{"destination": "/proc", "type": "proc"}, {"destination": "/old", "source": "/tmp"}],
            "linux": {"devices": [{"path": "/dev/old", "type": "c", "major": 1, "minor": 5}],
                      "resources": {"devices": [{"allow": False, "access": "rwm"}]}}}


def _adjust(doc: dict[str, Any]) -> Any:
    adjust = api.ContainerAdjustment()
    json_format.ParseDict(doc, adjust)
    return adjust


def test_apply_adjustment() -> None:
    spec = _spec()
    cdi = apply_adjustment(spec, _adjust({
        "annotations": {"-gone": "", "new": "z"},
        "env": [{"key": "-DROP"}, {"key": "KEEP", "value": "changed"}, {"key": "ADDED", "value": "1"}],
        "args": ["echo", "adjusted"],
        "hooks": {"poststart": [{"path": "/bin/true", "timeout": {"value": 3}}]},
        "mounts": [{"destination": "-/old"}, {"destination": "/a/b", "source": "/srv", "options": ["rbind"]},
                   {"destination": "/a", "source": "/tmp", "type": "bind"}],
        "linux": {"devices": [{"path": "-/dev/old"}, {"path": "/dev/new", "type": "c", "major": 10, "minor": 200,
                                                      "fileMode": {"value": 0o600}}],
                  "resources": {"memory": {"limit": {"value": 1 << 30}}, "cpu": {"shares": {"value": 512}},
                                "pids": {"limit": 100}},
                  "oomScoreAdj": {"value": 500}, "sysctl": {"net.ipv4.ip_forward": "1"}},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 5}],
        "CDIDevices": [{"name": "vendor.com/gpu=0"}],
    }))
    assert cdi == ["vendor.com/gpu=0"]
    assert spec["annotations"] == {"kept": "y", "new": "z"}
    assert spec["process"]["env"] == ["PATH=/bin", "KEEP=changed", "ADDED=1"]
    assert spec["process"]["args"] == ["echo", "adjusted"]
    assert spec["process"]["oomScoreAdj"] == 500
    assert spec["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 5}]
    assert spec["hooks"] == {"poststart": [{"path": "/bin/true", "timeout": 3}]}
    assert [m["destination"] for m in spec["mounts"]] == ["/proc", "/a", "/a/b"]
    assert spec["linux"]["devices"] == [{"path": "/dev/new", "type": "c", "major": 10, "minor": 200,
                                         "fileMode": 0o600}]
    assert spec["linux"]["resources"]["devices"][-1] == {"allow": True, "type": "c", "major": 10, "minor": 200,
                                                         "access": "rwm"}
    assert spec["linux"]["resources"]["memory"] == {"limit": 1 << 30, "swap": 1 << 30}
    assert spec["linux"]["resources"]["cpu"] == {"shares": 512}
    assert spec["linux"]["resources"]["pids"] == {"limit": 100}
    assert spec["linux"]["sysctl"] == {"net.ipv4.ip_forward": "1"}


@pytest.mark.parametrize(("doc", "field"), [
    ({"linux": {"seccompPolicy": {"defaultAction": "SCMP_ACT_ALLOW"}}}, "linux.seccomp_policy"),
    ({"linux": {"namespaces": [{"type": "network", "path": "/x"}]}}, "linux.namespaces"),
    ({"linux": {"resources": {"memory": {"swappiness": {"value": 10}}}}}, "linux.resources.memory.swappiness"),
    ({"linux": {"scheduler": {"policy": "SCHED_FIFO"}}}, "linux.scheduler"),
    ({"linux": {"netDevices": {"eth1": {"name": "net1"}}}}, "linux.net_devices"),
])
def test_what_crisp_cannot_apply_is_refused_by_name(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=f"NRI adjustment of {field}"):
        apply_adjustment(_spec(), _adjust(doc))
