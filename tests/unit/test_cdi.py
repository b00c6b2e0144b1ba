"""CDI specs written here (JSON and YAML, several versions), resolved from two spec dirs, and injected into an OCI
spec: a /dev/null-backed fake device gets the host node's numbers and an allow rule for the device filter."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from runtime import errors
from runtime.cdi import names
from runtime.cdi.inject import inject
from runtime.cdi.registry import Registry
from runtime.cdi.spec import read_spec

NULL = os.stat("/dev/null")


def _write(path: Path, doc: dict[str, Any] | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _spec(kind: str = "crisp.test/fake", version: str = "0.6.0", **extra: Any) -> dict[str, Any]:
    return {"cdiVersion": version, "kind": kind, "devices": [
        {"name": "fake0", "containerEdits": {"deviceNodes": [{"path": "/dev/fake0", "hostPath": "/dev/null"}],
                                             "env": ["FAKE_DEVICE=0"]}},
        {"name": "fake1", "containerEdits": {"env": ["FAKE_DEVICE=1", "ONLY_ONE=yes"]}},
    ], "containerEdits": {"env": ["FAKE_VENDOR=crisp"], "mounts": [
        {"hostPath": "/tmp", "containerPath": "/opt/fake/lib", "options": ["ro", "rbind"]}]}, **extra}


def _oci() -> dict[str, Any]:
    return {"process": {"env": ["PATH=/bin", "FAKE_DEVICE=old"], "user": {"uid": 1000, "gid": 1000,
                                                                          "additionalGids": [1000]}},
            "mounts": [{"destination": "/proc", "type": "proc"}, {"destination": "/dev/shm", "type": "tmpfs"}],
            "linux": {"resources": {"devices": [{"allow": False, "access": "rwm"}]}}}


def test_json_and_yaml_specs(tmp_path: Path) -> None:
    spec = read_spec(_write(tmp_path / "a.json", _spec()))
    assert (spec.vendor, spec.cls, sorted(spec.devices)) == ("crisp.test", "fake", ["fake0", "fake1"])
    yaml_text = """---
cdiVersion: "1.1.0"
kind: crisp.test/yaml
annotations: {made-by: test}
devices:
  - name: "0"
    containerEdits:
      deviceNodes: [{path: /dev/y0, hostPath: /dev/null, fileMode: 0640, permissions: rw}]
      additionalGids: [5, 0]
"""
    spec = read_spec(_write(tmp_path / "b.yaml", yaml_text))
    node = spec.devices["0"].edits.device_nodes[0]
    assert (node.host_path, node.file_mode, node.permissions) == ("/dev/null", 0o640, "rw")


@pytest.mark.parametrize(("change", "message"), [
    ({"cdiVersion": "0.9.0"}, "unknown cdiVersion"),
    ({"cdiVersion": "0.4.0"}, "need cdiVersion 0.5.0"),  # hostPath
    ({"kind": "nodomain"}, "vendor/class expected"),
    ({"devices": []}, "no devices"),
    ({"unexpected": 1}, "unknown field(s) unexpected"),
    ({"devices": [{"name": "x", "containerEdits": {}}]}, "has no container edits"),
    ({"devices": [{"name": "x", "containerEdits": {"env": ["A=1"]}}] * 2}, "defined more than once"),
    ({"devices": [{"name": "-x", "containerEdits": {"env": ["A=1"]}}]}, "invalid CDI device name"),
    ({"devices": [{"name": "x", "containerEdits": {"env": ["NOEQUALS"]}}]}, "invalid environment variable"),
    ({"devices": [{"name": "x", "containerEdits": {"hooks": [{"hookName": "later", "path": "/x"}]}}]},
     "invalid hook name"),
    ({"devices": [{"name": "x", "containerEdits": {"deviceNodes": [{"path": "/d", "permissions": "rwx"}]}}]},
     "invalid permissions"),
    ({"cdiVersion": "0.6.0", "devices": [{"name": "x", "containerEdits": {"additionalGids": [1]}}]},
     "need cdiVersion 0.7.0"),
    ({"cdiVersion": "1.0.0", "devices": [{"name": "x", "containerEdits": {"netDevices": [
        {"hostInterfaceName": "eth1", "name": "net1"}]}}]}, "need cdiVersion 1.1.0"),
])
def test_bad_specs_are_refused(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_spec(_write(tmp_path / "bad.json", {**_spec(), **change}))


def test_dirs_override_and_conflicts(tmp_path: Path) -> None:
    static, dynamic = tmp_path / "etc", tmp_path / "run"
    _write(static / "vendor.json", _spec(version="0.5.0"))
    registry = Registry((static, dynamic))
    override = _spec()
    override["devices"][1]["containerEdits"]["env"] = ["FROM_RUN=1"]
    _write(dynamic / "vendor.yaml", json.dumps(override))  # JSON is YAML
    resolved = registry.resolve(["crisp.test/fake=fake1"])
    assert resolved.edits[-1].env == ("FROM_RUN=1",)  # /var/run/cdi's definition wins
    # defined twice in one directory: neither, and the error names both files
    _write(dynamic / "again.json", override)
    with pytest.raises(errors.InvalidArgument, match="defined more than once") as raised:
        registry.resolve(["crisp.test/fake=fake1"])
    assert "again.json" in str(raised.value) and "vendor.yaml" in str(raised.value)
    (dynamic / "again.json").unlink()
    _write(dynamic / "broken.json", "{not json")
    with pytest.raises(errors.InvalidArgument, match=r"crisp\.test/fake=nothere") as raised:
        registry.resolve(["crisp.test/fake=fake0", "crisp.test/fake=nothere"])
    assert "broken.json: " in str(raised.value) and "fake=fake0" not in str(raised.value)
    with pytest.raises(errors.InvalidArgument, match="vendor/class=name expected"):
        registry.resolve(["justaname"])


def test_inject_fake_device(tmp_path: Path) -> None:
    _write(tmp_path / "cdi" / "fake.json", _spec())
    resolved = Registry((tmp_path / "cdi",)).resolve(["crisp.test/fake=fake0", "crisp.test/fake=fake1"])
    assert len(resolved.edits) == 3  # the spec's own edits once, then each device's
    spec = _oci()
    inject(spec, resolved)
    assert spec["process"]["env"] == ["PATH=/bin", "FAKE_DEVICE=1", "FAKE_VENDOR=crisp", "ONLY_ONE=yes"]
    (device,) = spec["linux"]["devices"]
    assert device == {"path": "/dev/fake0", "type": "c", "major": os.major(NULL.st_rdev),
                      "minor": os.minor(NULL.st_rdev), "fileMode": 0o666, "uid": 1000, "gid": 1000}
    assert spec["linux"]["resources"]["devices"][-1] == {
        "allow": True, "type": "c", "major": os.major(NULL.st_rdev), "minor": os.minor(NULL.st_rdev),
        "access": "rwm"}
    assert [m["destination"] for m in spec["mounts"]] == ["/proc", "/dev/shm", "/opt/fake/lib"]


def test_inject_refuses_what_crisp_cannot_apply(tmp_path: Path) -> None:
    doc = _spec(version="0.7.0")
    doc["devices"][0]["containerEdits"]["intelRdt"] = {"closID": "gold"}
    _write(tmp_path / "cdi" / "rdt.json", doc)
    with pytest.raises(errors.InvalidArgument, match=r"CDI device crisp\.test/fake=fake0: intelRdt"):
        inject(_oci(), Registry((tmp_path / "cdi",)).resolve(["crisp.test/fake=fake0"]))
    doc = _spec()
    doc["devices"][0]["containerEdits"]["deviceNodes"] = [{"path": "/dev/gone", "hostPath": "/dev/no-such-node"}]
    _write(tmp_path / "cdi" / "rdt.json", doc)
    with pytest.raises(errors.InvalidArgument, match="cannot stat host device /dev/no-such-node"):
        inject(_oci(), Registry((tmp_path / "cdi",)).resolve(["crisp.test/fake=fake0"]))


def test_annotations_name_devices() -> None:
    annotations = {"cdi.k8s.io/b_second": "crisp.test/fake=fake1", "other": "x",
                   "cdi.k8s.io/a_first": "crisp.test/fake=fake0,crisp.test/fake=fake1"}
    assert names.devices_from_annotations(annotations) == [
        "crisp.test/fake=fake0", "crisp.test/fake=fake1", "crisp.test/fake=fake1"]
    with pytest.raises(errors.InvalidArgument, match="invalid CDI device 'bad'"):
        names.devices_from_annotations({"cdi.k8s.io/x": "bad"})
