"""A local three-node RabbitMQ cluster for the failover tests, beside the single test node.

``broker_cluster()`` starts the nodes one after the other, each with its own node name
(``hefl-<tag>-c1@localhost`` ..., a tag per cluster so that two runs on one machine do not
clash), AMQP and Erlang distribution ports (free ones, on 127.0.0.1), and
its data, logs and configuration in a throw-away folder; no plugins. The nodes read no file of
``/etc/rabbitmq``, so the local test node of ``testkit.broker`` (``rabbit@<host>``, 5672 and
5671) is left alone. They share the Erlang cookie of the user they run as (``rabbitmq`` when
the tests run as root, as ``rabbitmqctl`` does). Their configuration is the deployments'
(``hefl.sites.broker.cluster_config``: classic peer discovery of the three, pause_minority),
so the second and third node join the first as they boot; one that did not is joined to it
(``stop_app``, ``join_cluster``, ``start_app``).

A test kills a node (SIGKILL to all its processes, as the OOM killer or a lost host would), or
stops it, and starts it again; ``site`` gives it one broker user per participant, as
``testkit.broker.temporary_site`` does on the local node, with each participant's URL listing
every node. On exit every node is killed and the folder removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

from common.transport.brokerconf import rabbitmq_conf
from common.transport.settings import URL_SEPARATOR
from hefl.sites.broker import cluster_config
from testkit.broker import BrokerError, Site, add_site, queue_rows, site_plan

NODES: Final = 3
HOST: Final = "127.0.0.1"
SCRIPTS: Final = Path("/usr/lib/rabbitmq/bin")  # Debian's; else the scripts on PATH
STARTUP_TIMEOUT: Final = 120.0
_CTL_TIMEOUT: Final = 60.0
_BROKER_USER: Final = "rabbitmq"  # whom root runs the nodes and rabbitmqctl as


@dataclass
class Node:
    """One node of the cluster: its name, ports, folder and, while it runs, its process."""

    name: str
    port: int
    dist_port: int
    root: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log(self) -> Path:
        return self.root / "log" / "node.log"


@dataclass(frozen=True)
class ClusterSite(Site):
    """A ``Site`` on the cluster: each participant's URL lists every node, comma-separated."""

    ports: tuple[int, ...] = ()

    def url(self, identity: str, *, tls: bool = False, password: str | None = None) -> str:
        if tls:
            raise BrokerError("the test cluster has no TLS listener")
        return URL_SEPARATOR.join(self.node_url(identity, port, password) for port in self.ports)

    def node_url(self, identity: str, port: int, password: str | None = None) -> str:
        """``identity``'s URL of the one node listening on ``port``."""
        user = quote(self.plan.user(identity), safe="")
        secret = quote(self.passwords[identity] if password is None else password, safe="")
        return f"amqp://{user}:{secret}@{HOST}:{port}/{quote(self.plan.vhost, safe='')}"


class BrokerCluster:
    """Nodes started, joined, killed and restarted with ``rabbitmq-server`` and ``rabbitmqctl``."""

    def __init__(self, root: Path, size: int = NODES) -> None:
        self.root = root
        tag = uuid.uuid4().hex[:6]
        self.nodes = [
            Node(f"hefl-{tag}-c{i}@localhost", _free_port(), _free_port(), root / f"c{i}")
            for i in range(1, size + 1)
        ]

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(node.port for node in self.nodes)

    def start(self) -> None:
        """Start every node, one after the other, and join the others to the first."""
        first, *others = self.nodes
        self.start_node(first)
        for node in others:
            self.start_node(node)
            if first.name not in self.cluster_status(node)["running_nodes"]:
                self.ctl("stop_app", node=node)
                self.ctl("join_cluster", first.name, node=node)
                self.ctl("start_app", node=node)
                self.wait_ready(node)
        running = set(self.cluster_status()["running_nodes"])
        if running != {node.name for node in self.nodes}:
            raise BrokerError(f"the test cluster did not form: running nodes {sorted(running)}")

    def start_node(self, node: Node) -> None:
        """Start ``node`` (again: a member rejoins its cluster by itself) and wait until it runs."""
        if node.running:
            raise BrokerError(f"{node.name} runs already")
        for folder in ("log", "conf.d", "mnesia"):
            (node.root / folder).mkdir(parents=True, exist_ok=True)
        conf = rabbitmq_conf(tls=None, plain_tcp=True)
        conf += cluster_config([member.name for member in self.nodes])
        (node.root / "rabbitmq.conf").write_text(conf)
        (node.root / "enabled_plugins").write_text("[].\n")
        (node.root / "rabbitmq-env.conf").write_text("")
        _give_to_broker_user(self.root)
        env = {
            **_broker_env(),
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(node.port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(node.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(node.root / "log"),
            "RABBITMQ_LOGS": str(node.log),
            "RABBITMQ_PID_FILE": str(node.root / "node.pid"),
            "RABBITMQ_CONFIG_FILE": str(node.root / "rabbitmq.conf"),
            "RABBITMQ_CONFIG_FILES": str(node.root / "conf.d"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(node.root / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(node.root / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(node.root / "rabbitmq-env.conf"),
        }
        with (node.root / "log" / "console.log").open("ab") as console:
            node.process = subprocess.Popen(
                [_script("rabbitmq-server")],
                env=env,
                cwd=node.root,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill() ends all of it
                **_as_broker_user(),
            )
        self.wait_ready(node)

    def wait_ready(self, node: Node, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until ``node`` has booted and takes AMQP connections."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not node.running:
                raise BrokerError(f"{node.name} exited while starting:\n{self.tail(node)}")
            if self._ctl_ok("await_startup", "--timeout", "10", node=node) and _port_open(
                node.port
            ):
                return
            time.sleep(0.5)
        raise BrokerError(f"{node.name} did not start within {timeout:.0f} s:\n{self.tail(node)}")

    def kill(self, node: Node) -> None:
        """SIGKILL every process of ``node``: no goodbye to its clients or its peers."""
        if node.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.process.pid, signal.SIGKILL)
        node.process.wait(timeout=30)

    def stop(self, node: Node) -> None:
        """Stop ``node`` the orderly way (``rabbitmqctl stop``)."""
        self.ctl("stop", node=node)
        if node.process is not None:
            node.process.wait(timeout=STARTUP_TIMEOUT)

    def node_at(self, endpoint: str) -> Node:
        """The node an endpoint (a transport's ``connected_to``) names, by its port."""
        port = urlsplit(endpoint).port
        return next(node for node in self.nodes if node.port == port)

    def ctl(self, *args: str, node: Node | None = None) -> str:
        """``rabbitmqctl`` on ``node`` (the first running one unless given); fails loudly."""
        target = node or next(n for n in self.nodes if n.running)
        done = self._run("rabbitmqctl", "-n", target.name, "-q", *args)
        if done.returncode != 0:
            output = done.stderr.strip() or done.stdout.strip()
            raise BrokerError(f"rabbitmqctl -n {target.name} {' '.join(args)} failed: {output}")
        return done.stdout

    def cluster_status(self, node: Node | None = None) -> dict[str, Any]:
        return dict(json.loads(self.ctl("cluster_status", "--formatter", "json", node=node)))

    def queues(self, vhost: str, node: Node | None = None) -> dict[str, dict[str, Any]]:
        """Queues of ``vhost`` by name: type, leader, members, online, messages ready and
        unacked (as the leader has them now), consumers."""
        columns = ["durable", "leader", "members", "online", "consumers"]
        return queue_rows(vhost, columns, partial(self.ctl, node=node))

    @contextmanager
    def site(
        self, hospitals: tuple[str, ...] = ("hospital-1", "hospital-2"), *, prefix: str = "hefl"
    ) -> Iterator[ClusterSite]:
        """A virtual host with a user per participant, made as on the local node; the cluster's
        teardown removes it with everything else."""
        plan, passwords = site_plan(hospitals, prefix=prefix, queue_type="quorum")
        add_site(plan, passwords, run=self.ctl)
        yield ClusterSite(plan, passwords, ports=self.ports)

    def tail(self, node: Node, lines: int = 30) -> str:
        texts = []
        for path in (node.root / "log" / "console.log", node.log):
            with contextlib.suppress(OSError):
                texts.append("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(texts)

    def close(self) -> None:
        """Kill every node and remove the folder."""
        for node in self.nodes:
            self.kill(node)
        shutil.rmtree(self.root, ignore_errors=True)

    def _ctl_ok(self, *args: str, node: Node) -> bool:
        try:
            return self._run("rabbitmqctl", "-n", node.name, "-q", *args).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_script(tool), *args],
            env=_broker_env(),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=_CTL_TIMEOUT,
            **_as_broker_user(),
        )


@contextmanager
def broker_cluster(size: int = NODES) -> Iterator[BrokerCluster]:
    """A running cluster of ``size`` nodes, killed and removed afterwards."""
    missing = [tool for tool in ("rabbitmq-server", "rabbitmqctl") if not _has_script(tool)]
    if missing:
        raise BrokerError(
            f"{', '.join(missing)} is not installed: apt-get install -y rabbitmq-server "
            "(CI does this in .ci/run)"
        )
    cluster = BrokerCluster(Path(tempfile.mkdtemp(prefix="hefl-broker-cluster-")), size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def _has_script(tool: str) -> bool:
    return (SCRIPTS / tool).is_file() or shutil.which(tool) is not None


def _script(tool: str) -> str:
    """The tool itself: Debian's ``/usr/sbin`` wrappers switch users and redirect output."""
    return str(SCRIPTS / tool) if (SCRIPTS / tool).is_file() else tool


def _as_broker_user() -> dict[str, Any]:
    """Run as ``rabbitmq`` when root (its home holds the cookie), else as this user."""
    if os.geteuid() != 0:
        return {}
    return {"user": _BROKER_USER, "group": _BROKER_USER, "extra_groups": []}


def _broker_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RABBITMQ_")}
    if os.geteuid() == 0:
        env["HOME"] = pwd.getpwnam(_BROKER_USER).pw_dir
    env.setdefault("LANG", "C.UTF-8")
    return env


def _give_to_broker_user(root: Path) -> None:
    if os.geteuid() != 0:
        return
    for folder, _, files in os.walk(root):
        shutil.chown(folder, _BROKER_USER, _BROKER_USER)
        for name in files:
            shutil.chown(Path(folder) / name, _BROKER_USER, _BROKER_USER)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False
