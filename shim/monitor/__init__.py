"""crisp-monitor, the shim's second half in C (monitor.c): built by scripts/build-monitor next to this file."""

from __future__ import annotations

import os

BINARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crisp-monitor")


def binary() -> str:
    """The built monitor's path, or "" when it is not built (the shims then stay Python)."""
    return BINARY if os.access(BINARY, os.X_OK) else ""
