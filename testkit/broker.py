"""A live local RabbitMQ for the tests and benchmarks that need one, reached on 127.0.0.1 only.

``ensure_running()`` starts an installed broker that is not running and waits until it accepts
connections. When no broker can be reached it raises ``BrokerError`` with the reason; a test then
fails (``tests/conftest.py``) and never skips: ``make test`` installs RabbitMQ first, so a missing
broker is a broken environment, not an optional feature. The other helpers drive the broker with
``rabbitmqctl`` (root or the ``rabbitmq`` user, as in CI): stop and start the app or the whole
node, give each test its own throw-away virtual host, and read the state of queues and
connections.

The local node also gets the project's broker configuration (``configure_node``, run by
``tools/start_broker.sh``; ``ensure_tls`` does it on first use otherwise): a TLS listener on 5671
with a throw-away CA made at set-up time, and the message size cap, rendered by
``common.transport.brokerconf``. ``temporary_site`` gives a test one broker user per participant,
confined as a deployment's are, on its own virtual host.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import quote

from common.transport.brokerconf import BrokerPlan, TlsFiles, rabbitmq_conf
from common.transport.brokerpki import make_ca, make_server_cert
from common.transport.settings import DEFAULT_QUEUE_TYPE, QueueType

HOST: Final = "127.0.0.1"
PORT: Final = 5672
TLS_PORT: Final = 5671
#: The test node's TLS material, made by ``configure_node``; clients trust ``TLS_CA``.
TLS_DIR: Final = Path("/etc/rabbitmq/hefl-test-tls")
TLS_CA: Final = TLS_DIR / "ca.pem"
CONF_FILE: Final = Path("/etc/rabbitmq/conf.d/50-hefl-test.conf")
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


def port_open(timeout: float = 1.0, port: int = PORT) -> bool:
    """True when something accepts TCP connections on the local AMQP port (or ``port``)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
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
        _in_background("delete_vhost", vhost.name)


def wait_for_cleanup() -> None:
    """Wait for the background deletions of earlier virtual hosts."""
    while _cleanups:
        _cleanups.pop().wait(timeout=_CTL_TIMEOUT)


atexit.register(wait_for_cleanup)


def queues(vhost: Vhost) -> dict[str, dict[str, Any]]:
    """Queues of a virtual host by name: durable, type, messages_ready, messages_unacknowledged,
    consumers; the message counts of quorum queues as their leader has them now."""
    return queue_rows(vhost.name, ["durable", "consumers"])


def queue_rows(
    vhost: str, columns: list[str], run: Callable[..., str] | None = None
) -> dict[str, dict[str, Any]]:
    """``list_queues`` of ``vhost`` with ``columns``, name, type and exact message counts.

    ``list_queues`` reports a quorum queue's counts as of its last metrics tick (every 5 s), so
    a message confirmed a moment ago may not show yet; these come from the queue's leader.
    """
    run = run or ctl
    wanted = ["name", "type", *columns, "messages_ready", "messages_unacknowledged"]
    rows = {
        row["name"]: row
        for row in _json(run("list_queues", "-p", vhost, *wanted, "--formatter", "json"))
    }
    quorum = [name for name, row in rows.items() if row["type"] == "quorum"]
    for name, ready, unacked in _quorum_counts(vhost, quorum, run) if quorum else ():
        rows[name].update(messages_ready=ready, messages_unacknowledged=unacked)
    return rows


def _quorum_counts(
    vhost: str, names: list[str], run: Callable[..., str]
) -> list[tuple[str, int, int]]:
    """Ready and unacknowledged messages of quorum queues, asked of each queue's leader."""
    binaries = ", ".join(f'<<"{name}">>' for name in names)  # names are [A-Za-z0-9._-] only
    expression = (
        f'[begin {{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"{vhost}">>, queue, N)), '
        "P = amqqueue:get_pid(Q), "
        "{ok, {_, R}, _} = ra:leader_query(P, fun rabbit_fifo:query_messages_ready/1), "
        "{ok, {_, C}, _} = ra:leader_query(P, fun rabbit_fifo:query_messages_checked_out/1), "
        'io:format("hefl-queue ~s ~b ~b~n", [N, R, C]) end '
        f"|| N <- [{binaries}]], ok."
    )
    counts = []
    for line in run("eval", expression).splitlines():
        if line.startswith("hefl-queue "):
            _, name, ready, unacked = line.split()
            counts.append((name, int(ready), int(unacked)))
    return counts


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


# -- the node's configuration: TLS listener and limits --------------------------------------------


def configure_node() -> bool:
    """Write the test node's TLS material and config file; True when the config changed.

    The CA and the server certificate (for 127.0.0.1 and localhost) are made once and kept;
    the node reads them, and its config, only when it starts, so a changed config needs a
    restart (``ensure_tls`` and ``tools/start_broker.sh`` do it).
    """
    files = TlsFiles(
        cacertfile=str(TLS_CA),
        certfile=str(TLS_DIR / "server.pem"),
        keyfile=str(TLS_DIR / "server.key"),
    )
    if not all(Path(path).is_file() for path in (files.cacertfile, files.certfile, files.keyfile)):
        TLS_DIR.mkdir(parents=True, exist_ok=True)
        ca = make_ca("hefl test broker CA")
        server = make_server_cert(ca, ("localhost", HOST))
        _write(Path(files.keyfile), server.key, 0o640)
        _write(Path(files.certfile), server.cert, 0o644)
        _write(TLS_CA, ca.cert, 0o644)  # the CA's key is not kept: nothing else is ever signed
    text = rabbitmq_conf(tls=files, plain_tcp=True)
    if CONF_FILE.is_file() and CONF_FILE.read_text() == text:
        return False
    CONF_FILE.parent.mkdir(parents=True, exist_ok=True)
    _write(CONF_FILE, text.encode(), 0o644)
    return True


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` readable by the broker's own user (the node runs as ``rabbitmq``)."""
    path.write_bytes(data)
    path.chmod(mode)
    # no such group, or not root: then the node runs as this user and reads it anyway
    with contextlib.suppress(LookupError, PermissionError):
        shutil.chown(path, group="rabbitmq")


def ensure_tls() -> None:
    """The local node with its TLS listener; configures and restarts it the first time."""
    ensure_running()
    if port_open(port=TLS_PORT):
        return
    configure_node()
    restart()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not port_open(port=TLS_PORT):
        if time.monotonic() > deadline:
            raise BrokerError(
                f"RabbitMQ does not listen for TLS on {HOST}:{TLS_PORT} with {CONF_FILE}; "
                "see /var/log/rabbitmq/ for the reason"
            )
        time.sleep(0.5)


# -- a deployment's users on a throw-away virtual host ---------------------------------------------


@dataclass(frozen=True)
class Site:
    """One user per participant of ``plan`` on the virtual host ``plan.vhost``."""

    plan: BrokerPlan
    passwords: Mapping[str, str]

    @property
    def vhost(self) -> Vhost:
        return Vhost(self.plan.vhost)

    def url(self, identity: str, *, tls: bool = False, password: str | None = None) -> str:
        """The broker URL of ``identity``'s user (its own password unless one is given)."""
        user = quote(self.plan.user(identity), safe="")
        secret = quote(self.passwords[identity] if password is None else password, safe="")
        scheme, port = ("amqps", TLS_PORT) if tls else ("amqp", PORT)
        return f"{scheme}://{user}:{secret}@{HOST}:{port}/{quote(self.plan.vhost, safe='')}"


@contextmanager
def temporary_site(
    hospitals: tuple[str, ...] = ("hospital-1", "hospital-2"),
    *,
    prefix: str = "hefl",
    via: Literal["rabbitmqctl", "definitions"] = "rabbitmqctl",
    queue_type: QueueType = DEFAULT_QUEUE_TYPE,
    **limits: int,
) -> Iterator[Site]:
    """A fresh virtual host with a user per participant, confined by ``brokerconf``.

    ``via="rabbitmqctl"`` adds users, permissions and policies one command at a time;
    ``via="definitions"`` imports ``BrokerPlan.definitions`` (password hashes, topology and
    all) with ``rabbitmqctl import_definitions``. Users and virtual host are deleted afterwards.
    User names start with the virtual host's name, since users are global to the broker.
    """
    plan, passwords = site_plan(hospitals, prefix=prefix, queue_type=queue_type, **limits)
    try:
        add_site(plan, passwords, via=via)
        yield Site(plan, passwords)
    finally:
        for name in plan.participants:
            _in_background("delete_user", plan.user(name))
        _in_background("delete_vhost", plan.vhost)


def site_plan(
    hospitals: tuple[str, ...], *, prefix: str, queue_type: QueueType, **limits: int
) -> tuple[BrokerPlan, dict[str, str]]:
    """A plan on a fresh virtual host whose users are named after it, and their passwords."""
    tag = f"hefl-test-{uuid.uuid4().hex[:12]}"
    plan = BrokerPlan(
        hospitals=hospitals,
        prefix=prefix,
        vhost=tag,
        user_prefix=f"{tag}.",
        queue_type=queue_type,
        **limits,
    )
    passwords = {name: secrets.token_hex(16) for name in plan.participants}  # no leading "-"
    return plan, passwords


def add_site(
    plan: BrokerPlan,
    passwords: Mapping[str, str],
    *,
    via: Literal["rabbitmqctl", "definitions"] = "rabbitmqctl",
    run: Callable[..., str] | None = None,
) -> None:
    """Make the virtual host, users, permissions and policies of ``plan`` with ``run`` (the
    local node's ``rabbitmqctl`` unless another node's is given)."""
    run = run or ctl
    if via == "definitions":
        _import(plan.definitions(passwords), run)
        return
    run("add_vhost", plan.vhost)
    for name in plan.participants:
        run("add_user", plan.user(name), passwords[name])
        grant = plan.permission(name)
        run(
            "set_permissions",
            "-p",
            plan.vhost,
            plan.user(name),
            grant.configure,
            grant.write,
            grant.read,
        )
    for policy in plan.policies():
        run(
            "set_policy",
            "-p",
            plan.vhost,
            "--priority",
            str(policy["priority"]),
            "--apply-to",
            policy["apply-to"],
            policy["name"],
            policy["pattern"],
            json.dumps(policy["definition"]),
        )


def _in_background(*args: str) -> None:
    """Run ``rabbitmqctl`` without waiting (``wait_for_cleanup`` waits)."""
    command = ["rabbitmqctl", "-q", *args]
    quiet = subprocess.DEVNULL
    _cleanups.append(subprocess.Popen(command, stdout=quiet, stderr=quiet))


def _import(definitions: dict[str, Any], run: Callable[..., str]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(definitions, handle)
    try:
        os.chmod(handle.name, 0o644)
        run("import_definitions", handle.name)
    finally:
        os.unlink(handle.name)


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


def main(argv: list[str]) -> int:
    """``python -m testkit.broker configure``: configure the node; print whether it changed."""
    if argv != ["configure"]:
        print("usage: python -m testkit.broker configure", file=sys.stderr)
        return 2
    print("changed" if configure_node() else "unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
