"""The Go tools the tiers drive crisp with (crictl, critest, the kubelet, the control plane, etcd).

`scripts/build-k8s-tools` builds them at the versions pinned in `scripts/tools.versions` into a cache outside the
checkout (`CRISP_TOOLS_CACHE`); `make test` runs it first, so a test only asks where they are.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "build-k8s-tools"
VERSIONS = ROOT / "scripts" / "tools.versions"


@functools.cache
def versions() -> dict[str, str]:
    pins = {}
    for line in VERSIONS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pins[key.strip()] = value.strip()
    return pins


@functools.cache
def bin_dir() -> Path:
    return Path(subprocess.run([str(SCRIPT), "--dir"], check=True, capture_output=True, text=True).stdout.strip())


def tool(name: str) -> Path:
    """The path of a built tool; the test is an error (not a skip) when it is missing: `make tools` builds it."""
    path = bin_dir() / name
    if not path.is_file():
        pytest.fail(f"{name} is not built in {bin_dir()}: run `make tools` (scripts/build-k8s-tools)", pytrace=False)
    return path


def go_module_dir(module: str, version: str) -> Path:
    """Where the tool build's module cache holds `module@version` (downloaded by the build)."""
    escaped = "".join("!" + c.lower() if c.isupper() else c for c in module)
    path = bin_dir().parent / "gomodcache" / f"{escaped}@{version}"
    if not path.is_dir():
        pytest.fail(f"{module}@{version} is not in the tool cache {path.parent}: run `make tools`", pytrace=False)
    return path
