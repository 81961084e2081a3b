"""Broker settings with no network I/O: the URLs, their password file, the reconnect policy, the
queue type.

Kept apart from the ``rabbitmq`` package (the only one that imports pika) so configuration can
be read and validated without loading the client library.

A broker setting names one URL or, for a RabbitMQ cluster, a comma-separated list of them (one
per node, same user and virtual host): a client connects to one node and moves to the next when
it loses it. A comma inside a password is written ``%2C``, as any URL would.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import quote, urlsplit

from common.errors import ConfigError

BROKER_URL_ENV: Final = "HEFL_BROKER_URL"
DEFAULT_BROKER_URL: Final = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_PREFIX: Final = "hefl"
#: Largest message the transport sends or hands to a handler; also the broker's
#: ``max_message_size`` (``brokerconf``): two protocol messages' worth (a signed envelope).
DEFAULT_MAX_MESSAGE_BYTES: Final = 128 * 1024
URL_SEPARATOR: Final = ","

QueueType = Literal["quorum", "classic"]
#: Quorum queues (Raft-replicated on every node of a cluster, and on the one node of a single
#: broker): the announce and submit queues survive the loss of a node with nothing confirmed lost.
QUORUM: Final = "quorum"
#: The queues of hefl before quorum queues (no ``x-queue-type`` argument): single-node only.
CLASSIC: Final = "classic"
DEFAULT_QUEUE_TYPE: Final[QueueType] = QUORUM


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
    """The broker URL (or comma-separated URLs) from ``HEFL_BROKER_URL``, else the local default."""
    return environ.get(BROKER_URL_ENV) or DEFAULT_BROKER_URL


def queue_arguments(queue_type: str) -> dict[str, str]:
    """The ``queue_declare`` arguments of a queue of ``queue_type``.

    A classic queue is declared without arguments, as hefl always declared it, so a broker that
    holds one from before keeps accepting the declaration."""
    if queue_type == QUORUM:
        return {"x-queue-type": QUORUM}
    if queue_type == CLASSIC:
        return {}
    raise ConfigError(f"queue type must be {QUORUM!r} or {CLASSIC!r}, not {queue_type!r}")


def broker_urls(urls: str | Sequence[str]) -> tuple[str, ...]:
    """The broker URLs of ``urls``: one URL, URLs separated by commas, or a sequence of URLs.

    Each must be ``amqp://`` or ``amqps://`` with a host; a list names the nodes of one cluster,
    so every entry has the same user and virtual host. A bad entry is named by its position (and
    never shown with a password).
    """
    entries = _split(urls)
    for index, entry in enumerate(entries, 1):
        where = _entry(index, entries)
        scheme = entry.partition("://")[0].lower() if "://" in entry else ""
        if scheme not in ("amqp", "amqps"):
            raise ConfigError(
                f"{where} must start with amqp:// or amqps://, not {scheme!r}{_comma_hint(entries)}"
            )
        try:
            parts = urlsplit(entry)
            parts.port  # noqa: B018  (parsed on access: a bad port raises here)
        except ValueError:  # its message may quote part of a password split by a comma
            raise ConfigError(
                f"{where} is not a URL: its host or port cannot be read{_comma_hint(entries)}"
            ) from None
        if not parts.hostname:
            raise ConfigError(f"{where} names no host")
    if len(entries) > 1:
        first = _login(entries[0])
        for index, entry in enumerate(entries[1:], 2):
            if _login(entry) != first:
                raise ConfigError(
                    f"{_entry(index, entries)} names another user or virtual host than the first: "
                    "the URLs of a list are the nodes of one broker cluster"
                )
            if entry in entries[: index - 1]:
                raise ConfigError(f"{_entry(index, entries)} repeats an earlier one")
    return entries


def _split(urls: str | Sequence[str]) -> tuple[str, ...]:
    entries = tuple(urls.split(URL_SEPARATOR)) if isinstance(urls, str) else tuple(urls)
    if not entries:
        raise ConfigError("no broker URL given")
    stripped = tuple(entry.strip() for entry in entries)
    for index, entry in enumerate(stripped, 1):
        if not entry:
            raise ConfigError(f"{_entry(index, stripped)} is empty")
    return stripped


def _entry(index: int, entries: Sequence[str]) -> str:
    """How an error names a URL: its position in a list, and the URL without any password."""
    if len(entries) == 1:
        return f"the broker URL{_shown(entries[0])}"
    return f"broker URL {index} of {len(entries)}{_shown(entries[index - 1])}"


def _comma_hint(entries: Sequence[str]) -> str:
    return "; URLs are separated by commas, a comma in a password is written %2C" * (
        len(entries) > 1
    )


def _shown(entry: str) -> str:
    """`` (URL)`` without its user information; nothing for what could be part of a password (a
    raw comma splits one)."""
    scheme, sep, _ = entry.partition("://")
    if not sep:
        return ""
    if "@" in entry:
        return f" ({scheme}://…@{entry.rpartition('@')[2]})"
    try:
        urlsplit(entry).port  # noqa: B018  ("amqp://user:pa" of "amqp://user:pa,ss@host")
    except ValueError:
        return ""
    return f" ({entry})"


def _login(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.username or "", parts.path


def with_password(url: str, password: str, *, user: str | None = None) -> str:
    """``url`` with ``password``, for a password read from a file; ``user`` names the user when
    the URL does not. A comma-separated list gets it in each of its URLs.

    A URL that carries a password already is refused rather than silently overridden: the
    password belongs in one place, and a file keeps it out of process listings and environments.
    """
    if URL_SEPARATOR in url:
        entries = _split(url)
        return URL_SEPARATOR.join(
            _with_password(entry, password, user=user, where=_entry(index, entries))
            for index, entry in enumerate(entries, 1)
        )
    return _with_password(url, password, user=user, where="the broker URL")


def _with_password(url: str, password: str, *, user: str | None, where: str) -> str:
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, _, host = authority.rpartition("@")
    name, colon, _ = userinfo.partition(":")
    if colon:
        raise ConfigError(
            f"{where} already carries a password and a password file gives one too: "
            "remove the password from the URL"
        )
    name = name or quote(user or "", safe="")
    if not sep or not host or not name:
        raise ConfigError(
            f"a broker password file needs a URL that names the user: amqps://USER@HOST/VHOST "
            f"({where})"
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
