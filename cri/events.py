"""Container events for GetContainerEvents subscribers (the kubelet's evented PLEG), fanned out without blocking.

`EventPublisher` is what code that changes a container's or a pod's state calls, right after the change is
recorded: it builds the ContainerEventResponse (with the pod's status and all its containers' statuses as they are
at that moment, and only when someone subscribed) and hands it to the `EventBroker`.

Publishing never waits: each subscriber has a queue of at most `buffer` events. A subscriber whose queue is full
(its client stopped reading, and the HTTP/2 windows are full too, so that sending blocks) is dropped: it is taken
off the list at once, its queue is thrown away, and its RPC ends with RESOURCE_EXHAUSTED (queued behind the event
it was sending, which the server still sends whole: a client that reads again gets what was sent, then that status,
and subscribes again). The others never notice. Events reach every subscriber in the order they were published.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from cri import api as cri
from cri.status import pod_container_statuses, sandbox_status
from cri.store.containers import Container, ContainerStore
from cri.store.sandboxes import Sandbox, SandboxStore
from runtime import errors

log = logging.getLogger(__name__)


class Subscription:
    """One GetContainerEvents stream: events wait here until its RPC sends them."""

    def __init__(self, broker: EventBroker, buffer: int) -> None:
        self._broker = broker
        self._buffer = buffer
        self._queue: collections.deque[Any] = collections.deque()
        self._wakeup = asyncio.Event()
        self._ended = asyncio.Event()
        self.ended: errors.CrispError | None = None  # why this subscription ended (raised by `next`, `send`)

    def offer(self, event: Any) -> bool:
        """Queue an event; False (and nothing queued) when the queue is full."""
        if len(self._queue) >= self._buffer:
            return False
        self._queue.append(event)
        self._wakeup.set()
        return True

    def end(self, reason: errors.CrispError) -> None:
        """No more events: `next` and `send` raise `reason` (queued events are thrown away)."""
        self.ended = reason
        self._queue.clear()
        self._wakeup.set()
        self._ended.set()

    def drop(self) -> None:
        self.end(errors.ResourceExhausted(
            f"container events: this subscriber fell {self._buffer} events behind and was dropped; subscribe "
            "again (and list the containers)"))

    async def next(self) -> Any:
        """The next event; raises the reason once the subscription has ended."""
        while not self._queue:
            if self.ended is not None:
                raise self.ended
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._queue.popleft()

    async def send(self, write: Awaitable[Any]) -> None:
        """Await `write` (an event to the client), unless the subscription ends first: then raise the reason.
        A write blocks while the client reads nothing; it is abandoned then (the server still holds its message)."""
        writing = asyncio.ensure_future(write)
        ending = asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait({writing, ending}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ending.cancel()
        if writing.done():
            writing.result()
            return
        writing.cancel()
        assert self.ended is not None
        raise self.ended

    def close(self) -> None:
        self._broker.unsubscribe(self)


class EventBroker:
    """Fans published events out to the subscribers; `on_drop` hears of every dropped subscriber (metrics)."""

    def __init__(self, buffer: int, on_drop: Callable[[], None] | None = None) -> None:
        self.buffer = buffer
        self._subscribers: list[Subscription] = []
        self._on_drop = on_drop

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscription:
        """A new subscriber, from the next published event on."""
        sub = Subscription(self, self.buffer)
        self._subscribers.append(sub)
        log.debug("container events: subscriber added (%d now)", len(self._subscribers))
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)
            log.debug("container events: subscriber gone (%d left)", len(self._subscribers))

    def publish(self, event: Any) -> None:
        """Hand the event to every subscriber; never waits. A subscriber that cannot take it is dropped."""
        for sub in list(self._subscribers):
            if not sub.offer(event):
                log.warning("container events: a subscriber fell %d events behind; dropping it", self.buffer)
                self._subscribers.remove(sub)
                sub.drop()
                if self._on_drop is not None:
                    self._on_drop()

    def close(self) -> None:
        """crispd stops: every stream ends."""
        for sub in list(self._subscribers):
            self._subscribers.remove(sub)
            sub.end(errors.Unavailable("container events: crispd is shutting down"))


class EventPublisher:
    """Publishes container and pod state changes; the pod's id stands as the container id of a pod event, as
    containerd has it and the kubelet expects."""

    def __init__(self, broker: EventBroker, sandboxes: SandboxStore, containers: ContainerStore,
                 clock_ns: Callable[[], int]) -> None:
        self.broker = broker
        self._sandboxes = sandboxes
        self._containers = containers
        self._clock_ns = clock_ns

    def container(self, container: Container, event_type: int) -> None:
        """A container was created, started, stopped (its exit recorded) or deleted (its row gone)."""
        if self.broker.subscribers:
            self.broker.publish(self._response(container.id, container.meta.sandbox_id, event_type))

    def sandbox(self, sandbox: Sandbox, event_type: int) -> None:
        """A pod was created and started (RunPodSandbox done), stopped (not ready) or deleted (row gone)."""
        if self.broker.subscribers:
            self.broker.publish(self._response(sandbox.id, sandbox.id, event_type, sandbox))

    def _response(self, container_id: str, sandbox_id: str, event_type: int, sandbox: Sandbox | None = None
                  ) -> cri.ContainerEventResponse:
        """The event as the kubelet wants it; a removed pod is described by the object the caller still holds."""
        pod = sandbox if sandbox is not None else self._sandboxes.find(sandbox_id)
        response = cri.ContainerEventResponse(
            container_id=container_id, container_event_type=event_type,  # type: ignore[arg-type]
            created_at=self._clock_ns(), containers_statuses=pod_container_statuses(self._containers, sandbox_id))
        if pod is not None:
            response.pod_sandbox_status.CopyFrom(sandbox_status(pod))
        return response
