"""Broker settings with no network I/O: the URL, its password file, the reconnect policy.

Kept apart from the ``rabbitmq`` package (the only one that imports pika) so configuration can
be read and validated without loading the client library.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import quote

from common.errors import ConfigError

BROKER_URL_ENV: Final = "HEFL_BROKER_URL"
DEFAULT_BROKER_URL: Final = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_PREFIX: Final = "hefl"
#: Largest message the transport sends or hands to a handler; also the broker's
#: ``max_message_size`` (``brokerconf``): two protocol messages' worth (a signed envelope).
DEFAULT_MAX_MESSAGE_BYTES: Final = 128 * 1024


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


def with_password(url: str, password: str, *, user: str | None = None) -> str:
    """``url`` with ``password``, for a password read from a file; ``user`` names the user when
    the URL does not.

    A URL that carries a password already is refused rather than silently overridden: the
    password belongs in one place, and a file keeps it out of process listings and environments.
    """
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, _, host = authority.rpartition("@")
    name, colon, _ = userinfo.partition(":")
    if colon:
        raise ConfigError(
            "the broker URL already carries a password and a password file gives one too: "
            "remove the password from the URL"
        )
    name = name or quote(user or "", safe="")
    if not sep or not host or not name:
        raise ConfigError(
            "a broker password file needs a URL that names the user: amqps://USER@HOST/VHOST"
        )
    if not password or "\n" in password or "\r" in password:
        raise ConfigError("the broker password file must hold one non-empty line")
    return f"{scheme}://{name}:{quote(password, safe='')}@{host}{slash}{path}"


def read_password_file(path: Path) -> str:
    """The password in ``path``: its first line, without the line end."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the broker password file {path}: {exc}") from exc
    lines = text.splitlines()
    if not lines or not lines[0] or any(line.strip() for line in lines[1:]):
        raise ConfigError(f"the broker password file {path} must hold one non-empty line")
    return lines[0]
