"""Command line of the VM tier, for building ahead and for debugging (the tests themselves run through pytest).

  python -m tests.vm build [--force]   build (or reuse) the wheels and the image; print where they are
  python -m tests.vm run [--systemd] CMD [ARG...]
                                       run one command as root in a fresh VM (--systemd: the guest whose PID 1
                                       is systemd): the checkout is read-only at /mnt/host, crisp (from it) in
                                       /opt/crisp-tests; exit status is CMD's
  python -m tests.vm test NODEID...    run these tests in one boot, streaming the guest's pytest output (tests
                                       under tests/vm/guest_systemd in the systemd guest, in a boot of their own)
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.vm.image import ensure_image
from tests.vm.machine import boot
from tests.vm.settings import VmSettings, cache_lock
from tests.vm.tier import run_guest_tests
from tests.vm.wheels import REPO, build_crisp_wheel, ensure_dependency_wheels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.vm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build or reuse the image")
    build.add_argument("--force", action="store_true", help="rebuild even when the cache holds the image")
    run = commands.add_parser("run", help="run one command in a fresh VM")
    run.add_argument("--systemd", action="store_true", help="boot the guest whose PID 1 is systemd")
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    test = commands.add_parser("test", help="run guest tests in one boot")
    test.add_argument("nodeids", nargs="+")
    args = parser.parse_args(argv)
    settings = VmSettings.from_env()

    if args.command == "test":
        status = 0
        for guest in ("plain", "systemd"):
            nodeids = [n for n in args.nodeids if n.startswith("tests/vm/guest_systemd") == (guest == "systemd")]
            if not nodeids:
                continue
            result = run_guest_tests(nodeids, settings, stream=sys.stdout, guest=guest)
            print(f"crisp-vm: {result.summary()}")
            if result.error:
                print(result.error, file=sys.stderr)
            bad = [r for r in result.results.values() if r.outcome not in ("passed", "skipped", "xfailed")]
            status = 1 if bad or result.error else status
        return status

    started = time.monotonic()
    with cache_lock(settings.cache_dir):
        wheels = ensure_dependency_wheels(settings)
        image = ensure_image(settings, wheels, force=getattr(args, "force", False))
    if args.command == "build":
        state = f"built in {image.build_seconds:.0f}s" if image.built_now else "cached"
        print(f"image {image.dir} ({state}; kernel {image.kernel_version}); wheels {wheels}; "
              f"{time.monotonic() - started:.1f}s")
        return 0

    if not args.cmd:
        parser.error("run: which command?")
    run_dir = Path(tempfile.mkdtemp(prefix="crisp-vm-run-"))
    try:
        build_crisp_wheel(run_dir / "io" / "crisp-wheel")
        install = ("/opt/crisp-tests/bin/python /mnt/host/tests/vm/install_wheel.py "
                   "/run/crisp-vm/io/crisp-wheel/crisp-*.whl")
        job = (f"{install} >/dev/null || exit 125\ncd /mnt/host\nexport PATH=/opt/crisp-tests/bin:$PATH\n"
               f"exec {shlex.join(args.cmd)}\n")
        guest = "systemd" if args.systemd else "plain"
        result_run = boot(image, settings, run_dir, job, REPO, stream=sys.stdout, guest=guest)
        if result_run.exit_status is None:
            print(result_run.diagnosis(), file=sys.stderr)
            return 124 if result_run.timed_out else 125
        return result_run.exit_status
    finally:
        if settings.keep_run_dir:
            print(f"crisp-vm: run directory kept in {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
