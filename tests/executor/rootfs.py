"""Test bundles: a busybox root filesystem and OCI specs shaped like the ones crisp's CRI layer writes.

The rootfs has Debian's busybox-static as /bin/busybox (every applet linked to it) and the dynamic busybox with
its libc as /usr/bin/busybox-dyn: busybox-static runs many applets inside its shell without an exec, so a test
that must observe a new process execs `/bin/busybox <applet>` or `busybox-dyn <applet>` explicitly.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

STATIC_BUSYBOX = Path("/bin/busybox")
DEB_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "debs"


def dynamic_busybox_deb() -> Path | None:
    found = sorted(DEB_CACHE.glob("busybox_*.deb"))
    return found[-1] if found else None


def build_busybox_rootfs(dest: Path) -> Path:
    """A minimal root filesystem at `dest` (made here); returns it."""
    if not STATIC_BUSYBOX.exists():
        raise RuntimeError("busybox-static is not installed: run `make test`")
    for d in ("bin", "sbin", "usr/bin", "etc", "proc", "sys", "dev", "tmp", "root", "lib/x86_64-linux-gnu",
              "lib64", "home/user"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(STATIC_BUSYBOX, dest / "bin/busybox")
    applets = subprocess.run([str(STATIC_BUSYBOX), "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        link = dest / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    deb = dynamic_busybox_deb()
    if deb is None:
        raise RuntimeError(f"the dynamic busybox .deb is not in {DEB_CACHE}: run `make test`")
    unpacked = dest.parent / (dest.name + ".deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    shutil.copy2(unpacked / "bin/busybox", dest / "usr/bin/busybox-dyn")
    shutil.rmtree(unpacked)
    for lib in _needed_libs(dest / "usr/bin/busybox-dyn"):
        shutil.copy2(lib, dest / lib.lstrip("/"))
    (dest / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n")
    (dest / "etc/group").write_text("root:x:0:\nuser:x:1000:\nextra:x:2000:user\n")
    (dest / "tmp").chmod(0o1777)
    return dest


def _needed_libs(binary: Path) -> list[str]:
    """The host's copies of the shared libraries (and loader) a dynamic binary needs, by ldd."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    return [word for word in out.split() if word.startswith("/")]


DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
]

MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/sys/devices/virtual/powercap", "/proc/scsi"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

_BASE: dict[str, Any] = {
    "ociVersion": "1.1.0",
    "process": {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": ["/bin/busybox", "true"],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"],
        "cwd": "/",
        "capabilities": {k: DEFAULT_CAPS for k in ("bounding", "effective", "permitted")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    },
    "root": {"path": "rootfs", "readonly": False},
    "hostname": "crisp-test",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    ],
    "linux": {
        "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
        "maskedPaths": MASKED_PATHS,
        "readonlyPaths": READONLY_PATHS,
    },
}


def make_spec(args: list[str], **changes: Any) -> dict[str, Any]:
    """A spec running `args`; `changes` replace top-level keys, `process_*`/`linux_*` keys replace sub-keys."""
    spec = copy.deepcopy(_BASE)
    spec["process"]["args"] = args
    for key, value in changes.items():
        if key.startswith("process_"):
            spec["process"][key.removeprefix("process_")] = value
        elif key.startswith("linux_"):
            spec["linux"][key.removeprefix("linux_")] = value
        else:
            spec[key] = value
    return spec
