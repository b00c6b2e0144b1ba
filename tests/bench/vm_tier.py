"""Figures for the VM tier (not a test): as root, `python -m tests.bench.vm_tier [--cold] [--boots N]`.

Prints: the time to build (or find) the wheels and the image and the cache's size; per boot (median of N, 3),
the guest's uptime when the job starts and the wall time of a whole boot of `true`; inside one boot, what a Python
start, a `runc run` of a busybox container and crisp's wheel install cost under TCG. With --cold the image is built
into a temporary cache, removed afterwards (the figures then include a full mmdebstrap build).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.vm.image import ensure_image
from tests.vm.machine import boot
from tests.vm.settings import VmSettings, cache_lock
from tests.vm.wheels import REPO, build_crisp_wheel, ensure_dependency_wheels

# runs in the guest: prints "<step> <seconds>" lines
PROBE = r"""
set -e
t() { cut -d' ' -f1 /proc/uptime; }
P=/opt/crisp-tests/bin/python
echo "job-start $(t)"
s=$(t); $P -c pass; echo "python-start $(awk "BEGIN{print $(t)-$s}")"
s=$(t); $P /mnt/host/tests/vm/install_wheel.py /run/crisp-vm/io/crisp-wheel/crisp-*.whl >/dev/null
echo "install-crisp $(awk "BEGIN{print $(t)-$s}")"
s=$(t); $P -c 'import cri.oci, runtime.cgroups'; echo "import-crisp $(awk "BEGIN{print $(t)-$s}")"
b=/tmp/bundle; mkdir -p $b/rootfs/bin; cp /bin/busybox $b/rootfs/bin/; ln -s busybox $b/rootfs/bin/true
cd $b; runc spec; sed -i 's/"terminal": true/"terminal": false/; s/"sh"/"true"/' config.json
s=$(t); runc run crisp-bench </dev/null >/dev/null; echo "runc-run $(awk "BEGIN{print $(t)-$s}")"
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold", action="store_true", help="build into a temporary cache")
    parser.add_argument("--boots", type=int, default=3)
    args = parser.parse_args()
    settings = VmSettings.from_env()
    scratch = Path(tempfile.mkdtemp(prefix="crisp-vm-bench-"))
    try:
        if args.cold:
            settings = dataclasses.replace(settings, cache_dir=scratch / "cache")
        started = time.monotonic()
        with cache_lock(settings.cache_dir):
            wheels = ensure_dependency_wheels(settings)
            image = ensure_image(settings, wheels)
        print(f"wheels + image ready in {time.monotonic() - started:.1f}s "
              f"({'built' if image.built_now else 'cached'}; cache {_size(settings.cache_dir) / 2**20:.0f} MiB "
              f"in {settings.cache_dir})")
        job_starts, walls = [], []
        for n in range(args.boots):
            run_dir = scratch / f"boot{n}"
            run = boot(image, settings, run_dir, "echo job-start $(cut -d' ' -f1 /proc/uptime)\n", REPO)
            job_starts.append(float(run.output().split()[1]))
            walls.append(run.seconds)
        print(f"boot of `true`: job starts at {statistics.median(job_starts):.2f}s guest uptime, "
              f"whole boot {statistics.median(walls):.2f}s wall (median of {args.boots})")
        run_dir = scratch / "probe"
        build_crisp_wheel(run_dir / "io" / "crisp-wheel")
        run = boot(image, settings, run_dir, PROBE, REPO)
        if run.exit_status != 0:
            print(run.diagnosis(), file=sys.stderr)
            return 1
        for line in run.output().splitlines():
            name, _, value = line.partition(" ")
            print(f"in the guest: {name} {float(value):.2f}s")
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _size(path: Path) -> int:
    return sum(entry.stat().st_blocks * 512 for entry in path.rglob("*") if entry.is_file())


if __name__ == "__main__":
    sys.exit(main())
