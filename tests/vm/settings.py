"""Settings of the VM tier, read once from the environment (every knob has one default, defined here)."""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE = "/var/cache/crisp-vm"


@dataclass(frozen=True)
class VmSettings:
    """How to build and boot the test VM.

    Environment (all optional):
      CRISP_VM_CACHE         image and wheel cache, reused between runs        [/var/cache/crisp-vm]
      CRISP_VM_CPUS / _MEM   vCPUs and RAM of the guest                         [2 / 2G]
      CRISP_VM_TIMEOUT       seconds before a whole VM run is killed            [1500]
      CRISP_VM_TEST_TIMEOUT  seconds one guest test may take                    [240]
      CRISP_VM_ACCEL         auto | kvm | tcg (auto: kvm only with VT-x/AMD-V)  [auto]
      CRISP_VM_MIRROR / CRISP_VM_SECURITY_MIRROR  Debian mirrors for the image build
      CRISP_VM_KEEP          1 = keep the run directory (job, output, console log) for debugging
    """

    cache_dir: Path
    cpus: int = 2
    memory: str = "2G"
    timeout: float = 1500.0
    test_timeout: float = 240.0
    accel: str = "auto"
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    keep_run_dir: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> VmSettings:
        env = os.environ if env is None else env
        defaults = cls(cache_dir=Path(DEFAULT_CACHE))
        accel = env.get("CRISP_VM_ACCEL", defaults.accel)
        if accel not in ("auto", "kvm", "tcg"):
            raise ValueError(f"CRISP_VM_ACCEL must be auto, kvm or tcg, not {accel!r}")
        return cls(
            cache_dir=Path(env.get("CRISP_VM_CACHE", DEFAULT_CACHE)),
            cpus=int(env.get("CRISP_VM_CPUS", defaults.cpus)),
            memory=env.get("CRISP_VM_MEM", defaults.memory),
            timeout=float(env.get("CRISP_VM_TIMEOUT", defaults.timeout)),
            test_timeout=float(env.get("CRISP_VM_TEST_TIMEOUT", defaults.test_timeout)),
            accel=accel,
            mirror=env.get("CRISP_VM_MIRROR", defaults.mirror),
            security_mirror=env.get("CRISP_VM_SECURITY_MIRROR", defaults.security_mirror),
            keep_run_dir=env.get("CRISP_VM_KEEP", "") == "1",
        )


@contextmanager
def cache_lock(cache_dir: Path) -> Iterator[None]:
    """Held while the cache is checked and filled, so that concurrent runs build each thing once."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def prune(entries: Path, keep: Path, keep_others: int, days: float) -> None:
    """Remove the directories in `entries` (cached images, wheel sets) but `keep` that no run used (their
    `last-used` file) for `days`, and all but the `keep_others` most recently used. Called under cache_lock."""
    horizon = time.time() - days * 86400
    others = []
    for entry in entries.iterdir():
        if entry != keep and entry.is_dir():
            used = entry / "last-used"
            others.append((used.stat().st_mtime if used.exists() else 0.0, entry))
    others.sort(reverse=True)
    for rank, (used_at, entry) in enumerate(others):
        if used_at < horizon or rank >= keep_others:
            shutil.rmtree(entry, ignore_errors=True)
