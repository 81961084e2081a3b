"""Bounded retries with exponential backoff and jitter, for remote stores and a full disk.

The policy is plain data and the delay a pure function, so tests check the schedule without
waiting; the caller injects ``sleep`` and ``rand`` (``time.sleep`` and ``random.random`` in
production, a recorder and a constant in tests). The retry loop itself is tenacity's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NoReturn, TypeVar

import tenacity

T = TypeVar("T")

DEFAULT_ATTEMPTS: Final = 6
DEFAULT_BASE_DELAY: Final = 1.0
DEFAULT_MAX_DELAY: Final = 32.0


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """``attempts`` tries in all; before try n+1 wait about ``base_delay * 2**n`` seconds."""

    attempts: int = DEFAULT_ATTEMPTS
    base_delay: float = DEFAULT_BASE_DELAY
    max_delay: float = DEFAULT_MAX_DELAY

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError(f"invalid retry policy {self!r}")

    def longest_wait(self) -> float:
        """The most seconds all the retries sleep together (each jitter at its top, no
        ``Retry-After``): the bound on how long a caller waits before the error comes."""
        return sum(backoff_delay(self, retry, 1.0) for retry in range(self.attempts - 1))


def backoff_delay(
    policy: RetryPolicy, retry: int, rand: float, retry_after: float | None = None
) -> float:
    """Seconds to wait before retry number ``retry`` (0-based), with "equal jitter".

    Half of the exponential step is fixed and half is random (``rand`` in [0, 1)), so clients that
    failed together spread out but none retries at once. A server's ``Retry-After`` is honoured
    when it asks for longer, up to ``max_delay``.
    """
    step = min(policy.max_delay, policy.base_delay * 2.0**retry)
    delay = step / 2.0 + step / 2.0 * rand
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.max_delay))
    return delay


class RetriesExhausted(Exception):
    """Raised by :func:`call_with_retries` with the last transient error as ``__cause__``."""

    def __init__(self, attempts: int, last: BaseException) -> None:
        super().__init__(f"gave up after {attempts} attempts: {last}")
        self.attempts = attempts
        self.last = last


def call_with_retries(
    action: Callable[[], T],
    *,
    policy: RetryPolicy,
    transient: Callable[[BaseException], tuple[bool, float | None]],
    sleep: Callable[[float], None],
    rand: Callable[[], float],
    on_retry: Callable[[int, float, BaseException], None] | None = None,
) -> T:
    """Run ``action``; retry it while ``transient(error)`` says ``(True, retry_after)``.

    A permanent error propagates unchanged; after ``policy.attempts`` transient failures
    ``RetriesExhausted`` is raised. ``action`` must be safe to repeat (resumable transfers keep
    their progress between calls). ``transient`` only classifies, so it may be asked twice.
    """

    def retryable(error: BaseException) -> bool:
        return isinstance(error, Exception) and transient(error)[0]

    def wait(state: tenacity.RetryCallState) -> float:
        retry_after = transient(_failure(state))[1]
        return backoff_delay(policy, state.attempt_number - 1, rand(), retry_after)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.next_action is not None:
            on_retry(state.attempt_number, state.next_action.sleep, _failure(state))

    def give_up(state: tenacity.RetryCallState) -> NoReturn:
        last = _failure(state)
        raise RetriesExhausted(policy.attempts, last) from last

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(retryable),  # anything else propagates unchanged
        stop=tenacity.stop_after_attempt(policy.attempts),
        wait=wait,
        sleep=sleep,
        before_sleep=before_sleep,
        retry_error_callback=give_up,
    )
    return retrying(action)


def _failure(state: tenacity.RetryCallState) -> BaseException:
    """The error of the attempt tenacity is deciding about (it only asks after a failure)."""
    error = state.outcome.exception() if state.outcome is not None else None
    if error is None:
        raise RuntimeError(f"retry decision without a failed attempt: {state!r}")
    return error
