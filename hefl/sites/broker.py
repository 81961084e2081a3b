"""Broker logins of a cluster: one RabbitMQ user per participant, each with its own password.

Every participant (the coordinator and each issued hospital identity) logs in as the user of its
own name, so the ``user_id`` the broker checks on each message is the sender's identity. What
each user may do is ``common.transport.brokerconf.BrokerPlan``'s: a hospital may declare, bind
and consume only its own announce queue and publish only to the submit exchange. A participant
gets its password as a file (``hefl --broker-password-file``), never as an environment variable,
and ``PARTICIPANT_URL`` as its broker URL: no user (hefl logs in as the participant's identity),
no password, and TLS (``amqps``) to the broker's only listener.

The broker's TLS material (``issue_tls``) is made with the credentials: a fresh private CA signs
the broker's certificate and is then dropped, so its key is never written anywhere and no second
certificate can be signed by it. The broker gets the certificate and its key; every participant
gets only the CA certificate (``hefl --broker-ca``), so it trusts this broker and nothing else.
The certificate names every node of both deployments' broker clusters too, so the same files
serve one node or three.

A broker cluster (three nodes: compose's ``make up BROKER_NODES=3``, Kubernetes' StatefulSet)
forms from ``cluster_config`` (the nodes listed, classic peer discovery); its nodes share an
Erlang cookie (``erlang_cookie``), a secret like the passwords. Participants get every node's
URL (``participant_urls``) and move to another node when theirs is lost.

Pure functions: ``docker/broker_credentials.py`` writes the compose cluster's files from them, and
``hefl keys-k8s-secrets`` prints them as Kubernetes Secrets.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from common.errors import ConfigError
from common.transport.brokerconf import DEFAULT_VHOST, TLS_PORT, BrokerPlan, TlsFiles, rabbitmq_conf
from common.transport.brokerpki import DEFAULT_BROKER_HOSTS, CertifiedKey, make_ca, make_server_cert
from common.transport.names import COORDINATOR

#: The broker's name in both deployments (compose service, Kubernetes Service).
BROKER_HOST: Final = "rabbitmq"
#: The broker's only AMQP listener, in both deployments: TLS.
BROKER_PORT: Final = TLS_PORT
MANAGEMENT_PORT: Final = 15672
#: The operator's user of the management UI (administrator tag, every permission).
ADMIN: Final = "admin"
#: Every participant's broker URL, in both deployments: its identity is its user.
PARTICIPANT_URL: Final = f"amqps://{BROKER_HOST}:{BROKER_PORT}/{DEFAULT_VHOST}"
#: The nodes of compose's broker cluster (services and host names; the first is the one broker
#: of the single-node default) and of the Kubernetes StatefulSet (pods of the headless Service).
COMPOSE_NODES: Final = (BROKER_HOST, f"{BROKER_HOST}-2", f"{BROKER_HOST}-3")
NODES_SERVICE: Final = f"{BROKER_HOST}-nodes"
K8S_NODES: Final = tuple(f"{BROKER_HOST}-{i}.{NODES_SERVICE}" for i in range(3))
#: The names the broker's certificate holds: the single broker, and every node of both clusters.
CERTIFICATE_HOSTS: Final = (*DEFAULT_BROKER_HOSTS, *COMPOSE_NODES[1:], *K8S_NODES)
#: The Kubernetes Secret of the broker nodes' shared Erlang cookie (key ``cookie``).
COOKIE_SECRET: Final = "hefl-broker-cookie"
DEFINITIONS_KEY: Final = "definitions.json"
DEFINITIONS_SECRET: Final = "hefl-broker-definitions"
#: The coordinator's password (``coordinator-password``), the operator's (``admin-password``).
CREDENTIALS_SECRET: Final = "hefl-broker-credentials"
#: The broker's TLS files, by name: the CA certificate, the server's certificate and its key.
CA_FILE: Final = "ca.pem"
CERT_FILE: Final = "server.pem"
KEY_FILE: Final = "server.key"
TLS_FILES: Final = (CA_FILE, CERT_FILE, KEY_FILE)
#: The broker's certificate and key with the CA (for the broker pod only), the CA alone (clients).
TLS_SECRET: Final = "hefl-broker-tls"
CA_SECRET: Final = "hefl-broker-ca"
CA_NAME: Final = "hefl cluster broker CA"


@dataclass(frozen=True)
class BrokerTls:
    """The broker's certificate and key, and the CA certificate that signed it (no CA key)."""

    ca_cert: bytes
    server: CertifiedKey

    def __repr__(self) -> str:
        return f"BrokerTls(server={self.server!r})"

    def files(self) -> dict[str, bytes]:
        """File name -> contents, as the broker reads them (``rabbitmq_config``)."""
        return {CA_FILE: self.ca_cert, CERT_FILE: self.server.cert, KEY_FILE: self.server.key}


def issue_tls(hosts: Sequence[str] = CERTIFICATE_HOSTS) -> BrokerTls:
    """A new private CA's certificate and the broker's certificate for ``hosts``, signed by it.

    The CA's key only lives in this call: nothing else is ever signed with it, so rotating the
    broker's certificate means a new CA, handed to every participant again.
    """
    ca = make_ca(CA_NAME)
    return BrokerTls(ca_cert=ca.cert, server=make_server_cert(ca, hosts))


def rabbitmq_config(*, tls_dir: str, definitions_file: str) -> str:
    """The broker's ``conf.d`` snippet in both deployments: the TLS listener only (the files of
    ``BrokerTls.files`` in ``tls_dir``), the size cap, the definitions, the management UI."""
    tls = TlsFiles(
        cacertfile=f"{tls_dir}/{CA_FILE}",
        certfile=f"{tls_dir}/{CERT_FILE}",
        keyfile=f"{tls_dir}/{KEY_FILE}",
    )
    conf = rabbitmq_conf(tls=tls, definitions_file=definitions_file, plain_tcp=False)
    return conf + f"management.tcp.port = {MANAGEMENT_PORT}\n"


def participant_urls(nodes: Sequence[str]) -> str:
    """Every participant's broker URL for a cluster of ``nodes``: one per node, comma-separated."""
    return ",".join(f"amqps://{node}:{BROKER_PORT}/{DEFAULT_VHOST}" for node in nodes)


def compose_broker_urls(nodes: int) -> str:
    """The compose participants' broker URL(s) with ``nodes`` broker nodes: the single broker,
    or the three of ``docker/compose.broker-cluster.yaml``."""
    if nodes == 1:
        return PARTICIPANT_URL
    if nodes == len(COMPOSE_NODES):
        return participant_urls(COMPOSE_NODES)
    raise ConfigError(f"the compose broker runs 1 or {len(COMPOSE_NODES)} nodes, not {nodes}")


def node_names(hosts: Sequence[str]) -> tuple[str, ...]:
    """The RabbitMQ node names of ``hosts``: ``rabbit@<host>``, each container's default."""
    return tuple(f"rabbit@{host}" for host in hosts)


def cluster_config(nodes: Sequence[str], *, grow_quorum_queues: bool = False) -> str:
    """The ``conf.d`` snippet that makes ``nodes`` (node names, ``rabbit@<host>``) one cluster.

    Classic peer discovery: a blank node joins the listed nodes that run, or forms the cluster
    when none does (RabbitMQ locks that step, so nodes may boot together). The queues of the
    definitions are declared once all of them have joined (``target_cluster_size_hint``), so each
    quorum queue has a member on every node. A node that cannot see a majority of the cluster
    pauses (``pause_minority``) rather than take messages the majority never sees.
    ``grow_quorum_queues`` (RabbitMQ 3.13 and later only) also adds members on its own to a
    quorum queue declared before every node had joined.
    """
    if len(nodes) < 3:
        raise ConfigError("a broker cluster has at least 3 nodes: a majority survives one's loss")
    lines = [
        "# RabbitMQ cluster for hefl (hefl.sites.broker.cluster_config)",
        "cluster_formation.peer_discovery_backend = classic_config",
        *(
            f"cluster_formation.classic_config.nodes.{i} = {node}"
            for i, node in enumerate(nodes, 1)
        ),
        f"cluster_formation.target_cluster_size_hint = {len(nodes)}",
        "cluster_partition_handling = pause_minority",
    ]
    if grow_quorum_queues:
        lines += [
            "quorum_queue.continuous_membership_reconciliation.enabled = true",
            f"quorum_queue.continuous_membership_reconciliation.target_group_size = {len(nodes)}",
        ]
    return "\n".join(lines) + "\n"


def erlang_cookie(token: Callable[[], str] = lambda: secrets.token_hex(32)) -> str:
    """A new Erlang cookie: whoever holds it controls every node of the broker cluster."""
    return token()


def participants(hospitals: Sequence[str]) -> tuple[str, ...]:
    """Who logs in: the coordinator and every hospital identity."""
    return plan(hospitals).participants


def plan(hospitals: Sequence[str]) -> BrokerPlan:
    """The broker users and permissions of a cluster whose ceremony issued ``hospitals``."""
    return BrokerPlan(hospitals=tuple(hospitals), vhost=DEFAULT_VHOST)


def issue_passwords(
    names: Sequence[str],
    known: Mapping[str, str],
    *,
    token: Callable[[], str] = lambda: secrets.token_urlsafe(24),
) -> dict[str, str]:
    """A password for each of ``names``: the one already ``known``, else a new random one."""
    return {name: known.get(name) or token() for name in names}


def definitions(
    hospitals: Sequence[str], passwords: Mapping[str, str], admin_password: str
) -> dict[str, Any]:
    """RabbitMQ's definitions: vhost, one user per participant plus ``admin``, permissions,
    queue limits and the shared topology (``BrokerPlan.definitions``).

    The hospitals' announce queues are left out: each site declares its own when it first
    connects (its user may). Declared at the broker's boot, the queue of a site that starts
    later (``make scale``) would hold every round announced before it existed, and the site
    would train for those rounds only to have its updates rejected as late; a new site asks for
    the round in progress instead (hello). The exchanges and the coordinator's queue are
    declared, so sites can start before the coordinator.
    """
    broker = plan(hospitals)
    rendered = broker.definitions(passwords, admin_password=admin_password)
    own = {broker.names.announce_queue(h) for h in hospitals}
    rendered["queues"] = [q for q in rendered["queues"] if q["name"] not in own]
    rendered["bindings"] = [b for b in rendered["bindings"] if b["destination"] not in own]
    return rendered


def site_secret(hospital: str) -> str:
    """The Kubernetes Secret holding one site's broker password: only that site's pod mounts it."""
    return f"hefl-{hospital}-broker"


def k8s_secrets(
    hospitals: Sequence[str],
    passwords: Mapping[str, str],
    admin_password: str,
    tls: BrokerTls,
    cookie: str | None = None,
) -> list[dict[str, Any]]:
    """The broker's definitions, TLS files and Erlang cookie (for the broker's pods), the CA
    certificate (for every participant), the coordinator's and admin's passwords, one password
    per site (key ``password``). ``cookie``: a new one unless given."""
    rendered = json.dumps(definitions(hospitals, passwords, admin_password), indent=2)
    shared = {
        f"{COORDINATOR}-password": passwords[COORDINATOR],
        f"{ADMIN}-password": admin_password,
    }
    tls_files = {name: data.decode("ascii") for name, data in tls.files().items()}
    return [
        _secret(DEFINITIONS_SECRET, {DEFINITIONS_KEY: rendered}, BROKER_HOST),
        _secret(TLS_SECRET, tls_files, BROKER_HOST),
        _secret(COOKIE_SECRET, {"cookie": cookie or erlang_cookie()}, BROKER_HOST),
        _secret(CA_SECRET, {CA_FILE: tls_files[CA_FILE]}, "participants"),
        _secret(CREDENTIALS_SECRET, shared, COORDINATOR),
        *(_secret(site_secret(h), {"password": passwords[h]}, h, site=h) for h in hospitals),
    ]


def _secret(
    name: str, data: Mapping[str, str], owner: str, site: str | None = None
) -> dict[str, Any]:
    labels = {"app.kubernetes.io/part-of": "hefl", "hefl.io/broker-credentials-for": owner}
    if site is not None:
        labels["hefl.io/site"] = site
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode("ascii") for k, v in data.items()},
    }
