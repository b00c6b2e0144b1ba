"""crisp-executor: the built-in OCI runtime, with runc's command line (the subset in docs/contracts.md).

Thin on purpose: parse arguments, call `Executor`, turn errors into one line on stderr (and into the --log file,
as runc does) and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.bundle import read_json
from runtime.executor import lifecycle
from runtime.linux import sealed
from runtime.version import VERSION

DEFAULT_ROOT = "/run/crisp/runtimes/builtin"
PROGRAM = "crisp-executor"  # its name, also where it runs in a fork of a shim (shim/executor.py)
log = logging.getLogger("crisp-executor")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROGRAM, description="crisp's built-in OCI runtime")
    p.add_argument("--root", default=DEFAULT_ROOT, help="state dir of the containers")
    p.add_argument("--log", help="log file (errors are also written there)")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--debug", action="store_true")
    p.add_argument("--systemd-cgroup", action="store_true",
                   help="containers live in systemd scopes crispd makes (linux.cgroupsPath slice:prefix:name)")
    p.add_argument("--version", action="version", version=f"crisp-executor version {VERSION}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("create", help="create a container (its init waits for start)")
    c.add_argument("--bundle", "-b", default=".")
    c.add_argument("--pid-file")
    c.add_argument("--console-socket")
    c.add_argument("--preserve-fds", type=int, default=0)
    c.add_argument("--no-pivot", action="store_true", help=argparse.SUPPRESS)
    c.add_argument("--held-pid-fd", type=int, help="with --systemd-cgroup: report the container's first process here "
                   "and wait until crispd made its scope")
    c.add_argument("id")

    s = sub.add_parser("start", help="start a created container")
    s.add_argument("id")

    st = sub.add_parser("state", help="print a container's state as JSON")
    st.add_argument("id")

    k = sub.add_parser("kill", help="send a signal to a container's init (or to all its processes)")
    k.add_argument("--all", "-a", action="store_true")
    k.add_argument("id")
    k.add_argument("signal", nargs="?", default="SIGTERM")

    d = sub.add_parser("delete", help="delete a container")
    d.add_argument("--force", "-f", action="store_true")
    d.add_argument("id")

    u = sub.add_parser("update", help="change the resource limits of a container")
    u.add_argument("--resources", "-r", required=True,
                   help="a file with the OCI linux.resources to apply (JSON; - for stdin)")
    u.add_argument("id")

    e = sub.add_parser("exec", help="run a process in a running container")
    e.add_argument("--process", "-p", required=True)
    e.add_argument("--pid-file")
    e.add_argument("--console-socket")
    e.add_argument("--detach", "-d", action="store_true")
    e.add_argument("--preserve-fds", type=int, default=0)
    e.add_argument("id")
    return p


def _log_error(args: argparse.Namespace, message: str, kind: str = errors.INTERNAL) -> None:
    """runc's error line, plus the wire name of the error's kind (`runtime.errors`), which the shim passes on."""
    print(f"crisp-executor: {message}", file=sys.stderr)
    if not args.log:
        return
    if args.log_format == "json":
        line = json.dumps({"level": "error", "msg": message, "kind": kind,
                           "time": datetime.datetime.now(datetime.UTC).isoformat()})
    else:
        line = f"level=error msg={json.dumps(message)} kind={kind}"
    try:
        with open(args.log, "a") as f:
            f.write(line + "\n")
    except OSError:
        pass


def _read_resources(path: str) -> dict[str, Any]:
    return read_json("/dev/stdin" if path == "-" else path, f"--resources {path}")


def run(args: argparse.Namespace) -> int:
    # start and state run often and import little; the rest needs the whole executor
    if args.command == "start":
        lifecycle.start(Path(args.root), args.id)
        return 0
    if args.command == "state":
        print(json.dumps(lifecycle.state(Path(args.root), args.id), indent=2))
        return 0
    from runtime.executor.container import ExecOptions, Executor, parse_signal

    executor = Executor(Path(args.root), systemd_cgroup=args.systemd_cgroup)
    if args.command == "create":
        executor.create(args.id, Path(args.bundle), Path(args.pid_file) if args.pid_file else None,
                        args.console_socket, args.preserve_fds, args.held_pid_fd)
    elif args.command == "kill":
        executor.kill(args.id, parse_signal(args.signal), args.all)
    elif args.command == "delete":
        executor.delete(args.id, args.force)
    elif args.command == "update":
        executor.update(args.id, _read_resources(args.resources))
    elif args.command == "exec":
        return executor.exec(args.id, ExecOptions(
            process_file=Path(args.process), pid_file=Path(args.pid_file) if args.pid_file else None,
            console_socket=args.console_socket, detach=args.detach, preserve_fds=args.preserve_fds))
    return 0


# built once, when the module is imported: argparse looks up a translation of every help text (gettext goes to the
# file system each time), ~25 ms that the resident executor (shim/executor.py) then never pays again
PARSER = _parser()


# the commands that fork a process into a container
_FORKING = frozenset({"create", "exec"})


def _reexec_sealed(command: str) -> None:
    """As a program (not resident in a shim, whose zygote runs sealed already), `create` and `exec` re-exec the
    interpreter from a sealed copy first (runtime/linux/sealed.py, runc's defence): the process they fork into the
    container must reach no host binary through /proc/self/exe. Returns only when that is done or not needed."""
    if command not in _FORKING or not sys.orig_argv:
        return
    exe = os.open("/proc/self/exe", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if sealed.is_sealed(exe):
            return
    finally:
        os.close(exe)
    program = sealed.sealed_copy("/proc/self/exe", "crisp-python")
    # close-on-exec: the kernel opens the program before it closes the fd, so nothing of it stays in the new image
    os.execve(f"/proc/self/fd/{program}", sys.orig_argv, os.environ)  # then /proc/self/exe is sealed: no loop


def main(argv: Sequence[str] | None = None) -> int:
    args = PARSER.parse_args(argv)
    if argv is None:  # the program, not a shim's fork
        _reexec_sealed(args.command)
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.debug else logging.WARNING,
                        format="crisp-executor: %(levelname)s %(message)s")
    if os.geteuid() != 0:
        _log_error(args, "must run as root")
        return 1
    try:
        return run(args)
    except errors.CrispError as exc:
        _log_error(args, str(exc) or type(exc).__name__, errors.kind_of(exc))
        return 1
    except OSError as exc:
        _log_error(args, f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        return 1


if __name__ == "__main__":
    sys.exit(main())
