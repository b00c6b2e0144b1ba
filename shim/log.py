"""The shim's own diagnostics: one line on stderr, which is `shim.log` in the bundle dir."""

from __future__ import annotations

import os
import time


def log(message: str) -> None:
    try:
        os.write(2, f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} crisp-shim[{os.getpid()}]: "
                    f"{message}\n".encode(errors="replace"))
    except OSError:
        pass
