"""Pre-installed NRI plugins: found in a directory, started by crisp, connected through a socketpair.

As containerd does: every executable file `<idx>-<name>` in the plugin directory (idx two digits) is a plugin; its
configuration is the drop-in `<idx>-<name>.conf`, else `<name>.conf`, in the config directory (none: empty). It is
started with one end of a socketpair as fd 3 and exactly the environment `NRI_PLUGIN_NAME=<name>`,
`NRI_PLUGIN_IDX=<idx>`, `NRI_PLUGIN_SOCKET=3`. crispd never forks itself (a worker thread starts the process) and
cannot place an fd at 3 without code in the child, so a tiny isolated Python step moves the socket there and execs
the plugin.
"""

from __future__ import annotations

import asyncio
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from runtime import aioproc, errors
from runtime.nri.plugin import check_index

PLUGIN_FD = 3
_PLACE_FD = ("import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); fd != 3 and os.close(fd); "
             "os.execv(sys.argv[2], sys.argv[2:])")


@dataclass(frozen=True)
class Installed:
    idx: str
    name: str
    path: Path
    config: str

    @property
    def full_name(self) -> str:
        return f"{self.idx}-{self.name}"


def plugin_config(config_dir: Path, idx: str, name: str) -> str:
    for candidate in (config_dir / f"{idx}-{name}.conf", config_dir / f"{name}.conf"):
        try:
            return candidate.read_text()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise errors.InvalidArgument(f"NRI plugin {idx}-{name}: cannot read {candidate}: {exc}") from None
    return ""


def discover(plugin_dir: Path, config_dir: Path) -> list[Installed]:
    """The installed plugins in index order; a file that is not `<idx>-<name>` is an error, as in containerd."""
    try:
        entries = sorted(plugin_dir.iterdir())
    except FileNotFoundError:
        return []
    found = []
    for path in entries:
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        if not stat.S_ISREG(mode) or not mode & 0o111:
            continue
        idx, sep, name = path.name.partition("-")
        if not sep or not name:
            raise errors.InvalidArgument(f"NRI plugin {path}: name it <idx>-<name>")
        check_index(idx)
        found.append(Installed(idx, name, path, plugin_config(config_dir, idx, name)))
    return found


async def launch(plugin: Installed) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, aioproc.Process]:
    """Start the plugin with its end of a socketpair at fd 3; our end as asyncio streams."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        env = {"NRI_PLUGIN_NAME": plugin.name, "NRI_PLUGIN_IDX": plugin.idx, "NRI_PLUGIN_SOCKET": str(PLUGIN_FD)}
        process = await aioproc.spawn([sys.executable, "-I", "-S", "-c", _PLACE_FD, str(theirs.fileno()),
                                       str(plugin.path)], stdin=False, stdout=False, env=env,
                                      pass_fds=(theirs.fileno(),))
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    return reader, writer, process
