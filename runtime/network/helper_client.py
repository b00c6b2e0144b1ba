"""crispd's side of the network helper: run `python -m runtime.network.helper` with one JSON request.

The helper is a fresh process per request (pyroute2 and setns(2) stay out of crispd). Starting Python and
importing pyroute2 costs a few hundred milliseconds, so `HelperRunner` keeps one helper started ahead of time
(`prestart`): it waits for its request on stdin, and the next spare starts as soon as it is taken. A spare that
crispd never uses exits when its stdin closes (crispd's `close()`, or crispd's death).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from typing import Any

from runtime import errors
from runtime.network.types import NetworkError

log = logging.getLogger(__name__)

HELPER_ARGV = (sys.executable, "-m", "runtime.network.helper")


class HelperTimeout(errors.DeadlineExceeded):
    """The helper did not answer in time and was killed; what it had done may not be undone."""


class HelperCrashed(NetworkError):
    """The helper died or answered nonsense; what it had done may not be undone."""


_KINDS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (errors.NotFound, errors.AlreadyExists, errors.InvalidArgument, errors.FailedPrecondition,
                errors.Unavailable, errors.ResourceExhausted, errors.DeadlineExceeded, NetworkError)
}


def decode_reply(stdout: bytes, stderr: bytes, returncode: int | None, op: str) -> dict[str, Any]:
    """The helper's result, or its error raised as the kind it named."""
    try:
        reply = json.loads(stdout)
    except ValueError:
        raise HelperCrashed(f"network helper ({op}) exited with {returncode} and no answer: "
                            f"{stderr.decode(errors='replace').strip()[-2000:]}") from None
    if not isinstance(reply, dict):
        raise HelperCrashed(f"network helper ({op}) answered {reply!r}")
    if reply.get("ok"):
        result = reply.get("result", {})
        return result if isinstance(result, dict) else {}
    kind = _KINDS.get(str(reply.get("kind")), NetworkError)
    raise kind(str(reply.get("message", "the network helper failed")))


class HelperRunner:
    """Runs helper requests, each in its own helper process, with a timeout."""

    def __init__(self, timeout: float, prestart: bool = True, argv: tuple[str, ...] = HELPER_ARGV) -> None:
        self.timeout = timeout
        self.prestart = prestart
        self._argv = argv
        self._spare: asyncio.subprocess.Process | None = None
        self._closed = False

    async def _spawn(self) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *self._argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, close_fds=True)

    async def _take(self) -> asyncio.subprocess.Process:
        spare, self._spare = self._spare, None
        if spare is None or spare.returncode is not None:
            spare = await self._spawn()
        if self.prestart and not self._closed:
            self._spare = await self._spawn()
        return spare

    async def call(self, request: dict[str, Any], time_limit: float | None = None) -> dict[str, Any]:
        """The helper's answer to one request (within `time_limit`, default the runner's timeout)."""
        op = str(request.get("op"))
        timeout = self.timeout if time_limit is None else time_limit
        proc = await self._take()
        data = json.dumps(request).encode() + b"\n"
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(data), timeout)
        except TimeoutError:
            await kill_process(proc)
            raise HelperTimeout(f"network helper ({op}) did not finish within {timeout:g}s") from None
        except BaseException:  # cancelled: the helper must not go on without anyone to read its answer
            await kill_process(proc)
            raise
        if stderr:
            log.debug("network helper (%s): %s", op, stderr.decode(errors="replace").strip())
        return decode_reply(stdout, stderr, proc.returncode, op)

    async def close(self) -> None:
        """Let the spare helper go (it exits on end of input)."""
        self._closed = True
        spare, self._spare = self._spare, None
        if spare is not None and spare.returncode is None:
            try:
                await asyncio.wait_for(spare.communicate(b""), self.timeout)
            except TimeoutError:
                await kill_process(spare)


async def kill_process(proc: asyncio.subprocess.Process) -> None:
    """Kill a child we started (it may have exited already) and reap it, even when we are being cancelled."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(Exception):
        await asyncio.shield(proc.wait())
