"""The last steps before execve, shared by a container's init and by `exec`: rlimits, OOM score, identity,
capabilities, no_new_privs, seccomp, cwd, the program's path, file descriptors.

Order matters and follows runc: the bounding set is cut while CAP_SETPCAP is still there; without no_new_privs
the seccomp filter is loaded while CAP_SYS_ADMIN is still there; ids change with keep-caps so that the final
capset can grant exactly the spec's sets; with no_new_privs the filter is loaded last, right before execve, so it
needs to allow nothing but execve of what the executor itself still does.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import stat
from pathlib import Path

from runtime import errors
from runtime.executor.capabilities import CapabilityPlan
from runtime.executor.oci import Capabilities, Process, Seccomp
from runtime.executor.seccomp import SeccompProgram
from runtime.linux import syscalls as sc

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_UMASK = 0o022
_RLIM_MAX = 2**64 - 1


class ExecError(errors.InvalidArgument):
    """The program cannot be executed; the message reads like the one runc prints."""


def _rlimit_value(value: int) -> int:
    return resource.RLIM_INFINITY if value >= _RLIM_MAX or value >= 2**63 else value


def apply_rlimits(process: Process) -> None:
    for rl in process.rlimits:
        number = getattr(resource, rl.type, None) if rl.type.startswith("RLIMIT_") else None
        if not isinstance(number, int):
            raise errors.InvalidArgument(f"process.rlimits: unknown rlimit type {rl.type!r}")
        try:
            resource.setrlimit(number, (_rlimit_value(rl.soft), _rlimit_value(rl.hard)))
        except (OSError, ValueError) as exc:
            raise errors.InvalidArgument(f"process.rlimits: cannot set {rl.type} to {rl.soft}:{rl.hard}: "
                                         f"{getattr(exc, 'strerror', None) or exc}") from None


def set_oom_score_adj(value: int | None, proc: str = "/proc/self") -> None:
    """Set it; where the host forbids lowering it (no CAP_SYS_RESOURCE) keep the current, higher value."""
    if value is None:
        return
    path = Path(proc) / "oom_score_adj"
    try:
        path.write_text(str(value))
    except PermissionError:
        current = int(path.read_text())
        if value < current:
            log.warning("oom_score_adj %d cannot be set here (lowering needs CAP_SYS_RESOURCE): keeping %d",
                        value, current)
            return
        raise


def parse_env(env: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in env:
        name, _, value = item.partition("=")
        out[name] = value
    return out


def find_executable(program: str, env: dict[str, str], cwd: str = "/") -> str:
    """Resolve argv[0] as execvp would, with the messages runc prints (`exec: "x": ...`)."""
    def usable(path: str) -> OSError | None:
        try:
            st = os.stat(path)
        except OSError as exc:
            return exc
        if stat.S_ISDIR(st.st_mode) or not os.access(path, os.X_OK):
            return OSError(errno.EACCES, os.strerror(errno.EACCES))
        return None

    if "/" in program:
        path = program if program.startswith("/") else os.path.join(cwd, program)
        problem = usable(path)
        if problem is not None:
            raise ExecError(f'exec: "{program}": {problem.strerror.lower() if problem.strerror else problem}')
        return path
    denied = False
    for directory in env.get("PATH", DEFAULT_PATH).split(":"):
        candidate = os.path.join(directory or ".", program)
        problem = usable(candidate)
        if problem is None:
            return candidate
        denied = denied or problem.errno == errno.EACCES
    if denied:
        raise ExecError(f'exec: "{program}": permission denied')
    raise ExecError(f'exec: "{program}": executable file not found in $PATH')


class ProcessSetup:
    """Everything checked up front (capability names, seccomp rules): `apply*` only makes the calls."""

    def __init__(self, sys: sc.Syscalls, process: Process, seccomp: Seccomp | None) -> None:
        self.sys = sys
        self.process = process
        self.caps = CapabilityPlan(process.capabilities or Capabilities())
        self.env = parse_env(process.env)
        self.seccomp = SeccompProgram(seccomp) if seccomp is not None else None

    def apply_identity(self) -> None:
        """Bounding set, early seccomp, groups and ids, then the capability sets and no_new_privs."""
        sys = self.sys
        user = self.process.user
        self.caps.drop_bounding(sys)
        if self.seccomp is not None and not self.process.no_new_privileges:
            self._load_seccomp()
        sys.prctl(sc.PR_SET_KEEPCAPS, 1)
        sys.setgroups(list(user.additional_gids))
        sys.setresgid(user.gid, user.gid, user.gid)
        sys.setresuid(user.uid, user.uid, user.uid)
        sys.prctl(sc.PR_SET_KEEPCAPS, 0)
        self._set_caps()
        if self.process.no_new_privileges:
            sys.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        os.umask(user.umask if user.umask is not None else DEFAULT_UMASK)

    def _set_caps(self) -> None:
        # a capability this process does not hold (this host has no CAP_SYS_RESOURCE) cannot be granted
        _, held, _ = self.sys.capget()
        missing = (self.caps.permitted | self.caps.effective) & ~held
        if missing:
            log.warning("capabilities %#x are not held by the executor; the container will not have them", missing)
        self.caps.effective &= held
        self.caps.permitted &= held
        self.caps.inheritable &= held
        self.caps.ambient &= held
        self.caps.set_process_sets(self.sys)

    def _load_seccomp(self) -> None:
        assert self.seccomp is not None
        try:
            self.seccomp.load()
        except OSError as exc:
            raise errors.InvalidArgument(f"cannot load the seccomp filter: {exc.strerror}") from None
        self.seccomp = None

    def chdir(self) -> None:
        try:
            os.chdir(self.process.cwd)
        except OSError as exc:
            raise errors.InvalidArgument(
                f"chdir to cwd ({self.process.cwd!r}) set in config.json failed: {exc.strerror.lower()}"
                if exc.strerror else str(exc)) from None

    def executable(self) -> str:
        return find_executable(self.process.args[0], self.env, self.process.cwd)

    @staticmethod
    def close_fds(preserve: int = 0) -> None:
        """Mark every fd past stdio (and the preserved LISTEN_FDS) close-on-exec: nothing of the host leaks."""
        sc.close_range(3 + preserve, 0xFFFFFFFF, sc.CLOSE_RANGE_CLOEXEC)

    def exec(self, path: str) -> None:
        """Load a late seccomp filter (no_new_privs) and execve; returns only by raising."""
        if self.seccomp is not None:
            self._load_seccomp()
        try:
            os.execve(path, list(self.process.args), self.env)
        except OSError as exc:
            raise ExecError(f'exec: "{self.process.args[0]}": {(exc.strerror or str(exc)).lower()}') from None
