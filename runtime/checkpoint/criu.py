"""CRIU as crisp uses it: whether it can work on this host, and a dump of a running process tree.

`criu check` is CRIU's own verdict on the kernel and the criu binary; when it fails, its words are the reason a
checkpoint is refused. A dump leaves the tree running (`--leave-running`); what the tree shares with the world
outside it is named to CRIU as external: the namespaces it joined by path (the pod's network and, for a shared
PID namespace, the pod's PID namespace) and every mount of its mount namespace whose filesystem is not mounted
there at its root (a bind from the host: the pod's files, volumes, masked paths, devices), and every open file
on a mount outside that namespace (the stdio the shim hands the container). Standard library only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from runtime import errors
from runtime.procs import descendants

CHECK_TIMEOUT = 60.0
SEARCH_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"
LOG_NAME = "dump.log"
# the OCI namespace types CRIU can be told to leave alone (`--external <kind>[<inode>]:<key>`), and its kind names
EXTERNAL_NAMESPACES = {"network": "net", "pid": "pid"}


def find_criu() -> str | None:
    return shutil.which("criu", path=os.environ.get("PATH", "") + ":" + SEARCH_PATH)


def problem() -> str:
    """Why CRIU cannot checkpoint on this host, "" when it can: criu missing, or `criu check`'s own words.
    Blocking (a worker thread's job); crispd asks once."""
    criu = find_criu()
    if criu is None:
        return "criu is not installed (Debian: apt-get install criu)"
    try:
        done = subprocess.run([criu, "check"], capture_output=True, text=True, timeout=CHECK_TIMEOUT,
                              check=False, close_fds=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`criu check` could not run: {exc}"
    if done.returncode != 0:
        words = "; ".join(line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip())
        return f"`criu check` failed (status {done.returncode}): {words}"
    return ""


@dataclass(frozen=True)
class Mount:
    mount_id: int
    parent_id: int
    device: str  # major:minor
    root: str  # the path of the filesystem that is mounted here
    point: str  # where, relative to the reading task's root
    fstype: str


def _unescape(field: str) -> str:
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10 or "-" not in fields[6:]:
            continue
        dash = fields.index("-", 6)
        mounts.append(Mount(int(fields[0]), int(fields[1]), fields[2], _unescape(fields[3]),
                            _unescape(fields[4]), fields[dash + 1]))
    return mounts


def external_mounts(mounts: Iterable[Mount]) -> list[str]:
    """The mount points CRIU must take as given: every mount (but the root) whose filesystem has no mount of its
    own root in this namespace, so CRIU could not make it again from what it dumps (binds from the host)."""
    mounts = list(mounts)
    whole = {m.device for m in mounts if m.root == "/"}
    return sorted({m.point for m in mounts if m.point != "/" and m.device not in whole})


def namespace_externals(namespaces: Sequence[object]) -> list[tuple[str, int]]:
    """(CRIU kind, inode) of each namespace of an OCI spec's linux.namespaces that is joined by path and that CRIU
    can leave alone; a path that is gone is FailedPrecondition (the pod is being torn down)."""
    found = []
    for ns in namespaces:
        if not isinstance(ns, dict) or not ns.get("path") or ns.get("type") not in EXTERNAL_NAMESPACES:
            continue
        try:
            inode = os.stat(ns["path"]).st_ino
        except OSError as exc:
            raise errors.FailedPrecondition(f"the pod's {ns['type']} namespace is gone: {exc}") from None
        found.append((EXTERNAL_NAMESPACES[ns["type"]], inode))
    return found


def external_files(pids: Iterable[int], mount_ids: set[int]) -> list[str]:
    """The open files of these processes that live on a mount outside their mount namespace (the stdio the shim
    hands the container: /dev/null, log files), as CRIU names them: `file[<mnt_id>:<inode>]`, both in hex."""
    found = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/"):
                    continue  # a pipe, a socket, an anonymous inode: not a file on a mount
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
                mnt_id = int(fields["mnt_id"])
                inode = os.stat(f"/proc/{pid}/fd/{fd}").st_ino
            except (OSError, KeyError, ValueError):
                continue  # closed meanwhile
            if mnt_id not in mount_ids:
                found.add(f"file[{mnt_id:x}:{inode:x}]")
    return sorted(found)


def dump_argv(criu: str, pid: int, images_dir: str, work_dir: str, *, namespaces: Iterable[tuple[str, int]],
              mounts: Iterable[str], files: Iterable[str] = ()) -> list[str]:
    """`criu dump` of the tree under `pid` into images_dir, its log (LOG_NAME) into work_dir, the tree left
    running; each external namespace or mount gets its own name (`extRoot<Kind>NS`, the mount point) as its key,
    external files are named by their id alone."""
    argv = [criu, "dump", "--tree", str(pid), "--images-dir", images_dir, "--work-dir", work_dir,
            "--log-file", LOG_NAME, "-v4", "--leave-running", "--file-locks"]
    for kind, inode in namespaces:
        argv += ["--external", f"{kind}[{inode}]:extRoot{kind.capitalize()}NS"]
    for point in mounts:
        argv += ["--external", f"mnt[{point}]:{point}"]
    for file in files:
        argv += ["--external", file]
    return argv


def dump(pid: int, images_dir: str, work_dir: str, *, namespaces: Iterable[tuple[str, int]],
         timeout: float) -> None:
    """Dump the running tree under `pid` (a host pid), leaving it running. The mounts to name as external are
    read from its mountinfo here. A failed dump raises FailedPrecondition with the tail of CRIU's log;
    a dump past `timeout` DeadlineExceeded."""
    criu = find_criu()
    if criu is None:
        raise errors.FailedPrecondition("criu is not installed")
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            mountinfo = parse_mountinfo(f.read())
    except OSError as exc:
        raise errors.FailedPrecondition(f"process {pid} is gone: {exc}") from None
    files = external_files([pid, *descendants(pid)], {m.mount_id for m in mountinfo})
    argv = dump_argv(criu, pid, images_dir, work_dir, namespaces=namespaces, mounts=external_mounts(mountinfo),
                     files=files)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, close_fds=True)
    except subprocess.TimeoutExpired:
        raise errors.DeadlineExceeded(f"criu dump of process {pid} took longer than {timeout:.0f}s") from None
    if done.returncode != 0:
        raise errors.FailedPrecondition(f"criu dump failed (status {done.returncode}): "
                                        + _log_tail(os.path.join(work_dir, LOG_NAME), done.stderr))


def _log_tail(log: str, stderr: str, lines: int = 8) -> str:
    """CRIU's error lines (the last few), from its log or else its stderr."""
    try:
        with open(log, errors="replace") as f:
            text = f.read()
    except OSError:
        text = stderr
    wanted = [line.strip() for line in text.splitlines() if "Error" in line] or text.strip().splitlines()
    return "; ".join(wanted[-lines:]) or "no output"


def runtime_checkpoint(runtime: Sequence[str], container_id: str, images_dir: str, work_dir: str, *,
                       timeout: float) -> None:
    """An OCI runtime's own dump of its container (`<runtime...> checkpoint --leave-running`: runc and crun run
    CRIU themselves and name the container's externals to it); its log is LOG_NAME in work_dir as well."""
    argv = [*runtime, "checkpoint", "--leave-running", "--image-path", images_dir, "--work-path", work_dir,
            container_id]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, close_fds=True)
    except subprocess.TimeoutExpired:
        raise errors.DeadlineExceeded(f"checkpoint of {container_id} took longer than {timeout:.0f}s") from None
    if done.returncode != 0:
        said = " ".join(done.stderr.split())[-600:] or "no output"
        log = os.path.join(work_dir, LOG_NAME)
        criu_said = f"; CRIU: {_log_tail(log, '')}" if os.path.exists(log) else ""
        raise errors.FailedPrecondition(f"{os.path.basename(runtime[0])} checkpoint failed (status "
                                        f"{done.returncode}): {said}{criu_said}")
