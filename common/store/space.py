"""Waiting out a full disk: a store whose writes, refused for lack of room, are tried again.

A full disk is usually temporary (an operator frees space, logs rotate, a volume grows), while
failing the write costs the run: a hospital's update would be left out of the round, and the
coordinator would stop. So ``SpaceWaitingStore.put`` retries a ``StoreFullError`` with
exponential backoff, logging a WARNING ``store_full`` event before each wait, for a bounded time
(``SPACE_POLICY``: at most ``SPACE_POLICY.longest_wait()`` = 571 s, about 10 minutes), after
which the ``StoreFullError`` propagates. Every other error propagates at once: a permanent one
must not wait. Repeating a put is safe, since a failed one leaves nothing behind.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Final

from common.errors import StoreFullError
from common.logs import log_event
from common.store.base import Store
from common.store.retry import RetriesExhausted, RetryPolicy, call_with_retries

logger = logging.getLogger("hefl.store")

#: Waits of about 1, 2, 4, 8, 16 s, then 30 s: 24 tries within 571 s (half that at the least).
SPACE_POLICY: Final = RetryPolicy(attempts=24, base_delay=1.0, max_delay=30.0)


class SpaceWaitingStore:
    """``inner``, with every ``put`` that finds no room tried again under ``policy``.

    ``sleep`` and ``rand`` are ``time.sleep`` and ``random.random`` in production; tests pass a
    recorder and a constant.
    """

    def __init__(
        self,
        inner: Store,
        *,
        policy: RetryPolicy = SPACE_POLICY,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.inner = inner
        self.policy = policy
        self._sleep = sleep
        self._rand = rand

    def __repr__(self) -> str:
        policy = "" if self.policy == SPACE_POLICY else f", policy={self.policy!r}"
        return f"SpaceWaitingStore({self.inner!r}{policy})"

    def put(self, key: str, data: bytes) -> None:
        waits: list[float] = []

        def on_retry(attempt: int, delay: float, error: BaseException) -> None:
            waits.append(delay)
            log_event(
                logger,
                "store_full",
                level=logging.WARNING,
                key=key,
                store=self.inner,
                bytes=len(data),
                attempt=attempt,
                retry_in=round(delay, 1),
                error=error,
            )

        try:
            call_with_retries(
                lambda: self.inner.put(key, data),
                policy=self.policy,
                transient=_no_room,
                sleep=self._sleep,
                rand=self._rand,
                on_retry=on_retry,
            )
        except RetriesExhausted as exc:
            raise StoreFullError(
                f"{exc.last}; still full after waiting {sum(waits):.0f} s ({exc.attempts} tries)"
            ) from exc.last
        if waits:
            log_event(logger, "store_write_resumed", key=key, store=self.inner, waited=sum(waits))

    def get(self, key: str, *, max_bytes: int | None = None, sha256: str | None = None) -> bytes:
        return self.inner.get(key, max_bytes=max_bytes, sha256=sha256)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> list[str]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


def _no_room(error: BaseException) -> tuple[bool, float | None]:
    """Only a full disk or quota is worth waiting for; no store asks for a delay of its own."""
    return isinstance(error, StoreFullError), None
