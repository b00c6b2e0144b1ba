"""crispd's slow-callback check counts the time a callback ran or blocked, not the time the kernel kept the loop's
thread waiting for a CPU (cri/slowcallbacks.py). Each case runs in its own interpreter: the check patches asyncio."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import asyncio, logging, os, sys, time
    from cri import slowcallbacks
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    def work(kind):
        if kind == "blocks":
            time.sleep(0.2)               # blocks the loop: the check's very case
        else:
            # 10 ms on a CPU, however long the wait for one: longer than a scheduler tick, so that at nice 19 beside
            # a busy loop it is taken off the CPU and waits, whatever point of a time slice it started at
            end = time.thread_time() + 0.01
            while time.thread_time() < end:
                pass

    async def main():
        hog = None
        if sys.argv[2] == "starve":
            # this thread and a busy loop on one CPU, the busy loop at nice 0 and this thread at 19: the callback
            # spends most of its wall time on the run queue
            import subprocess
            cpu = min(os.sched_getaffinity(0))
            os.sched_setaffinity(0, {cpu})
            # the hog says when it spins: under load its interpreter can take longer to start than any fixed sleep
            hog = subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c",
                                    "print('spinning', flush=True)\\nwhile True: pass"],
                                   stdout=subprocess.PIPE)
            assert hog.stdout.readline() == b"spinning\\n"
            os.nice(19)
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        slowcallbacks.install(0.05)
        loop.slow_callback_duration = 0.05
        t0 = time.monotonic()
        loop.call_soon(work, sys.argv[1])
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        print("wall", time.monotonic() - t0, file=sys.stderr)
        if hog is not None:
            hog.kill()
            hog.wait()

    asyncio.run(main())
""")


def _run(kind: str, starve: bool) -> str:
    cmd = [sys.executable, "-c", SCRIPT, kind, "starve" if starve else "free"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=True).stderr


def test_a_callback_that_blocks_is_reported() -> None:
    out = _run("blocks", starve=False)
    assert "took 0.2" in out and "waiting for a CPU" in out, out


def test_a_short_callback_kept_off_the_cpu_is_not() -> None:
    out = _run("computes", starve=True)
    wall = float(out.split("wall ")[-1].split()[0])
    assert "Executing" not in out, out
    # the case is real only if the script was starved well past the threshold
    assert wall > 0.05, out


def test_a_short_callback_on_a_free_cpu_is_not() -> None:
    assert "Executing" not in _run("computes", starve=False)


def test_installed_is_undone_and_not_stacked() -> None:
    """Tests install the check around one loop: it is undone after, and an install inside another one adds no
    second wrapper or filter (a callback is timed once)."""
    import asyncio.events
    import logging

    from cri import slowcallbacks

    run, filters = asyncio.events.Handle._run, list(logging.getLogger("asyncio").filters)
    with slowcallbacks.installed(0.1):
        wrapped = asyncio.events.Handle._run
        assert wrapped is not run and len(logging.getLogger("asyncio").filters) == len(filters) + 1
        with slowcallbacks.installed(0.2):
            assert asyncio.events.Handle._run is wrapped
            assert len(logging.getLogger("asyncio").filters) == len(filters) + 1
            assert [f.threshold for f in logging.getLogger("asyncio").filters if hasattr(f, "threshold")] == [0.2]
        assert [f.threshold for f in logging.getLogger("asyncio").filters if hasattr(f, "threshold")] == [0.1]
    assert asyncio.events.Handle._run is run and logging.getLogger("asyncio").filters == filters
