"""crisp-shim: the per-container monitor.

crispd never starts a shim itself: its zygote (shim/zygote.py) forks one per container and calls `become_shim` in
the forked process, which detaches, becomes the child subreaper, reports readiness on a sync pipe and then serves
the container until it is told to shut down. The `crisp-shim` command only prints its version.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from runtime import errors
from runtime.linux import syscalls
from runtime.procs import process_start_time, set_process_title
from runtime.version import VERSION
from shim import protocol
from shim.log import log
from shim.protocol import ShimConfig, ShimError
from shim.server import Shim

OOM_SCORE_ADJ = -999
# comm and first word of the command line of every shim: `pgrep crisp-shim`, `ps -C crisp-shim`
NAME = "crisp-shim"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args in ([], ["--version"], ["version"]):
        print(f"crisp-shim {VERSION}")
        return 0
    print(f"crisp-shim {VERSION}: unknown arguments {args!r} (shims are started by crispd's zygote)",
          file=sys.stderr)
    return 2


def lower_oom_score() -> str:
    """Ask for oom_score_adj -999 so the OOM killer takes containers before their shim; '' or a warning."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(OOM_SCORE_ADJ))
        return ""
    except OSError as exc:
        try:
            with open("/proc/self/oom_score_adj") as f:
                current = f.read().strip()
        except OSError:
            current = "?"
        return (f"cannot set oom_score_adj to {OOM_SCORE_ADJ} ({exc.strerror}; lowering it needs "
                f"CAP_SYS_RESOURCE): shims keep {current}")


def _report(sync_fd: int, message: dict[str, Any]) -> None:
    try:
        os.write(sync_fd, protocol.encode(message))
    except OSError:
        pass  # the zygote is gone: nobody is waiting for this answer
    os.close(sync_fd)


def setup_stdio(bundle: str) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    own_log = os.open(os.path.join(bundle, protocol.SHIM_LOG_NAME), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(own_log, 2)
    os.close(devnull)
    os.close(own_log)


def ignore_signals() -> None:
    """Only crispd's shutdown ends a shim: a stray signal would leave its container unwatched."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_IGN)


def become_shim(config_data: dict[str, Any], sync_fd: int) -> NoReturn:
    """The body of a freshly forked, already detached shim process; it never returns."""
    code = 1
    try:
        config = ShimConfig.from_json(config_data)
        try:
            os.chdir(config.bundle)
        except OSError as exc:
            raise ShimError("NotFound", f"{config.id}: bundle {config.bundle}: {exc.strerror}") from None
        setup_stdio(config.bundle)
        ignore_signals()
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
        warnings = []
        try:  # the zygote's command line is no use to an operator looking for us
            set_process_title(NAME, config.id)
        except OSError as exc:  # a shim without its name still watches its container
            warnings.append(f"cannot name the shim {NAME}: {exc}")
            log(warnings[-1])
        warning = lower_oom_score()
        if warning:
            warnings.append(warning)
            log(warning)
        shim = Shim(config)
        shim.loop.install_sigchld()
        shim.listen()
        start_time = process_start_time(os.getpid())
        info = {"version": protocol.PROTOCOL_VERSION, "pid": os.getpid(), "start_time": start_time,
                "socket": os.path.join(config.bundle, protocol.SOCKET_NAME), "config": config.to_json()}
        protocol.write_file_atomic(os.path.join(config.bundle, protocol.INFO_NAME),
                                   json.dumps(info, sort_keys=True).encode())
        _report(sync_fd, {"ok": True, "pid": os.getpid(), "start_time": start_time, "warnings": warnings})
        sync_fd = -1
        log(f"shim {VERSION} ready for container {config.id}")
        shim.point("shim.listening")
        shim.run()
        code = 0
    except ShimError as exc:
        if sync_fd >= 0:
            _report(sync_fd, {"ok": False, "error": exc.to_json()})
        log(f"shim failed: {exc.message}")
    except BaseException as exc:
        error = {"kind": "Internal", "message": f"shim failed: {exc!r}"}
        if isinstance(exc, OSError) and exc.errno in errors.NO_SPACE:  # a full state filesystem
            full = errors.no_space(f"the shim's files in {config_data.get('bundle')}", exc)
            error = {"kind": errors.kind_of(full), "message": str(full)}
        if sync_fd >= 0:
            _report(sync_fd, {"ok": False, "error": error})
        log(f"shim failed: {error['message']}")
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
