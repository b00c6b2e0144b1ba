"""The `[nri]` section of crispd's config."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class NriConfig:
    """NRI (node resource interface) plugins: off unless enabled."""

    enable: bool = False
    # where external plugins (and critest's --nri-socket) connect
    socket_path: str = field(default="/var/run/nri/nri.sock", metadata={"absolute": True})
    # pre-installed plugins (<idx>-<name> executables) crispd starts, and their drop-in configs
    plugin_path: str = field(default="/opt/nri/plugins", metadata={"absolute": True})
    plugin_config_path: str = field(default="/etc/nri/conf.d", metadata={"absolute": True})
    plugin_registration_timeout_seconds: float = 5.0
    plugin_request_timeout_seconds: float = 2.0
    # a joining plugin's Synchronize (the whole node's pods and containers); container creations wait meanwhile
    plugin_sync_timeout_seconds: float = 5.0
    # only pre-installed plugins: no socket is listened on
    disable_connections: bool = False

    def check(self) -> list[tuple[str, str]]:
        for key in ("plugin_registration_timeout_seconds", "plugin_request_timeout_seconds",
                    "plugin_sync_timeout_seconds"):
            if getattr(self, key) <= 0:
                return [(key, "must be positive")]
        if len(os.fsencode(self.socket_path)) > 107:
            return [("socket_path", "is too long for a unix socket (107 bytes at most)")]
        return []
