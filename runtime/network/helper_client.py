"""crispd's side of the network helper: a small pool of `python -m runtime.network.helper` processes.

pyroute2 and setns(2) stay out of crispd: the kernel work runs in helper processes that crispd starts with
runtime.aioproc (from a worker thread). Starting Python and importing pyroute2 costs a few hundred milliseconds,
much more than the work of a pod (tens of milliseconds), so a helper serves one request after another (JSON lines
on stdin/stdout) and the pool keeps up to `max_workers` of them, each doing one request at a time:
- a request that does not finish within its time limit, or whose caller is cancelled, gets its helper killed
  (it may be anywhere in its work; the caller cleans up with a new request);
- a helper that dies is replaced by the next request; one that served `max_requests` is retired;
- helpers idle for `idle_seconds` exit, as do all of them when crispd closes the pool or dies (end of input);
- but `keep_warm` of them stay (the pool starts one at crispd's start, `warm`, and another in the background
  whenever none is left, after a retirement, a kill or a crash): a pod that comes after a quiet minute, or after
  the 500th request, finds a helper ready instead of waiting for a Python start.
Helpers write their rare diagnostics to crispd's stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from typing import Any

from runtime import aioproc, errors
from runtime.network.types import NetworkError

log = logging.getLogger(__name__)

# -I: the helper is crisp's own module, never a `runtime` package in crispd's working directory (python -m puts
# the working directory first on sys.path otherwise)
HELPER_ARGV = (sys.executable, "-I", "-m", "runtime.network.helper")


class HelperTimeout(errors.DeadlineExceeded):
    """The helper did not answer in time and was killed; what it had done may not be undone."""


class HelperCrashed(NetworkError):
    """The helper died, answered nonsense, or could not undo its own steps: what it had done may not be undone."""


def decode_reply(line: bytes, op: str) -> dict[str, Any]:
    """The helper's result, or its error raised as the kind it named."""
    try:
        reply = json.loads(line)
    except ValueError:
        raise HelperCrashed(f"network helper ({op}) answered nonsense: {line[:200]!r}") from None
    if not isinstance(reply, dict):
        raise HelperCrashed(f"network helper ({op}) answered {reply!r}")
    if reply.get("ok"):
        result = reply.get("result", {})
        return result if isinstance(result, dict) else {}
    raise errors.from_kind(reply.get("kind"), str(reply.get("message", "the network helper failed")),
                           fallback=NetworkError, extra=(NetworkError, HelperCrashed))


class _Helper:
    def __init__(self, proc: aioproc.Process) -> None:
        self.proc = proc
        self.served = 0
        self.idle_since = 0.0

    async def ask(self, data: bytes) -> bytes:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()
        return await self.proc.stdout.readline()


class HelperRunner:
    """Runs helper requests on a pool of helper processes, each request with a time limit."""

    def __init__(self, timeout: float, max_workers: int = 4, idle_seconds: float = 60.0, max_requests: int = 500,
                 argv: tuple[str, ...] = HELPER_ARGV, keep_warm: int = 1) -> None:
        self.timeout = timeout
        self.idle_seconds = idle_seconds
        self.max_requests = max_requests
        self.keep_warm = keep_warm
        self._argv = argv
        self._slots = asyncio.Semaphore(max_workers)
        self._idle: list[_Helper] = []
        self._busy: set[_Helper] = set()
        self._reaper: asyncio.TimerHandle | None = None
        self._exits: set[asyncio.Task[None]] = set()
        self._warming: asyncio.Task[None] | None = None  # a helper started ahead of need
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """The helpers alive now (for tests and diagnostics)."""
        return [h.proc.pid for h in (*self._idle, *self._busy)]

    def warm(self) -> None:
        """Have `keep_warm` helpers ready: start one in the background if none is there or on its way."""
        if (self._closed or self._warming is not None or len(self._idle) + len(self._busy) >= self.keep_warm):
            return
        self._warming = asyncio.ensure_future(self._warm_one())

    async def _warm_one(self) -> None:
        try:
            helper = await self._spawn()
        except Exception as exc:  # the next request starts one itself (and says why it cannot)
            log.warning("network helper: cannot start one ahead of need: %s", exc)
            return
        finally:
            self._warming = None
        self._release(helper)

    async def _spawn(self) -> _Helper:
        proc = await aioproc.spawn(self._argv)  # started off the loop: a fork of crispd is slow
        log.debug("network helper %d started", proc.pid)
        return _Helper(proc)

    async def call(self, request: dict[str, Any], time_limit: float | None = None) -> dict[str, Any]:
        """The helper's answer to one request (within `time_limit`, default the runner's timeout)."""
        if self._closed:
            raise errors.Unavailable("crispd is shutting down: the network helpers are closed")
        op = str(request.get("op"))
        timeout = self.timeout if time_limit is None else time_limit
        data = json.dumps(request).encode() + b"\n"
        async with self._slots:
            helper = self._take_idle()
            if helper is None and self._warming is not None:
                await asyncio.wait({self._warming})  # one is on its way: take it rather than start another
                helper = self._take_idle()
            if helper is None:
                helper = await self._spawn()
            self._busy.add(helper)
            try:
                line = await asyncio.wait_for(helper.ask(data), timeout)
            except TimeoutError:
                await self._kill(helper)
                raise HelperTimeout(f"network helper ({op}) did not finish within {timeout:g}s") from None
            except (BrokenPipeError, ConnectionResetError):
                line = b""  # it died
            except BaseException:  # cancelled: the helper must not go on unwatched
                await self._kill(helper)
                raise
            if not line:
                await self._reap(helper)
                raise HelperCrashed(f"network helper ({op}) exited with {helper.proc.returncode} without an "
                                    "answer (its error is in crispd's log)")
            try:
                result = decode_reply(line, op)
            except HelperCrashed:
                await self._kill(helper)
                raise
            except Exception:
                self._done(helper)
                raise
            self._done(helper)
        return result

    def _take_idle(self) -> _Helper | None:
        while self._idle:
            helper = self._idle.pop()
            if helper.proc.returncode is None:
                return helper
            log.warning("network helper %d died while idle (exit status %s)", helper.proc.pid,
                        helper.proc.returncode)
        return None

    def _done(self, helper: _Helper) -> None:
        self._busy.discard(helper)
        helper.served += 1
        self._release(helper)

    def _release(self, helper: _Helper) -> None:
        if self._closed or helper.served >= self.max_requests:
            self._retire(helper)
            return
        loop = asyncio.get_running_loop()
        helper.idle_since = loop.time()
        self._idle.append(helper)
        if self._reaper is None:
            self._reaper = loop.call_later(self.idle_seconds, self._reap_idle)

    def _reap_idle(self) -> None:
        """Idle helpers past `idle_seconds` exit, oldest first, but `keep_warm` helpers stay."""
        self._reaper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        spare = len(self._idle) + len(self._busy) - self.keep_warm
        for helper in sorted((h for h in self._idle if now - h.idle_since >= self.idle_seconds),
                             key=lambda h: h.idle_since)[:max(0, spare)]:
            self._idle.remove(helper)
            self._retire(helper)
        if self._idle and len(self._idle) + len(self._busy) > self.keep_warm:  # (all busy: a release reschedules)
            oldest = min(h.idle_since for h in self._idle)
            self._reaper = loop.call_later(max(0.0, oldest + self.idle_seconds - now), self._reap_idle)

    def _retire(self, helper: _Helper) -> None:
        """Let the helper go: it exits at end of input; reaped in the background."""
        task = asyncio.ensure_future(self._let_go(helper))
        self._exits.add(task)
        task.add_done_callback(self._exits.discard)
        self.warm()

    async def _let_go(self, helper: _Helper) -> None:
        if helper.proc.stdin is not None:
            helper.proc.stdin.close()
        try:
            await asyncio.wait_for(helper.proc.wait(), 10.0)
        except TimeoutError:
            await kill_process(helper.proc)
        log.debug("network helper %d exited (%d requests)", helper.proc.pid, helper.served)

    async def _kill(self, helper: _Helper) -> None:
        self._busy.discard(helper)
        await kill_process(helper.proc)
        self.warm()

    async def _reap(self, helper: _Helper) -> None:
        """A helper whose output ended is exiting by itself: wait for it (killing a process that has just exited
        races with asyncio's child watcher over its exit status)."""
        self._busy.discard(helper)
        try:
            await asyncio.wait_for(asyncio.shield(helper.proc.wait()), 5.0)
        except TimeoutError:
            await kill_process(helper.proc)
        self.warm()

    async def close(self) -> None:
        """Stop every helper (crispd's shutdown)."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        if self._warming is not None:  # not cancelled: its process would be started all the same, and lost
            await asyncio.wait({self._warming})  # (it retires the helper: the pool is closed)
        idle, self._idle = self._idle, []
        for helper in idle:
            self._retire(helper)
        for helper in list(self._busy):
            await self._kill(helper)
        if self._exits:
            await asyncio.gather(*self._exits, return_exceptions=True)


async def kill_process(proc: aioproc.Process) -> None:
    """Kill a child we started (it may have exited already) and reap it, even when we are being cancelled."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(Exception):
        await asyncio.shield(proc.wait())
