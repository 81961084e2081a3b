"""From broker URLs (and an optional CA file) to pika connection parameters, one ``Node`` each.

The URLs come from the operator (flag or ``HEFL_BROKER_URL``: one URL, or one per node of a
cluster) and carry the password, so next to the parameters each node has its endpoint without
it: the only form of a URL that logs and error messages show. ``amqps://`` verifies each node
against the given CA file only (the deployment's private CA, ``--broker-ca``), else against the
system CAs; a certificate that does not verify is final (``untrusted_certificate``), never
retried.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

import pika

from common.errors import ConfigError, TransportError
from common.transport.settings import broker_urls

DEFAULT_HEARTBEAT: Final = 30
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
BLOCKED_SECONDS: Final = 60.0  # a broker blocking publishers (resource alarm) this long is "down"


@dataclass(frozen=True)
class Node:
    """One broker node a client may connect to: its pika parameters and its URL without password."""

    params: pika.URLParameters
    endpoint: str


def broker_nodes(
    urls: str | Sequence[str],
    *,
    heartbeat: int,
    connect_timeout: float,
    ca_file: str | None,
    name: str,
) -> tuple[Node, ...]:
    """The nodes of ``urls`` (one URL, or comma-separated URLs of one cluster), in that order."""
    entries = broker_urls(urls)
    nodes = []
    for index, url in enumerate(entries, 1):
        try:
            params, endpoint = connection_parameters(
                url,
                heartbeat=heartbeat,
                connect_timeout=connect_timeout,
                ca_file=ca_file,
                name=name,
            )
        except ConfigError as exc:
            if len(entries) == 1:
                raise
            raise ConfigError(f"broker URL {index} of {len(entries)}: {exc}") from exc
        nodes.append(Node(params, endpoint))
    return tuple(nodes)


def connection_parameters(
    url: str, *, heartbeat: int, connect_timeout: float, ca_file: str | None, name: str
) -> tuple[pika.URLParameters, str]:
    """pika connection parameters and the URL without its password (for logs and errors).

    ``name`` is shown by the broker's management UI for the connection.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in ("amqp", "amqps"):
        raise ConfigError(f"broker URL must start with amqp:// or amqps://, not {scheme!r}")
    try:
        params = pika.URLParameters(url)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid broker URL: {exc}") from exc
    if scheme == "amqps":
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the broker CA file {ca_file}: {exc}") from exc
        params.ssl_options = pika.SSLOptions(context, server_hostname=params.host)
    elif ca_file is not None:
        raise ConfigError("a broker CA file needs an amqps:// URL")
    params.heartbeat = heartbeat
    params.socket_timeout = connect_timeout
    params.stack_timeout = connect_timeout
    params.blocked_connection_timeout = BLOCKED_SECONDS
    params.connection_attempts = 1  # retries are the I/O thread's, with backoff and logs
    params.client_properties = {"connection_name": name}
    return params, _endpoint(scheme, params)


def _endpoint(scheme: str, params: pika.URLParameters) -> str:
    user = params.credentials.username
    host = f"[{params.host}]" if ":" in params.host else params.host
    return f"{scheme}://{user}@{host}:{params.port}/{quote(params.virtual_host, safe='')}"


def untrusted_certificate(endpoint: str, exc: ssl.SSLCertVerificationError) -> TransportError:
    """The error for a broker whose certificate does not verify: no retry can fix it."""
    reason = exc.verify_message or str(exc)
    return TransportError(
        f"RabbitMQ at {endpoint} presented a TLS certificate this client does not trust "
        f"({reason}): pass the deployment's broker CA with --broker-ca FILE ($HEFL_BROKER_CA), "
        "and reach the broker by a name its certificate lists"
    )
