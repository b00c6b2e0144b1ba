"""Wheels for the guest, prepared on the host so that the guest needs no network.

Two sets: crisp's dependencies (+ pytest), pinned to the versions installed next to the running pytest, cached in
`<cache>/wheels/<key>/` and baked into the image's venv (/opt/crisp); and crisp itself, built fresh for every run
from the checkout and installed into that venv when the guest boots.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
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


def guest_requirements(repo: Path = REPO) -> list[str]:
    """crisp's runtime dependencies (pyproject's ranges) and the test runner."""
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *GUEST_TEST_TOOLS]


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


# not part of crisp's source: left out of the copy its wheel is built from
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
                                     ".cache", "tests")


def build_crisp_wheel(into: Path, repo: Path = REPO) -> Path:
    """crisp's own wheel, from the checkout as it is now. Built from a fresh copy: setuptools would put stale
    files from an old `build/` dir into the wheel, and the checkout stays untouched."""
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="crisp-vm-src-") as scratch:
        source = Path(scratch) / "crisp"
        shutil.copytree(repo, source, ignore=_NOT_SOURCE, symlinks=True)
        _pip("wheel", "-q", "--no-deps", "--wheel-dir", str(into), str(source), log=into / "pip.log")
    (into / "pip.log").unlink()
    wheels = sorted(into.glob("crisp-*.whl"))
    if len(wheels) != 1:
        raise WheelError(f"expected one crisp wheel in {into}, found {wheels}")
    return wheels[0]
