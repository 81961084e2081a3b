"""From a broker URL (and an optional CA file) to pika connection parameters.

The URL comes from the operator (flag or ``HEFL_BROKER_URL``) and carries the password, so next
to the parameters this returns the endpoint without it: the only form of the URL that logs and
error messages show. ``amqps://`` verifies the broker against the given CA file only (the
deployment's private CA, ``--broker-ca``), else against the system CAs; a certificate that does
not verify is final (``untrusted_certificate``), never retried.
"""

from __future__ import annotations

import ssl
from typing import Final
from urllib.parse import quote

import pika

from common.errors import ConfigError, TransportError

DEFAULT_HEARTBEAT: Final = 30
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
BLOCKED_SECONDS: Final = 60.0  # a broker blocking publishers (resource alarm) this long is "down"


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
