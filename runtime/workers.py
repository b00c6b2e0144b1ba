"""Worker thread pools whose threads all exist before the event loop needs them.

A pool starts a thread on a submit that finds none idle, and `Thread.start` waits until the new thread runs: on a
busy host the loop then stalls for as long as the kernel takes to schedule it (measured at 130 ms at a load of 15
on 2 cores, in the first `asyncio.to_thread` of a RunPodSandbox). Pools made here start every thread at once,
before serving.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

# asyncio's own default executor size
DEFAULT_WORKERS = min(32, (os.cpu_count() or 1) + 4)


def prestart_pool(pool: ThreadPoolExecutor, workers: int) -> None:
    """Make `pool` start `workers` threads: each job waits until all of them run at once. Blocking: call it
    before the loop runs."""
    barrier = threading.Barrier(workers)
    jobs = [pool.submit(barrier.wait, 30) for _ in range(workers)]
    for job in jobs:
        job.result()


def started_pool(workers: int, name: str) -> ThreadPoolExecutor:
    """A pool of `workers` threads, all running (blocking: before the loop runs)."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    prestart_pool(pool, workers)
    return pool
