"""Wheels for the guest, prepared on the host so that the guest needs no network.

Two sets: crisp's dependencies (+ pytest), pinned to the versions installed next to the running pytest, cached in
`<cache>/wheels/<key>/` and baked into the image's venvs (the test venv /opt/crisp-tests, and crisp's run-time
dependencies alone in /opt/crisp/venv, where deploy/install.sh puts crisp); and crisp itself, built fresh for every
run from the checkout and installed into the test venv when the guest boots (the systemd guest's installer takes it
from `make dist`'s wheelhouse).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from tests.vm.settings import VmSettings, prune

REPO = Path(__file__).resolve().parents[2]
GUEST_TEST_TOOLS = ("pytest",)  # what the guest runs crisp's tests with (the linters stay on the host)


class WheelError(RuntimeError):
    """pip could not build or fetch a wheel."""


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def run_time_requirements(repo: Path = REPO) -> list[str]:
    """crisp's run-time dependencies (pyproject's ranges)."""
    return list(tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"])


def guest_requirements(repo: Path = REPO) -> list[str]:
    """crisp's run-time dependencies and the test runner."""
    return [*run_time_requirements(repo), *GUEST_TEST_TOOLS]


def host_pins() -> list[str]:
    """`name==version` of every distribution next to this interpreter (crisp itself excepted): the guest gets
    the versions the host's tests run with."""
    pins = {
        _canonical(dist.metadata["Name"]): dist.version
        for dist in metadata.distributions()
        if dist.metadata["Name"] and _canonical(dist.metadata["Name"]) != "crisp"
    }
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def dependency_key(repo: Path = REPO) -> str:
    text = "\n".join([sys.version.split()[0], *guest_requirements(repo), "--", *host_pins()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _pip(*args: str, log: Path) -> None:
    with open(log, "ab") as out:
        done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], stdout=out,
                              stderr=subprocess.STDOUT, close_fds=True, check=False)
    if done.returncode != 0:
        raise WheelError(f"pip {args[0]} failed ({done.returncode}):\n" +
                         "\n".join(log.read_text(errors="replace").splitlines()[-30:]))


def ensure_dependency_wheels(settings: VmSettings, repo: Path = REPO) -> Path:
    """The cached wheels of crisp's dependencies and pytest (downloaded from PyPI once per set of pins). The caller
    holds `cache_lock`."""
    key = dependency_key(repo)
    target = settings.cache_dir / "wheels" / key
    if (target / "complete").exists():
        (target / "last-used").touch()
        return target
    building = target.with_name(f"{key}.tmp")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    constraints = building / "constraints.txt"
    constraints.write_text("".join(pin + "\n" for pin in host_pins()))
    _pip("wheel", "-q", "--wheel-dir", str(building), "-c", str(constraints), *guest_requirements(repo),
         log=building / "pip.log")
    (building / "complete").write_text(key + "\n")
    shutil.rmtree(target, ignore_errors=True)
    building.rename(target)
    (target / "last-used").touch()
    prune(target.parent, keep=target, keep_others=3, days=7)
    return target


DIST = REPO / "scripts" / "dist"


def _dist(*args: str, log: Path) -> None:
    with open(log, "ab") as out:
        done = subprocess.run([sys.executable, str(DIST), *args], stdout=out, stderr=subprocess.STDOUT,
                              close_fds=True, check=False)
    if done.returncode != 0:
        raise WheelError(f"scripts/dist failed ({done.returncode}):\n" +
                         "\n".join(log.read_text(errors="replace").splitlines()[-30:]))


def build_crisp_wheel(into: Path) -> Path:
    """crisp's own wheel, from the checkout as it is now (`make dist`'s code, which builds it from a copy)."""
    into.mkdir(parents=True, exist_ok=True)
    _dist("--wheel-only", "--out", str(into), log=into / "dist.log")
    (into / "dist.log").unlink()
    wheels = sorted(into.glob("crisp-*.whl"))
    if len(wheels) != 1:
        raise WheelError(f"expected one crisp wheel in {into}, found {wheels}")
    return wheels[0]


def build_wheelhouse(into: Path, dependencies: Path) -> Path:
    """What `make dist` makes for a node (crisp's wheel and its run-time dependencies), offline: the dependencies
    come from the cached `dependencies` wheels, for this Python, which is the guest's."""
    into.mkdir(parents=True, exist_ok=True)
    _dist("--out", str(into), "--no-index", "--find-links", str(dependencies), log=into.parent / "dist.log")
    (into.parent / "dist.log").unlink()
    return into
