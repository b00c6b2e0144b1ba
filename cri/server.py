"""One guard around every RPC for readiness, logging, timing and error mapping (the server is cri/rpcserver.py)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from cri.metrics import Metrics, RpcMetrics
from cri.rpcserver import AbortError, Context, Method, StatusCode
from runtime import errors
from runtime.ttrpc.wire import code_of

log = logging.getLogger(__name__)

# Called often by the kubelet: logged at DEBUG, everything else (state changes) at INFO.
_QUIET_PREFIXES = ("List", "Status", "Version", "RuntimeConfig", "ImageFsInfo")
_QUIET_SUFFIXES = ("Status", "Stats", "Metrics", "MetricDescriptors")


def _is_quiet(method: str) -> bool:
    return method.startswith(_QUIET_PREFIXES) or method.endswith(_QUIET_SUFFIXES)


class Readiness:
    """Set once crispd has opened its store and reconciled its state; until then RPCs get UNAVAILABLE."""

    def __init__(self) -> None:
        self._ready = False
        self.reason = "crispd is starting"

    @property
    def ready(self) -> bool:
        return self._ready

    def set_ready(self) -> None:
        self._ready = True

    def set_not_ready(self, reason: str) -> None:
        self._ready = False
        self.reason = reason


class RpcGuard:
    """Readiness gate, logging, timing and the error-kind -> gRPC status mapping, in exactly one place: `wrap`
    wraps each RPC's behaviour once, when the servicers are registered, not on every call."""

    def __init__(self, readiness: Readiness, metrics: Metrics) -> None:
        self._readiness = readiness
        self._metrics = metrics

    def wrap(self, method: Method) -> Method:
        """`method` guarded; CRI has no client-streaming RPCs."""
        if method.streaming:
            return method.with_behaviour(self._wrap_stream(method.service, method.name, method.behaviour))
        return method.with_behaviour(self._wrap_unary(method.service, method.name, method.behaviour))

    def _wrap_unary(self, service: str, method: str, behavior: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        metrics = self._metrics.rpc("unary", service, method)
        readiness = self._readiness

        async def call(request: Any, context: Context) -> Any:
            start = time.monotonic()
            code = StatusCode.OK
            metrics.started()
            try:
                if not readiness.ready:  # the one check, inline: no call on the ready path
                    raise self._unavailable(method)
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
                metrics.sent()
                return result
            except BaseException as exc:
                code, message = self._classify(method, context, exc)
                if message is None:
                    raise
                await context.abort(code, message)
            finally:
                self._record(metrics, method, code, start)

        return call

    def _wrap_stream(self, service: str, method: str, behavior: Callable[..., Any]
                     ) -> Callable[..., AsyncIterator[Any]]:
        metrics = self._metrics.rpc("server_stream", service, method)
        readiness = self._readiness

        async def call(request: Any, context: Context) -> AsyncIterator[Any]:
            start = time.monotonic()
            code = StatusCode.OK
            metrics.started()
            try:
                if not readiness.ready:
                    raise self._unavailable(method)
                result = behavior(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                        metrics.sent()
                elif inspect.isawaitable(result):
                    await result
            except BaseException as exc:
                code, message = self._classify(method, context, exc)
                if message is None:
                    raise
                await context.abort(code, message)
            finally:
                self._record(metrics, method, code, start)

        return call

    def _unavailable(self, method: str) -> errors.Unavailable:
        """What an RPC gets while crispd is not ready (starting, stopping)."""
        return errors.Unavailable(f"{method}: {self._readiness.reason}")

    def _classify(
        self, method: str, context: Context, exc: BaseException
    ) -> tuple[StatusCode, str | None]:
        """The status for an exception, and the message to abort with (None: re-raise it unchanged)."""
        if isinstance(exc, asyncio.CancelledError):
            log.debug("%s cancelled by the client", method)
            return StatusCode.CANCELLED, None
        if isinstance(exc, AbortError):
            # a servicer aborted with a status of its own: keep it
            return context.code() or StatusCode.UNKNOWN, None
        if isinstance(exc, GeneratorExit):
            return StatusCode.CANCELLED, None
        code = code_of(exc, StatusCode.INTERNAL)
        if code is StatusCode.INTERNAL:
            log.error("%s failed: %s", method, exc, exc_info=exc)
            return code, f"{method}: internal error: {exc}"
        log.log(logging.DEBUG if _is_quiet(method) else logging.INFO, "%s: %s: %s", method, code.name, exc)
        return code, str(exc)

    def _record(self, metrics: RpcMetrics, method: str, code: StatusCode, start: float) -> None:
        seconds = time.monotonic() - start
        metrics.handled(code, seconds)
        if code is StatusCode.OK:
            log.log(logging.DEBUG if _is_quiet(method) else logging.INFO, "%s ok in %.1f ms", method, seconds * 1e3)
