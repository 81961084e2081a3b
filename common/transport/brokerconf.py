"""The broker's side of isolation, rendered from the participants: users, permissions, limits.

Pure functions (no pika, no I/O) from a ``BrokerPlan`` (prefix, vhost, hospitals) to

- RabbitMQ definitions (``definitions``): one user per participant with a salted password hash,
  permissions confining each to its own resources, queue length policies, and the topology
  itself, so hospitals can start before the coordinator;
- a ``rabbitmq.conf`` snippet (``rabbitmq_conf``): the TLS listener with the deployment's private
  CA, the message size cap, and the definitions file to load at boot.

RabbitMQ checks three permissions, each a regular expression over resource names: configure
(declare, delete), write (publish to an exchange; bind a queue, which also needs read on the
exchange) and read (consume, get, purge a queue; be the source of a binding). Every expression
here is anchored and names exact resources (``names``), so a hospital may

- declare, bind and consume its own announce queue, and publish to the submit exchange;
- not consume, purge, delete or bind any other queue, publish to the announce exchange or the
  default exchange (``amq.default``), nor read the submit exchange.

The coordinator declares the shared topology, consumes the submit queue and publishes to the
announce exchange; it cannot read a hospital's queue. The broker itself checks a message's
``user_id`` against its connection's user (no user here has the ``impersonator`` tag), so the
sender a subscriber sees was authenticated by the broker.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from common.errors import ConfigError
from common.transport.names import COORDINATOR, Names, check_name
from common.transport.settings import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_PREFIX,
    DEFAULT_QUEUE_TYPE,
    QueueType,
    queue_arguments,
)

DEFAULT_VHOST: Final = "hefl"
TLS_PORT: Final = 5671
SUBMIT_MAX_LENGTH: Final = 10_000
SUBMIT_MAX_BYTES: Final = 64 * 1024 * 1024
ANNOUNCE_MAX_LENGTH: Final = 1_000
ANNOUNCE_MAX_BYTES: Final = 8 * 1024 * 1024
HASHING_ALGORITHM: Final = "rabbit_password_hashing_sha256"


@dataclass(frozen=True)
class Permission:
    """A user's regular expressions on one virtual host."""

    configure: str
    write: str
    read: str


@dataclass(frozen=True, kw_only=True)
class TlsFiles:
    """Where the broker reads its TLS material (paths inside the broker's file system)."""

    cacertfile: str
    certfile: str
    keyfile: str


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4) if salt is None else salt
    if len(salt) != 4:
        raise ConfigError("a RabbitMQ password salt is 4 bytes")
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def _exact(*names: str) -> str:
    """An anchored expression matching exactly these names (already checked against NAME)."""
    escaped = [name.replace(".", r"\.") for name in names]
    return f"^{escaped[0]}$" if len(escaped) == 1 else f"^({'|'.join(escaped)})$"


@dataclass(frozen=True, kw_only=True)
class BrokerPlan:
    """The participants of one deployment and the limits their broker enforces.

    ``user_prefix`` is put before every user name: tests share one broker, whose users are
    global. A deployment leaves it empty, so each user is named after its participant and the
    sender a subscriber sees is the participant's identity.
    """

    hospitals: tuple[str, ...]
    prefix: str = DEFAULT_PREFIX
    vhost: str = DEFAULT_VHOST
    user_prefix: str = ""
    submit_max_length: int = SUBMIT_MAX_LENGTH
    submit_max_bytes: int = SUBMIT_MAX_BYTES
    announce_max_length: int = ANNOUNCE_MAX_LENGTH
    announce_max_bytes: int = ANNOUNCE_MAX_BYTES
    queue_type: QueueType = DEFAULT_QUEUE_TYPE  # as the transport declares them

    def __post_init__(self) -> None:
        if not self.hospitals:
            raise ConfigError("a broker plan needs at least one hospital")
        if len(set(self.participants)) != len(self.participants):
            raise ConfigError(f"participant names must be unique: {', '.join(self.participants)}")
        Names(self.prefix)  # checks the prefix
        for name in self.participants:
            check_name("participant", name)
        if self.user_prefix:
            check_name("user prefix", self.user_prefix)
        check_name("vhost", self.vhost)
        limits = (self.submit_max_length, self.submit_max_bytes, self.announce_max_length)
        if min(*limits, self.announce_max_bytes) < 0:
            raise ConfigError("queue length limits must not be negative")
        queue_arguments(self.queue_type)  # checks the type

    @property
    def names(self) -> Names:
        return Names(self.prefix)

    @property
    def participants(self) -> tuple[str, ...]:
        return (COORDINATOR, *self.hospitals)

    def user(self, identity: str) -> str:
        """The broker user of a participant."""
        if identity not in self.participants:
            raise ConfigError(f"{identity!r} is not a participant of this broker plan")
        return f"{self.user_prefix}{identity}"

    def senders(self, identities: Iterable[str]) -> dict[str, str]:
        """Broker user -> identity, for ``RabbitMQTransport(senders=...)``."""
        return {self.user(identity): identity for identity in identities}

    def permission(self, identity: str) -> Permission:
        """The least a participant needs; see the module docstring for what each allows."""
        names = self.names
        if identity == COORDINATOR:
            shared = (names.announce_exchange, names.submit_exchange, names.submit_queue)
            return Permission(
                configure=_exact(*shared),
                write=_exact(names.announce_exchange, names.submit_queue),  # publish; bind
                read=_exact(names.submit_exchange, names.submit_queue),  # bind; consume
            )
        self.user(identity)  # a participant of this plan
        own = names.announce_queue(identity)
        return Permission(
            configure=_exact(own),
            write=_exact(names.submit_exchange, own),  # publish; bind
            read=_exact(names.announce_exchange, own),  # bind; consume
        )

    def policies(self) -> list[dict[str, Any]]:
        """Queue length limits. A full submit queue refuses new messages (the publisher is
        told); a full announce queue, whose hospital is away, drops its oldest instead: refusing
        would fail the coordinator's announcement to every hospital.

        A quorum queue checks its length before it takes a message, so it takes one message
        past ``max-length`` before it refuses the next (measured on RabbitMQ 3.10: a limit of 2
        takes 3)."""
        names = self.names
        submit = {
            "max-length": self.submit_max_length,
            "max-length-bytes": self.submit_max_bytes,
            "overflow": "reject-publish",
        }
        announce = {
            "max-length": self.announce_max_length,
            "max-length-bytes": self.announce_max_bytes,
            "overflow": "drop-head",
        }
        prefix = names.announce_exchange.replace(".", r"\.")
        return [
            self._policy(f"{self.prefix}-submit", _exact(names.submit_queue), submit),
            self._policy(f"{self.prefix}-announce", f"^{prefix}\\.", announce),
        ]

    def _policy(self, name: str, pattern: str, definition: dict[str, Any]) -> dict[str, Any]:
        return {
            "vhost": self.vhost,
            "name": name,
            "pattern": pattern,
            "apply-to": "queues",
            "priority": 10,
            "definition": definition,
        }

    def definitions(
        self,
        passwords: Mapping[str, str],
        *,
        admin_password: str | None = None,
        salt: Callable[[], bytes] = lambda: os.urandom(4),
    ) -> dict[str, Any]:
        """RabbitMQ definitions (``rabbitmqctl import_definitions``, or ``load_definitions``).

        ``passwords`` maps every participant to its password. ``admin_password`` adds an
        ``admin`` user with the administrator tag and every permission, for the operator.
        """
        missing = [name for name in self.participants if not passwords.get(name)]
        if missing:
            raise ConfigError(f"no broker password for {', '.join(missing)}")
        users = [self._user(self.user(n), passwords[n], [], salt) for n in self.participants]
        permissions = [self._grant(self.user(n), self.permission(n)) for n in self.participants]
        if admin_password is not None:
            if not admin_password:
                raise ConfigError("the admin password is empty")
            admin = f"{self.user_prefix}admin"
            users.append(self._user(admin, admin_password, ["administrator"], salt))
            permissions.append(self._grant(admin, Permission(".*", ".*", ".*")))
        return {
            "vhosts": [{"name": self.vhost}],
            "users": users,
            "permissions": permissions,
            "policies": self.policies(),
            **self._topology(),
        }

    def _user(
        self, name: str, password: str, tags: list[str], salt: Callable[[], bytes]
    ) -> dict[str, Any]:
        return {
            "name": name,
            "password_hash": password_hash(password, salt()),
            "hashing_algorithm": HASHING_ALGORITHM,
            "tags": tags,
        }

    def _grant(self, user: str, permission: Permission) -> dict[str, str]:
        return {
            "user": user,
            "vhost": self.vhost,
            "configure": permission.configure,
            "write": permission.write,
            "read": permission.read,
        }

    def _topology(self) -> dict[str, list[dict[str, Any]]]:
        """The exchanges, queues and bindings the transport declares, declared the same way."""
        names, vhost = self.names, self.vhost
        fixed = {"vhost": vhost, "durable": True, "auto_delete": False, "arguments": {}}
        exchanges = [
            {"name": names.announce_exchange, "type": "fanout", "internal": False, **fixed},
            {"name": names.submit_exchange, "type": "direct", "internal": False, **fixed},
        ]
        routes = [(names.submit_exchange, names.submit_queue)]
        routes += [(names.announce_exchange, names.announce_queue(h)) for h in self.hospitals]
        declared = {**fixed, "arguments": queue_arguments(self.queue_type)}
        return {
            "exchanges": exchanges,
            "queues": [{"name": name, **declared} for _, name in routes],
            "bindings": [
                {
                    "vhost": vhost,
                    "source": exchange,
                    "destination": queue,
                    "destination_type": "queue",
                    "routing_key": queue,
                    "arguments": {},
                }
                for exchange, queue in routes
            ],
        }


def rabbitmq_conf(
    *,
    tls: TlsFiles | None,
    definitions_file: str | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    plain_tcp: bool = False,
    tls_port: int = TLS_PORT,
) -> str:
    """A ``rabbitmq.conf`` (or ``conf.d``) snippet: limits, the TLS listener, the definitions.

    The TLS listener asks clients for a certificate but does not require one: clients log in
    with a password, and verify the broker against the deployment's CA. ``plain_tcp`` keeps the
    unencrypted listener on 5672 (tests, or a broker reached only on a private network).
    """
    if tls is None and not plain_tcp:
        raise ConfigError("the broker needs a listener: give the TLS files or keep plain TCP")
    if not 0 < max_message_bytes <= 512 * 1024 * 1024:
        raise ConfigError(f"max_message_size must be in (0, 512 MiB], got {max_message_bytes}")
    lines = ["# RabbitMQ for hefl (common.transport.brokerconf)"]
    lines.append(f"max_message_size = {max_message_bytes}")
    if not plain_tcp:
        lines.append("listeners.tcp = none")
    if tls is not None:
        lines += [
            f"listeners.ssl.default = {tls_port}",
            f"ssl_options.cacertfile = {_path(tls.cacertfile)}",
            f"ssl_options.certfile = {_path(tls.certfile)}",
            f"ssl_options.keyfile = {_path(tls.keyfile)}",
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = false",
            "ssl_options.versions.1 = tlsv1.3",
            "ssl_options.versions.2 = tlsv1.2",
        ]
    if definitions_file is not None:
        lines.append(f"load_definitions = {_path(definitions_file)}")
    return "\n".join(lines) + "\n"


def _path(path: str) -> str:
    if not path.startswith("/") or any(c.isspace() for c in path):
        raise ConfigError(f"a broker config path must be absolute, without spaces: {path!r}")
    return path
