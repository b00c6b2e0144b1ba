"""CRIU as the tests see it, not through crisp: whether `criu check` passes on this host."""

from __future__ import annotations

import shutil
import subprocess


def criu_check() -> tuple[int, str]:
    """`criu check`'s status (-1: criu is not installed) and its first error line."""
    criu = shutil.which("criu", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if criu is None:
        return -1, "criu is not installed"
    done = subprocess.run([criu, "check"], capture_output=True, text=True, check=False)
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return done.returncode, lines[0] if lines else ""
