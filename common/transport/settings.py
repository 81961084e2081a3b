"""Broker settings with no I/O: the URL from the environment and the reconnect policy.

Kept apart from the ``rabbitmq`` package (the only one that imports pika) so configuration can
be read and validated without loading the client library.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from common.errors import ConfigError

BROKER_URL_ENV: Final = "HEFL_BROKER_URL"
DEFAULT_BROKER_URL: Final = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_PREFIX: Final = "hefl"


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Reconnect policy: capped exponential delays with jitter, and a total time to give up."""

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5  # a delay is shortened by up to this fraction, at random
    give_up_after: float = 600.0

    def __post_init__(self) -> None:
        if not (
            0 < self.initial <= self.maximum and self.multiplier >= 1 and self.give_up_after > 0
        ):
            raise ConfigError(f"invalid reconnect backoff {self!r}")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"backoff jitter must be in [0, 1], got {self.jitter}")

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based); ``rand`` is in [0, 1)."""
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt - 1, 64))
        return base * (1.0 - self.jitter * rand)


DEFAULT_BACKOFF: Final = Backoff()


def broker_url(environ: Mapping[str, str] = os.environ) -> str:
    """The broker URL from ``HEFL_BROKER_URL``, else the local default."""
    return environ.get(BROKER_URL_ENV) or DEFAULT_BROKER_URL
