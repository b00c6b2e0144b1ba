"""Runtime handlers in Status: each one's features are what its executor really does on this host."""

from __future__ import annotations

from pathlib import Path

from cri import api as cri
from runtime.linux import idmap
from runtime.linux import syscalls as sc
from tests.cri.crispd import Crispd


def test_status_reports_recursive_read_only_per_handler(tmp_path: Path) -> None:
    daemon = Crispd(tmp_path, config='[runtime.handlers.runc]\npath = "runc"\n'
                                     '[runtime.handlers.crun]\npath = "crun"\n'
                                     '[runtime.handlers.gone]\npath = "/nonexistent/crisp-runtime"\n'
                                     '[runtime.handlers.python]\ntype = "builtin"\n').start()
    try:
        response = daemon.runtime.Status(cri.StatusRequest())
        features = {h.name: h.features for h in response.runtime_handlers}
        kernel = sc.has_mount_setattr()
        # Debian 12 ships runc 1.1.5 and crun 1.8.1: both apply "rro" through mount_setattr
        assert features[""].recursive_read_only_mounts is kernel
        assert features["python"].recursive_read_only_mounts is kernel
        assert features["runc"].recursive_read_only_mounts is kernel
        assert features["crun"].recursive_read_only_mounts is kernel
        assert features["gone"].recursive_read_only_mounts is False
        # user namespaces: where this kernel id-maps crisp's dirs (the built-in executor); runc also needs the
        # state dir reachable by a pod's host uid, which pytest's private tmp dir is not (tests/cri/test_userns.py
        # runs crispd where it is); crun is not claimed
        idmappable = not any(idmap.probe([str(tmp_path), str(daemon.root / "images" / "snapshots")]).values())
        assert features[""].user_namespaces is idmappable
        assert features["python"].user_namespaces is idmappable
        assert not features["runc"].user_namespaces
        assert not features["crun"].user_namespaces
        assert not features["gone"].user_namespaces
    finally:
        assert daemon.stop() == 0
