"""Helpers for tests that run inside the VM (pure cgroup v2, every controller enabled at the root).

Nothing here touches the system at import time; the fixtures in conftest.py build on these.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: a container root file system in one file
STATIC_BUSYBOX_PATHS = (BUSYBOX, Path("/usr/bin/busybox"))


def cgroup2_mount() -> Path:
    """The cgroup2 mount point, from /proc/self/mountinfo (field 5 is the mount point; the fs type follows ' - ')."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        if tail.split()[0] == "cgroup2":
            return Path(fields.split()[4])
    raise RuntimeError("no cgroup2 mount in /proc/self/mountinfo")


def unique_name(prefix: str = "crisp-vmtest") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def read_flat_keyed(path: Path) -> dict[str, int]:
    """A cgroup file of `key value` lines (memory.events, cpu.stat, pids.events) as a dict."""
    values: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        values[key] = int(value)
    return values


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `condition` until true; AssertionError naming `what` after `timeout` seconds (a bound, not a measure)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Cgroup:
    """A cgroup directory that this test created; `remove()` kills what is left in it and removes it, children
    first."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"Cgroup({self.path})"

    def file(self, name: str) -> Path:
        return self.path / name

    def read(self, name: str) -> str:
        return (self.path / name).read_text().strip()

    def write(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def flat(self, name: str) -> dict[str, int]:
        return read_flat_keyed(self.path / name)

    def child(self, name: str) -> Cgroup:
        (self.path / name).mkdir()
        return Cgroup(self.path / name)

    def enable(self, *controllers: str) -> None:
        self.write("cgroup.subtree_control", " ".join(f"+{c}" for c in controllers))

    def pids(self) -> list[int]:
        return [int(pid) for pid in self.read("cgroup.procs").split()]

    def populated(self) -> bool:
        return self.flat("cgroup.events").get("populated", 0) == 1

    def spawn(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start `argv` inside this cgroup: a shell moves itself in, then execs it (no preexec_fn)."""
        wrapper = [str(BUSYBOX), "sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.path), *argv]
        return subprocess.Popen(wrapper, close_fds=True, **kwargs)

    def run(self, argv: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        proc = self.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def remove(self) -> None:
        if not self.path.exists():
            return
        for sub in sorted((p for p in self.path.iterdir() if p.is_dir()), reverse=True):
            Cgroup(sub).remove()
        self.write("cgroup.kill", "1")
        wait_until(lambda: not self.populated(), 30, f"{self.path} to empty after cgroup.kill")
        self.path.rmdir()


# `then` for allocate_and_hold: say so and keep the memory. Not `sleep` alone: ash execs the last command of
# `sh -c` in place of itself, which would free the memory; a builtin after it keeps the shell.
HOLD = f"echo holding; {BUSYBOX} sleep 600; exit 0"


def allocate_and_hold(mib: int, then: str = "echo survived") -> list[str]:
    """A busybox shell that fills a shell variable with `mib` MiB (anonymous memory the kernel cannot reclaim
    without swap), then runs `then` in the same shell (HOLD keeps it). Filling peaks at about twice `mib` (the
    pipe's read buffer and the variable), then about `mib` stays."""
    fill = f"x=$({BUSYBOX} head -c {mib << 20} /dev/zero | {BUSYBOX} tr '\\000' x)"
    return [str(BUSYBOX), "sh", "-c", f"{fill}; {then}"]


def start_held(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start `argv` behind a gate: a busybox shell that waits for a line on stdin, then execs it. Move the pid
    into a cgroup (crisp's `Cgroup.add_process`), then `release` it: everything `argv` does is accounted there."""
    return subprocess.Popen([str(BUSYBOX), "sh", "-c", 'read _ && exec "$@"', "sh", *argv],
                            stdin=subprocess.PIPE, close_fds=True, **kwargs)


def release(proc: subprocess.Popen[bytes]) -> None:
    """Open the gate of `start_held`; stdin is then closed (and no longer the Popen's to flush)."""
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    proc.stdin = None


def busybox_rootfs(path: Path, applets: tuple[str, ...] = ("sh", "sleep", "cat", "head", "tr", "tail")) -> Path:
    """A container root file system made of the static busybox and a few applet links."""
    for sub in ("bin", "proc", "dev", "sys", "tmp", "etc"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    source = next(p for p in STATIC_BUSYBOX_PATHS if p.exists())
    shutil.copy2(source, path / "bin" / "busybox")
    for applet in applets:
        (path / "bin" / applet).symlink_to("busybox")
    (path / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (path / "etc" / "group").write_text("root:x:0:\n")
    return path


def oci_config(args: list[str], cgroups_path: str, resources: Mapping[str, Any] | None = None,
               rootfs: str = "rootfs") -> dict[str, Any]:
    """A minimal OCI runtime-spec 1.0 config: new namespaces, default mounts, no terminal, the given resources."""
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False, "user": {"uid": 0, "gid": 0}, "args": args, "cwd": "/",
            "env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"],
            "capabilities": {kind: ["CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"]
                             for kind in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": False},
        "hostname": "crisp-vmtest",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network", "cgroup")],
            "cgroupsPath": cgroups_path,
            "resources": dict(resources or {}),
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def write_bundle(bundle: Path, config: Mapping[str, Any]) -> Path:
    bundle.mkdir(parents=True, exist_ok=True)
    if not (bundle / "rootfs").exists():
        busybox_rootfs(bundle / "rootfs")
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
    return bundle


class OciRuntime:
    """runc or crun (or crisp-executor: the same command line) with its own --root state dir."""

    def __init__(self, binary: str, state_root: Path) -> None:
        self.binary = binary
        self.state_root = state_root

    @property
    def name(self) -> str:
        return Path(self.binary).name

    def __call__(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([self.binary, "--root", str(self.state_root), *args], capture_output=True, text=True,
                              timeout=timeout, close_fds=True, stdin=subprocess.DEVNULL, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{self.name} {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def state(self, container_id: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self("state", container_id).stdout)
        return result

    def create(self, container_id: str, bundle: Path, timeout: float = 60) -> int:
        """`create`: the container's init inherits the runtime's stdio, so that is a file, `<bundle>/output` (a
        pipe would stay open for as long as the container runs); errors go to the runtime's --log file."""
        log = bundle / f"{self.name}.log"
        with open(bundle / "output", "wb") as output:
            done = subprocess.run([self.binary, "--root", str(self.state_root), "--log", str(log), "create",
                                   "--bundle", str(bundle), "--pid-file", str(bundle / "pid"), container_id],
                                  stdin=subprocess.DEVNULL, stdout=output, stderr=output, timeout=timeout,
                                  close_fds=True, check=False)
        if done.returncode != 0:
            text = log.read_text(errors="replace") if log.exists() else ""
            raise AssertionError(f"{self.name} create {container_id} failed ({done.returncode}): {text.strip()} "
                                 f"{(bundle / 'output').read_text(errors='replace').strip()}")
        return int((bundle / "pid").read_text())

    def output(self, bundle: Path) -> str:
        """What the container (and the runtime) wrote to stdout and stderr so far."""
        return (bundle / "output").read_text(errors="replace")

    def delete(self, container_id: str) -> None:
        self("delete", "--force", container_id, check=False)


def iter_cgroups(root: Path, prefix: str = "crisp") -> Iterator[Path]:
    """Every cgroup under `root` whose name starts with `prefix` (to find leaks)."""
    for path in root.rglob(f"{prefix}*"):
        if path.is_dir():
            yield path
