"""Boot the test VM once for one job (a bash script) and collect what it did.

The guest sees two 9p shares: `host` (a host directory, read-only, at /mnt/host) and `crispio` (the run's io
directory, read-write, at /run/crisp-vm/io) holding the job, its inputs, and what it writes back (exit status,
results). The root disk is opened with snapshot=on, so every guest write outside the io share is thrown away.
The job's stdout+stderr arrive through a virtio serial port in `<run>/output`; the kernel console in `<run>/console`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tests.vm.image import Image
from tests.vm.settings import VmSettings

QBOOT = Path("/usr/share/qemu/qboot.rom")
KERNEL_ARGS = (
    "console=ttyS0 quiet panic=-1 rw"
    # the point of the tier: the v1 hierarchies stay unmounted, so every controller is free for cgroup2
    " cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1"
    # less work at boot under TCG, where every instruction is emulated
    " mitigations=off init_on_alloc=0 nokaslr no_timer_check random.trust_cpu=on audit=0 nowatchdog"
    " cryptomgr.notests"
)
# the guests one image boots as: "plain" (crisp-vm-init is PID 1, no init system) or "systemd" (systemd is PID 1
# and runs crisp-vm-init as crisp-vm-job.service; no login prompts)
GUESTS = ("plain", "systemd")
SYSTEMD_ARGS = (
    " crisp.init=systemd systemd.wants=crisp-vm-job.service systemd.show_status=0"
    " systemd.mask=serial-getty@ttyS0.service systemd.mask=getty@tty1.service"
)


def kernel_args(guest: str) -> str:
    if guest not in GUESTS:
        raise ValueError(f"unknown guest {guest!r}: one of {GUESTS}")
    return KERNEL_ARGS + (SYSTEMD_ARGS if guest == "systemd" else "")


class VmError(RuntimeError):
    """The VM itself failed (QEMU missing or crashed, boot failure, timeout): not a verdict about a test."""


@dataclass(frozen=True)
class VmRun:
    """What one boot did: the job's exit status (None when the VM ended without one) and where its files are."""

    exit_status: int | None
    timed_out: bool
    seconds: float
    run_dir: Path

    @property
    def io_dir(self) -> Path:
        return self.run_dir / "io"

    def output(self) -> str:
        return _read(self.run_dir / "output")

    def console(self) -> str:
        return _read(self.run_dir / "console")

    def diagnosis(self, lines: int = 60) -> str:
        """The end of the job's output and of the kernel console, for an error message."""
        qemu = _read(self.run_dir / "qemu.log").strip()
        parts = [
            f"job output (last {lines} lines):", *self.output().splitlines()[-lines:],
            "kernel console (last 30 lines):", *self.console().splitlines()[-30:],
        ]
        if qemu:
            parts += ["qemu:", *qemu.splitlines()[-20:]]
        return "\n".join(parts)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def accelerator(settings: VmSettings) -> tuple[str, str]:
    """(-accel, -cpu). /dev/kvm on these machines is a paravirtual provider (kvm_pvm) that hangs stock kernels,
    so `auto` takes KVM only when a real VT-x/AMD-V module is loaded."""
    accel = settings.accel
    if accel == "auto":
        hardware = Path("/sys/module/kvm_intel").exists() or Path("/sys/module/kvm_amd").exists()
        accel = "kvm" if hardware and os.access("/dev/kvm", os.W_OK) else "tcg"
    return ("kvm", "host") if accel == "kvm" else ("tcg,thread=multi", "max")


def qemu_command(image: Image, settings: VmSettings, run_dir: Path, host_dir: Path, guest: str = "plain",
                 tools_dir: Path | None = None) -> list[str]:
    """`tools_dir`, when given, is shared read-only at /mnt/tools (the Go tools: the kubelet, crictl)."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise VmError("qemu-system-x86_64 is missing: `make test` installs it (qemu-system-x86 in TEST_DEBS)")
    accel, cpu = accelerator(settings)
    security = "passthrough" if os.geteuid() == 0 else "none"
    bios = ["-bios", str(QBOOT)] if QBOOT.exists() else []
    return [
        qemu, "-machine", "q35", "-accel", accel, "-cpu", cpu, "-smp", str(settings.cpus), "-m", settings.memory,
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", *bios,
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", kernel_args(guest),
        "-drive", f"file={image.root},if=virtio,format=raw,snapshot=on,cache=unsafe",
        "-fsdev", f"local,id=crispio,path={run_dir / 'io'},security_model={security}",
        "-device", "virtio-9p-pci,fsdev=crispio,mount_tag=crispio",
        "-fsdev", f"local,id=host,path={host_dir},security_model={security},readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=host,mount_tag=host",
        *(["-fsdev", f"local,id=tools,path={tools_dir},security_model={security},readonly=on",
           "-device", "virtio-9p-pci,fsdev=tools,mount_tag=tools"] if tools_dir is not None else []),
        "-device", "virtio-serial-pci",
        "-chardev", f"file,id=out,path={run_dir / 'output'},append=on",
        "-device", "virtserialport,chardev=out,name=out",
        "-serial", f"file:{run_dir / 'console'}",
    ]


def boot(image: Image, settings: VmSettings, run_dir: Path, job: str, host_dir: Path,
         timeout: float | None = None, stream: TextIO | None = None, guest: str = "plain",
         tools_dir: Path | None = None) -> VmRun:
    """Run `job` (bash source) as root in a fresh VM, cwd /; returns once the VM is off. `run_dir` must hold an
    `io/` directory with the job's inputs. With `stream`, the job's output is copied there while it runs."""
    io_dir = run_dir / "io"
    io_dir.mkdir(parents=True, exist_ok=True)
    (io_dir / "job").write_text(job)
    for stale in ("rc", "rc.tmp"):
        (io_dir / stale).unlink(missing_ok=True)
    (run_dir / "output").write_bytes(b"")
    argv = qemu_command(image, settings, run_dir, host_dir.resolve(), guest, tools_dir)
    limit = settings.timeout if timeout is None else timeout
    started = time.monotonic()
    with open(run_dir / "qemu.log", "wb") as qemu_log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=subprocess.STDOUT,
                                close_fds=True, env={**os.environ, "TMPDIR": str(run_dir)})
    follower = _follow(run_dir / "output", stream, proc) if stream is not None else None
    timed_out = False
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if follower is not None:
            follower.join()
    seconds = time.monotonic() - started
    try:
        status: int | None = int((io_dir / "rc").read_text())
    except (FileNotFoundError, ValueError):
        status = None
    return VmRun(exit_status=status, timed_out=timed_out, seconds=seconds, run_dir=run_dir)


def _follow(path: Path, stream: TextIO, proc: subprocess.Popen[bytes]) -> threading.Thread:
    def copy() -> None:
        with open(path, errors="replace") as source:
            while True:
                ended = proc.poll() is not None
                chunk = source.read()
                if chunk:
                    stream.write(chunk)
                    stream.flush()
                elif ended:
                    return
                else:
                    time.sleep(0.1)

    thread = threading.Thread(target=copy, name="crisp-vm-output", daemon=True)
    thread.start()
    return thread

