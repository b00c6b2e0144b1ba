"""Single-use tokens for streaming URLs: random, short-lived, capped in number, each carrying its request."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from cri.streaming.requests import StreamRequest
from runtime import errors

TOKEN_BYTES = 16   # 128 random bits, base64url: 22 characters


class TokenCache:
    def __init__(self, ttl: float, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self._clock = clock
        # token -> (expiry, request), oldest first
        self._entries: OrderedDict[str, tuple[float, StreamRequest]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, now: float) -> None:
        while self._entries:
            token, (expiry, _) = next(iter(self._entries.items()))
            if expiry > now:
                return
            del self._entries[token]

    def insert(self, request: StreamRequest) -> str:
        """A new token for request; ResourceExhausted when `capacity` unexpired tokens are waiting."""
        now = self._clock()
        self._expire(now)
        if len(self._entries) >= self.capacity:
            raise errors.ResourceExhausted(
                f"{len(self._entries)} streaming requests are waiting to be used: the maximum is {self.capacity}")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        while token in self._entries:  # pragma: no cover - 128 random bits
            token = secrets.token_urlsafe(TOKEN_BYTES)
        self._entries[token] = (now + self.ttl, request)
        return token

    def consume(self, token: str) -> StreamRequest | None:
        """The request behind token, once: None when it is unknown, used or expired."""
        entry = self._entries.pop(token, None)
        if entry is None:
            return None
        expiry, request = entry
        if self._clock() >= expiry:
            return None
        return request
