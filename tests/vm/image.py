"""The VM image: a Debian bookworm kernel, a busybox initramfs and an ext4 root disk, built once from Debian packages.

The image lives in `<cache>/images/<key>/`, where the key hashes every input of the build (this file, the guest-side
scripts in `files/`, the package list, the mirrors). A run on a fresh machine builds it once (mmdebstrap, ~1-2 min);
later runs with the same inputs reuse it. Builds hold `<cache>/lock`, so concurrent test runs build at most once.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.vm.settings import VmSettings, prune
from tests.vm.wheels import run_time_requirements

SUITE = "bookworm"
# What the guest tests use: Python for pytest + crisp, the OCI runtimes for differential tests, busybox as a
# container root file system, catatonit as a shared-PID pod's PID 1, docker-registry to serve images to a crispd in
# the guest (it has no network), and the usual tools (ip, nsenter, mount, ps, modprobe, nft, CNI plugins); systemd
# for the systemd guest, whose PID 1 it is (the plain guest never starts it), and dbus so that crisp's D-Bus client
# is tried on a system bus too.
GUEST_PACKAGES = (
    "python3", "python3-venv", "iproute2", "util-linux", "mount", "procps", "kmod", "nftables", "iptables",
    "runc", "crun", "containernetworking-plugins", "busybox-static", "docker-registry", "systemd", "dbus", "criu",
    "catatonit",
)
# the Debian kernel builds these as modules; the initramfs loads them to reach the root disk and the 9p shares
INITRD_MODULES = ("virtio_pci", "virtio_blk", "ext4", "9p", "9pnet_virtio", "virtio_console")
# driver trees a virtual test machine never needs (keeps the root image ~200 MB smaller)
PRUNE_MODULE_DIRS = (
    "sound", "drivers/gpu", "drivers/media", "drivers/infiniband", "drivers/usb", "drivers/iio", "drivers/staging",
    "drivers/comedi", "drivers/bluetooth", "drivers/hwmon", "drivers/isdn", "drivers/net/wireless",
    "drivers/net/ethernet", "drivers/net/can", "net/wireless", "net/mac80211", "net/bluetooth",
)
DISK_SIZE = "4G"  # sparse; the guest writes to a snapshot, never to the image
FILES = Path(__file__).parent / "files"
KEEP_UNUSED_DAYS = 7
KEEP_OTHER_IMAGES = 3  # each ~600 MiB
XZ_MAGIC = b"\xfd7zXZ\x00"
MODULE_SIGNATURE_MAGIC = b"~Module signature appended~\n"


class ImageBuildError(RuntimeError):
    """The image could not be built (missing host tool, mirror unreachable, ...)."""


@dataclass(frozen=True)
class Image:
    """A built image: boot `kernel` with `initrd`; open `root` read-only (snapshot=on)."""

    dir: Path
    key: str
    kernel: Path
    initrd: Path
    root: Path
    kernel_version: str
    built_now: bool = False
    build_seconds: float = 0.0


def image_key(settings: VmSettings, wheels: Path) -> str:
    """A digest of every input of the image build; a change in any of them means a new image."""
    digest = hashlib.sha256()
    for path in [Path(__file__), *sorted(FILES.iterdir())]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(repr((SUITE, settings.mirror, settings.security_mirror, wheels.name)).encode())
    return digest.hexdigest()[:16]


def ensure_image(settings: VmSettings, wheels: Path, force: bool = False,
                 log: Callable[[str], None] | None = None) -> Image:
    """The image for the current inputs (`wheels`: crisp's dependencies, baked into the guest's venv), built
    first when the cache does not hold it yet. The caller holds `cache_lock`."""
    key = image_key(settings, wheels)
    images = settings.cache_dir / "images"
    target = images / key
    found = None if force else _image_at(target, key)
    if found is not None:
        return _used(found)
    started = time.monotonic()
    _build(settings, wheels, target, log or _stderr)
    prune(images, keep=target, keep_others=KEEP_OTHER_IMAGES, days=KEEP_UNUSED_DAYS)
    built = _image_at(target, key)
    if built is None:
        raise ImageBuildError(f"the image build finished but {target} is incomplete")
    return _used(Image(**{**built.__dict__, "built_now": True, "build_seconds": time.monotonic() - started}))


def _image_at(path: Path, key: str) -> Image | None:
    try:
        kernel = path / (path / "kernel").read_text().strip()
        version = (path / "kernel-version").read_text().strip()
        if (path / "stamp").read_text().strip() != key:
            return None
    except FileNotFoundError:
        return None
    return Image(dir=path, key=key, kernel=kernel, initrd=path / "initrd.img", root=path / "root.img",
                 kernel_version=version)


def _used(image: Image) -> Image:
    (image.dir / "last-used").touch()
    return image


def _stderr(message: str) -> None:
    print(f"crisp-vm: {message}", file=sys.stderr, flush=True)


def _require_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
               is None]
    if missing:
        raise ImageBuildError(f"missing host tools {missing}: `make test` installs them (TEST_DEBS in the Makefile)")


def _run(argv: list[str], log_file: Path, **kwargs: object) -> None:
    with open(log_file, "ab") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, close_fds=True, check=False,
                              **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-30:]
        raise ImageBuildError(f"{argv[0]} failed with status {done.returncode}:\n" + "\n".join(tail))


def _build(settings: VmSettings, wheels: Path, target: Path, log: Callable[[str], None]) -> None:
    _require_tools("mmdebstrap", "mke2fs")
    if os.geteuid() != 0:
        raise ImageBuildError("building the VM image needs root (mmdebstrap, device nodes in the root image)")
    for stale in settings.cache_dir.glob("build.*"):  # left by a build that was killed (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    build = settings.cache_dir / f"build.{os.getpid()}"
    out, rootfs, initrd = build / "out", build / "rootfs", build / "initrd"
    out.mkdir(parents=True)
    build_log = build / "build.log"
    # crisp's run-time dependencies, for the node venv the systemd guest's installer finds (files/venv.sh)
    requirements = build / "node-requirements.txt"
    requirements.write_text("".join(requirement + "\n" for requirement in run_time_requirements()))
    try:
        log(f"building the {SUITE} kernel + root image into {target} (mmdebstrap, takes a minute or two)")
        hook = (f"sh {FILES / 'customize.sh'} \"$1\" {out} '{' '.join(PRUNE_MODULE_DIRS)}' "
                f"'{' '.join(INITRD_MODULES)}'")
        _run([
            "mmdebstrap", "--variant=minbase", "--include=" + ",".join(GUEST_PACKAGES),
            "--dpkgopt=force-unsafe-io", "--aptopt=Acquire::Languages \"none\"",
            "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/info/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-include=/usr/share/locale/locale.alias",
            "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            f"--customize-hook={hook}",
            f"--customize-hook=sh {FILES / 'venv.sh'} \"$1\" {wheels} {out} {requirements}",
            SUITE, str(rootfs),
            f"deb {settings.mirror} {SUITE} main", f"deb {settings.mirror} {SUITE}-updates main",
            f"deb {settings.security_mirror} {SUITE}-security main",
        ], build_log)
        _write_kernel(out)
        _write_initramfs(rootfs, initrd, out, build_log)
        shutil.copyfile(FILES / "vm-init", rootfs / "sbin" / "crisp-vm-init")
        (rootfs / "sbin" / "crisp-vm-init").chmod(0o755)
        shutil.copyfile(FILES / "crisp-vm-job.service", rootfs / "etc" / "systemd" / "system" / "crisp-vm-job.service")
        subprocess.run(["truncate", "-s", DISK_SIZE, str(out / "root.img")], check=True)
        _run(["mke2fs", "-q", "-t", "ext4", "-L", "crisp-vm", "-E", "root_owner=0:0", "-d", str(rootfs), "-F",
              str(out / "root.img")], build_log)
        (out / "initrd-modules.txt").unlink()
        (out / "stamp").write_text(target.name + "\n")
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        out.rename(target)
        log(f"image ready in {target}: kernel {(target / 'kernel-version').read_text().strip()}, "
            f"{_disk_usage(target) // 2**20} MiB on disk")
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _write_kernel(out: Path) -> None:
    """Unpack the xz payload of Debian's bzImage into an ELF vmlinux: QEMU then enters it through PVH, skipping
    real-mode setup and the in-guest decompression (several seconds under TCG). Falls back to the bzImage."""
    packed = (out / "vmlinuz").read_bytes()
    start = packed.find(XZ_MAGIC)
    if start >= 0:
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        try:
            elf = decompressor.decompress(packed[start:])
        except lzma.LZMAError:
            elf = b""
        if elf.startswith(b"\x7fELF"):
            (out / "vmlinux").write_bytes(elf)
            (out / "vmlinuz").unlink()
            (out / "kernel").write_text("vmlinux\n")
            return
    (out / "kernel").write_text("vmlinuz\n")


def _write_initramfs(rootfs: Path, initrd: Path, out: Path, build_log: Path) -> None:
    """busybox + the modules the initramfs loads (signatures stripped: no RSA check per insmod under TCG)."""
    for sub in ("bin", "mods", "newroot", "proc", "sys", "dev"):
        (initrd / sub).mkdir(parents=True)
    shutil.copy2(rootfs / "usr/bin/busybox", initrd / "bin/busybox")
    order: list[str] = []
    for line in (out / "initrd-modules.txt").read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "insmod" and words[1] not in order:
            order.append(words[1])
    for module in order:
        data = (rootfs / module.lstrip("/")).read_bytes()
        (initrd / "mods" / Path(module).name).write_bytes(_strip_module_signature(data))
    (initrd / "modules").write_text("".join(Path(m).name + "\n" for m in order))
    shutil.copyfile(FILES / "initramfs-init", initrd / "init")
    (initrd / "init").chmod(0o755)
    names = subprocess.run(["find", "."], cwd=initrd, check=True, capture_output=True).stdout
    with open(out / "initrd.img", "wb") as cpio, open(build_log, "ab") as errors:
        subprocess.run([str(rootfs / "usr/bin/busybox"), "cpio", "-o", "-H", "newc"], cwd=initrd, input=names,
                       stdout=cpio, stderr=errors, check=True)


def _strip_module_signature(data: bytes) -> bytes:
    # layout: module | signature | 12-byte struct module_signature (sig_len: last 4 bytes, big endian) | magic
    if not data.endswith(MODULE_SIGNATURE_MAGIC):
        return data
    info_end = len(data) - len(MODULE_SIGNATURE_MAGIC)
    signature_length = int.from_bytes(data[info_end - 4:info_end], "big")
    return data[:info_end - 12 - signature_length]


def _disk_usage(path: Path) -> int:
    return sum(entry.stat().st_blocks * 512 for entry in path.rglob("*") if entry.is_file())
