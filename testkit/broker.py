"""A live local RabbitMQ for the tests and benchmarks that need one, reached on 127.0.0.1 only.

``ensure_running()`` starts an installed broker that is not running and waits until it accepts
connections. When no broker can be reached it raises ``BrokerError`` with the reason; a test then
fails (``tests/conftest.py``) and never skips: ``make test`` installs RabbitMQ first, so a missing
broker is a broken environment, not an optional feature. The other helpers drive the broker with
``rabbitmqctl`` (root or the ``rabbitmq`` user, as in CI): stop and start the app or the whole
node, give each test its own throw-away virtual host, and read the state of queues and
connections.
"""

from __future__ import annotations

import atexit
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

HOST: Final = "127.0.0.1"
PORT: Final = 5672
USER: Final = "guest"
PASSWORD: Final = "guest"
STARTUP_TIMEOUT: Final = 120.0
_CTL_TIMEOUT: Final = 60.0
_cleanups: list[subprocess.Popen[bytes]] = []


class BrokerError(RuntimeError):
    """The local broker cannot be reached, started or driven; the message says why."""


@dataclass(frozen=True)
class Vhost:
    """A virtual host made for one test; deleting it deletes every queue and exchange in it."""

    name: str

    @property
    def url(self) -> str:
        return f"amqp://{USER}:{PASSWORD}@{HOST}:{PORT}/{self.name}"


def port_open(timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections on the local AMQP port."""
    try:
        with socket.create_connection((HOST, PORT), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_running() -> None:
    """Start the local broker if it is installed and stopped; fail the test if it stays away."""
    if port_open():
        return
    missing = [tool for tool in ("rabbitmq-server", "rabbitmqctl") if shutil.which(tool) is None]
    if missing:
        raise BrokerError(
            f"RabbitMQ is not reachable on {HOST}:{PORT} and {', '.join(missing)} is not "
            "installed: apt-get install -y rabbitmq-server (CI does this in .ci/run)"
        )
    if _ctl_ok("ping", tool="rabbitmq-diagnostics"):  # the node runs, its app was stopped
        ctl("start_app")
    else:
        started = subprocess.run(
            ["rabbitmq-server", "-detached"], capture_output=True, text=True, timeout=_CTL_TIMEOUT
        )
        if started.returncode != 0:
            raise BrokerError(f"rabbitmq-server -detached failed: {_output(started)}")
    wait_until_ready()


def wait_until_ready(timeout: float = STARTUP_TIMEOUT) -> None:
    """Wait until the broker has booted and listens on the AMQP port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ctl_ok("await_startup", "--timeout", "10") and port_open():
            return
        time.sleep(1.0)
    raise BrokerError(
        f"RabbitMQ did not accept connections on {HOST}:{PORT} within {timeout:.0f} s; "
        "see /var/log/rabbitmq/ for the reason"
    )


def stop_app() -> None:
    """Stop the RabbitMQ application (the Erlang node stays up); connections are closed."""
    wait_for_cleanup()
    ctl("stop_app")


def start_app() -> None:
    ctl("start_app")
    wait_until_ready()


def restart() -> None:
    """Stop the whole broker node and start it again."""
    wait_for_cleanup()
    ctl("stop")
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while port_open() and time.monotonic() < deadline:
        time.sleep(0.2)
    ensure_running()


@contextmanager
def temporary_vhost(prefix: str = "hefl-test") -> Iterator[Vhost]:
    """A fresh virtual host the guest user may use; deleted (in the background) afterwards."""
    vhost = Vhost(f"{prefix}-{uuid.uuid4().hex[:12]}")
    ctl("add_vhost", vhost.name)
    try:
        ctl("set_permissions", "-p", vhost.name, USER, ".*", ".*", ".*")
        yield vhost
    finally:
        command = ["rabbitmqctl", "-q", "delete_vhost", vhost.name]
        _cleanups.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))


def wait_for_cleanup() -> None:
    """Wait for the background deletions of earlier virtual hosts."""
    while _cleanups:
        _cleanups.pop().wait(timeout=_CTL_TIMEOUT)


atexit.register(wait_for_cleanup)


def queues(vhost: Vhost) -> dict[str, dict[str, Any]]:
    """Queues of a virtual host by name: durable, messages_ready, messages_unacknowledged, ..."""
    columns = ["name", "durable", "messages_ready", "messages_unacknowledged", "consumers"]
    rows = _json(ctl("list_queues", "-p", vhost.name, *columns, "--formatter", "json"))
    return {row["name"]: row for row in rows}


def exchanges(vhost: Vhost) -> dict[str, dict[str, Any]]:
    """Exchanges of a virtual host by name: type, durable."""
    columns = ["name", "type", "durable"]
    rows = _json(ctl("list_exchanges", "-p", vhost.name, *columns, "--formatter", "json"))
    return {row["name"]: row for row in rows}


def connections(vhost: Vhost) -> list[dict[str, Any]]:
    """Client connections to a virtual host: name (client and server ports), timeout (heartbeat)."""
    columns = ["vhost", "name", "peer_host", "timeout", "client_properties"]
    rows = _json(ctl("list_connections", *columns, "--formatter", "json"))
    return [row for row in rows if row["vhost"] == vhost.name]


def ctl(*args: str) -> str:
    """Run ``rabbitmqctl`` and return its output; a failure fails the test with the reason."""
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=_CTL_TIMEOUT
    )
    if done.returncode != 0:
        raise BrokerError(f"rabbitmqctl {' '.join(args)} failed: {_output(done)}")
    return done.stdout


def _ctl_ok(*args: str, tool: str = "rabbitmqctl") -> bool:
    try:
        done = subprocess.run([tool, "-q", *args], capture_output=True, timeout=_CTL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _json(text: str) -> list[dict[str, Any]]:
    return list(json.loads(text)) if text.strip() else []


def _output(done: subprocess.CompletedProcess[str]) -> str:
    return (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}")[-2000:]
