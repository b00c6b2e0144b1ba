"""Packaging: `make dist`'s wheelhouse, deploy/install.sh (below a scratch root: idempotent, and uninstall takes it
all away again), and crisp's top-level names owned by nobody else in its venv. Under a real systemd the installer
runs in the VM tier's systemd guest (tests/vm/guest_systemd)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.packaging import venv_owners

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy" / "install.sh"
CONTAINERD_CRICTL = "runtime-endpoint: unix:///run/containerd/containerd.sock\n"


def owners(python: str) -> dict[str, list[str]]:
    done = subprocess.run([python, str(Path(venv_owners.__file__))], capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout))


def test_only_crisp_owns_its_top_level_names_in_this_venv() -> None:
    assert owners(sys.executable) == {name: ["crisp"] for name in venv_owners.CRISP_TOP_LEVEL}


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "wheelhouse"
    subprocess.run([sys.executable, str(REPO / "scripts" / "dist"), "--out", str(out)], check=True,
                   capture_output=True)
    return out


def test_dist_has_crisp_and_every_run_time_dependency(wheelhouse: Path) -> None:
    names = {p.name.split("-")[0].lower().replace("_", "-") for p in wheelhouse.glob("*.whl")}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {dep.split(">")[0].split("<")[0].split("=")[0].strip().lower() for dep in project["dependencies"]}
    assert "crisp" in names and wanted <= names, (wanted - names)
    assert not {"pytest", "mypy", "ruff"} & names  # run time only


def files_below(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text(errors="replace") for p in sorted(root.rglob("*"))
            if p.is_file() and "opt/crisp/venv" not in str(p)}


@pytest.mark.root
def test_install_twice_then_uninstall(tmp_path: Path, wheelhouse: Path) -> None:
    root = tmp_path / "node"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "crictl.yaml").write_text(CONTAINERD_CRICTL)  # a kind node's, pointing at containerd
    install = [str(INSTALL), "--root", str(root), "--wheels", str(wheelhouse), "--driver", "systemd", "--cni-only"]

    first = subprocess.run(install, capture_output=True, text=True, check=True)
    assert "wrote" in first.stdout
    venv = root / "opt" / "crisp" / "venv"
    version = subprocess.run([str(venv / "bin" / "crispd"), "version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("crispd ")
    # the wheel carries crisp-monitor, executable (make dist builds it first)
    monitors = list(venv.glob("lib/python3*/site-packages/shim/monitor/crisp-monitor"))
    assert len(monitors) == 1, monitors
    assert subprocess.run([str(monitors[0]), "--version"], capture_output=True, text=True,
                          check=True).stdout.startswith("crisp-monitor ")
    assert owners(str(venv / "bin" / "python")) == {name: ["crisp"] for name in venv_owners.CRISP_TOP_LEVEL}
    config = tomllib.loads((root / "etc" / "crisp" / "crisp.toml").read_text())
    assert config == {"cgroup": {"driver": "systemd"}, "network": {"backend": "cni"}}
    checked = subprocess.run([str(venv / "bin" / "crispd"), "config", "--config",
                              str(root / "etc" / "crisp" / "crisp.toml")], capture_output=True, text=True, check=True)
    assert 'driver = "systemd"' in checked.stdout
    assert (root / "etc" / "crictl.yaml").read_text() == (REPO / "deploy" / "crictl.yaml").read_text()
    assert (root / "etc" / "crictl.yaml.crisp-saved").read_text() == CONTAINERD_CRICTL
    assert (root / "etc" / "systemd" / "system" / "crispd.service").read_text() == (
        REPO / "deploy" / "crispd.service").read_text()
    installed = files_below(root)

    again = subprocess.run(install, capture_output=True, text=True, check=True)
    assert "kept" in again.stdout
    assert files_below(root) == installed  # nothing changed, the saved crictl.yaml included

    # uninstall takes away what install put; a config the admin changed stays until --purge
    config = root / "etc" / "crisp" / "crisp.toml"
    config.write_text(config.read_text() + "[image]\nmax_concurrent_downloads = 5\n")
    subprocess.run([str(INSTALL), "uninstall", "--root", str(root)], check=True, capture_output=True)
    assert files_below(root) == {"etc/crictl.yaml": CONTAINERD_CRICTL, "etc/crisp/crisp.toml": config.read_text()}
    assert not (root / "opt" / "crisp").exists()
    subprocess.run([str(INSTALL), "uninstall", "--purge", "--root", str(root)], check=True, capture_output=True)
    assert files_below(root) == {"etc/crictl.yaml": CONTAINERD_CRICTL}
    assert not (root / "etc" / "crisp").exists()
