"""Figures: create + start until the container's first instruction, crisp-executor vs runc vs crun (median of N).

    .venv/bin/python -m tests.bench.executor_start [N]

The container's program is busybox `dd` writing one byte into a fifo bind-mounted from the host; the clock stops
when that byte arrives (so the figure includes create, start, the exec and the program's first write). Run as
root from the repository root; prints one line per runtime. Not a test: nothing is asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runtime.linux import syscalls as sc
from tests.executor.conftest import executor_command
from tests.executor.rootfs import build_busybox_rootfs, make_spec


def runtimes() -> dict[str, list[str]]:
    out = {"crisp-executor": executor_command()}
    for name in ("runc", "crun"):
        found = shutil.which(name)
        if found is None:
            continue
        argv = [found]
        if name == "crun":  # crun 1.8 refuses this hybrid cgroup host; see tests/executor/conftest.py
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'umount -l "$(findmnt -n -t cgroup2 -o TARGET | head -n1)" && exec "$0" "$@"',
                    found, "--cgroup-manager=disabled"]
        out[name] = argv
    return out


def one_run(argv: list[str], root: Path, bundle: Path, fifo: Path, n: int) -> float:
    cid = f"crisp-bench-{os.getpid()}-{n}"
    pid_file = bundle / "pid"
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        t0 = time.perf_counter()
        # the container keeps create's stdio: a file, so that nothing waits for it to close
        with open(bundle / "stderr", "w+") as err:
            create = subprocess.run([*argv, "--root", str(root), "create", "--bundle", str(bundle), "--pid-file",
                                     str(pid_file), cid], stdin=subprocess.DEVNULL, stdout=err, stderr=err)
            if create.returncode != 0:
                err.seek(0)
                raise SystemExit(f"create failed: {err.read().strip()}")
        subprocess.run([*argv, "--root", str(root), "start", cid], check=True)
        os.set_blocking(reader, True)
        while not os.read(reader, 1):
            time.sleep(0.0002)  # the writer has not opened the fifo yet
        elapsed = time.perf_counter() - t0
    finally:
        os.close(reader)
    pid = int(pid_file.read_text())
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    subprocess.run([*argv, "--root", str(root), "delete", "--force", cid], check=True)
    return elapsed


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    # as an installed package would have them: without .pyc files (PYTHONDONTWRITEBYTECODE) every executor run
    # compiles its modules again (~30 ms)
    import compileall

    compileall.compile_dir(str(Path(__file__).resolve().parents[2] / "runtime"), quiet=1)
    sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
    with tempfile.TemporaryDirectory(prefix="crisp-bench-") as tmp:
        base = Path(tmp)
        rootfs = build_busybox_rootfs(base / "rootfs")
        fifo_dir = base / "sig"
        fifo_dir.mkdir()
        fifo = fifo_dir / "fifo"
        os.mkfifo(fifo)
        spec = make_spec(["/bin/busybox", "dd", "if=/dev/zero", "of=/sig/fifo", "bs=1", "count=1"],
                         root={"path": str(rootfs), "readonly": True})
        spec["mounts"].append({"destination": "/sig", "type": "bind", "source": str(fifo_dir),
                               "options": ["rbind", "rw"]})
        (rootfs / "sig").mkdir()
        print(f"create+start to the first instruction, {count} runs each (seconds)")
        for name, argv in runtimes().items():
            bundle = base / f"bundle-{name}"
            bundle.mkdir()
            (bundle / "config.json").write_text(json.dumps(spec))
            times = [one_run(argv, base / f"root-{name}", bundle, fifo, n) for n in range(count)]
            times.sort()
            print(f"{name:15s} median {statistics.median(times) * 1000:7.1f} ms   "
                  f"p90 {times[int(len(times) * 0.9) - 1] * 1000:7.1f} ms   min {times[0] * 1000:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
