"""runtime/workers.py: a pool's threads all run before anyone submits to it (a thread started on a submit holds the
event loop until the kernel schedules it)."""

from __future__ import annotations

import threading

from runtime.workers import started_pool


def test_every_thread_runs_before_the_first_submit() -> None:
    before = threading.active_count()
    pool = started_pool(5, "crisp-test-worker")
    try:
        assert threading.active_count() == before + 5
        # five jobs at once need no new thread
        barrier = threading.Barrier(5)
        for job in [pool.submit(barrier.wait, 10) for _ in range(5)]:
            job.result()
        assert threading.active_count() == before + 5
    finally:
        pool.shutdown(wait=True)
    assert threading.active_count() == before
