"""One broker user per site: docker/broker_credentials.py (compose) and hefl.sites.broker
(Kubernetes, through hefl keys-k8s-secrets) give every participant its own user and password, in
a file and never in an environment variable, with RabbitMQ permissions confined to its own
queue; and the broker's TLS material: a private CA whose key is never written, the broker's
certificate for its service name, and the CA alone for the participants."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from common.errors import ConfigError
from hefl.sites import broker

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docker" / "broker_credentials.py"
TLS_FILES = ["ca.pem", "server.key", "server.pem"]


def generate(folder: Path, hospitals: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--hospitals", str(hospitals), "--dir", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_each_hospital_is_confined_to_its_own_queue_and_the_submit_exchange() -> None:
    rendered = broker.definitions(
        ["hospital-1", "hospital-2"],
        {"coordinator": "c", "hospital-1": "one", "hospital-2": "two"},
        "root",
    )
    users = [u["name"] for u in rendered["users"]]
    assert users == ["coordinator", "hospital-1", "hospital-2", "admin"]
    granted = {p["user"]: p for p in rendered["permissions"]}
    assert {p["vhost"] for p in granted.values()} == {"hefl"}
    for site in ("hospital-1", "hospital-2"):
        own = rf"hefl\.announce\.{site}"
        assert (granted[site]["configure"], granted[site]["write"], granted[site]["read"]) == (
            f"^{own}$",
            rf"^(hefl\.submit|{own})$",
            rf"^(hefl\.announce|{own})$",
        )
    # no wildcard for anyone but the operator, and no hospital may read the submissions
    for user, grant in granted.items():
        patterns = (grant["configure"], grant["write"], grant["read"])
        assert (".*" in "".join(patterns)) == (user == "admin"), user
    assert "submit" not in granted["hospital-1"]["read"]
    # the shared topology is declared; each site declares its own queue when it first connects
    assert sorted(e["name"] for e in rendered["exchanges"]) == ["hefl.announce", "hefl.submit"]
    assert [q["name"] for q in rendered["queues"]] == ["hefl.submit.coordinator"]
    assert [(b["source"], b["destination"]) for b in rendered["bindings"]] == [
        ("hefl.submit", "hefl.submit.coordinator")
    ]


def test_participants_log_in_as_themselves_with_a_password_from_a_file() -> None:
    from common.transport.settings import with_password

    parts = urlsplit(broker.PARTICIPANT_URL)
    assert (parts.scheme, parts.hostname, parts.port, parts.path) == (
        "amqps",
        "rabbitmq",
        5671,
        "/hefl",
    )
    assert parts.username is None and parts.password is None  # the URL holds no secret
    logged_in = urlsplit(with_password(broker.PARTICIPANT_URL, "pw", user="hospital-3"))
    assert (logged_in.username, logged_in.password) == ("hospital-3", "pw")
    assert broker.issue_passwords(["a", "b"], {"a": "kept"}, token=lambda: "new") == {
        "a": "kept",
        "b": "new",
    }


def test_compose_credentials_are_files_one_per_participant_kept_across_runs(
    tmp_path: Path,
) -> None:
    done = generate(tmp_path, 3)
    assert done.returncode == 0, done.stderr
    secrets = tmp_path / ".secrets"
    files = secrets / "broker"
    assert sorted(p.name for p in files.iterdir()) == [
        "admin.password",
        "coordinator.password",
        "erlang.cookie",  # the broker cluster's nodes' (make up BROKER_NODES=3)
        "hospital-1.password",
        "hospital-2.password",
        "hospital-3.password",
    ]
    assert mode(secrets) == mode(files) == 0o700  # only the operator reaches the files
    assert mode(files / "admin.password") == 0o600
    assert mode(files / "hospital-1.password") == 0o644  # read by the container's own user
    passwords = {p.stem: p.read_text().strip() for p in files.glob("*.password")}
    assert len(set(passwords.values())) == 5  # one password per user
    definitions = json.loads((secrets / "definitions.json").read_text())
    assert [u["name"] for u in definitions["users"]] == [
        "coordinator",
        "hospital-1",
        "hospital-2",
        "hospital-3",
        "admin",
    ]
    assert not [p for p in passwords.values() if p in json.dumps(definitions)]  # hashes only
    assert not (tmp_path / ".env").exists()  # no password in compose's variables

    before = {p.name: p.read_text() for p in files.iterdir()}
    assert generate(tmp_path, 3).returncode == 0
    assert {p.name: p.read_text() for p in files.iterdir()} == before  # make up again: kept
    assert generate(tmp_path, 2).returncode == 0  # identities issued again, fewer
    assert not (files / "hospital-3.password").exists()
    assert (files / "hospital-1.password").read_text() == before["hospital-1.password"]


def test_compose_tls_files_are_the_ca_certificate_and_the_brokers_kept_across_runs(
    tmp_path: Path,
) -> None:
    assert generate(tmp_path, 2).returncode == 0
    tls = tmp_path / ".secrets" / "tls"
    assert sorted(p.name for p in tls.iterdir()) == TLS_FILES  # no CA key, ever
    assert mode(tls) == 0o700  # only the operator reaches them on the host
    assert {p.name: mode(p) for p in tls.iterdir()} == dict.fromkeys(TLS_FILES, 0o644)
    before = {p.name: p.read_bytes() for p in tls.iterdir()}
    assert generate(tmp_path, 3).returncode == 0  # make up again, even with more identities
    assert {p.name: p.read_bytes() for p in tls.iterdir()} == before
    (tls / "server.key").unlink()  # the CA's key is gone: a new CA signs a new certificate
    assert generate(tmp_path, 3).returncode == 0
    again = {p.name: p.read_bytes() for p in tls.iterdir()}
    assert sorted(again) == TLS_FILES
    assert not [name for name in TLS_FILES if again[name] == before[name]]


def test_the_brokers_certificate_names_the_broker_and_only_its_own_key_is_kept() -> None:
    tls = broker.issue_tls()
    files = tls.files()
    assert sorted(files) == TLS_FILES
    ca = x509.load_pem_x509_certificate(files["ca.pem"])
    cert = x509.load_pem_x509_certificate(files["server.pem"])
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [
        "rabbitmq",
        "localhost",
        "rabbitmq-2",  # the nodes of compose's broker cluster (the first is "rabbitmq")
        "rabbitmq-3",
        "rabbitmq-0.rabbitmq-nodes",  # the nodes of the Kubernetes StatefulSet
        "rabbitmq-1.rabbitmq-nodes",
        "rabbitmq-2.rabbitmq-nodes",
    ]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    key = serialization.load_pem_private_key(files["server.key"], password=None)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert key.public_key().public_bytes(der, public) == cert.public_key().public_bytes(der, public)
    assert [name for name, data in files.items() if b"PRIVATE KEY" in data] == ["server.key"]
    assert "PRIVATE" not in repr(tls)
    assert broker.issue_tls().ca_cert != tls.ca_cert  # a new CA each time: nothing is reused


def conf_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_the_brokers_listen_on_tls_only_in_compose_and_kubernetes() -> None:
    expected = broker.rabbitmq_config(
        tls_dir="/etc/rabbitmq/tls", definitions_file="/etc/rabbitmq/hefl-definitions.json"
    )
    assert "listeners.tcp = none" in expected and "listeners.ssl.default = 5671" in expected
    assert "ssl_options.fail_if_no_peer_cert = false" in expected
    compose = (ROOT / "docker" / "rabbitmq" / "10-hefl.conf").read_text()
    assert conf_lines(compose) == conf_lines(expected)
    configs = yaml.safe_load_all((ROOT / "k8s" / "configmap.yaml").read_text())
    (k8s,) = [c for c in configs if c["metadata"]["name"] == "hefl-rabbitmq-config"]
    assert k8s["data"]["10-hefl.conf"] == broker.rabbitmq_config(
        tls_dir="/etc/rabbitmq/tls", definitions_file="/etc/rabbitmq/definitions/definitions.json"
    )


def test_the_broker_clusters_form_from_the_nodes_their_participants_name() -> None:
    compose = (ROOT / "docker" / "rabbitmq" / "20-cluster.conf").read_text()
    nodes = broker.node_names(broker.COMPOSE_NODES)
    assert conf_lines(compose) == conf_lines(broker.cluster_config(nodes))
    assert nodes == ("rabbit@rabbitmq", "rabbit@rabbitmq-2", "rabbit@rabbitmq-3")
    assert "cluster_partition_handling = pause_minority" in compose
    assert "cluster_formation.target_cluster_size_hint = 3" in compose
    urls = broker.compose_broker_urls(3).split(",")
    assert [urlsplit(url).hostname for url in urls] == list(broker.COMPOSE_NODES)
    assert broker.compose_broker_urls(1) == broker.PARTICIPANT_URL
    with pytest.raises(ConfigError, match="1 or 3 nodes"):
        broker.compose_broker_urls(2)
    with pytest.raises(ConfigError, match="at least 3 nodes"):
        broker.cluster_config(nodes[:2])


def test_compose_credentials_keep_one_erlang_cookie_and_reissue_a_certificate_without_the_nodes(
    tmp_path: Path,
) -> None:
    assert generate(tmp_path, 2).returncode == 0
    cookie = tmp_path / ".secrets" / "broker" / "erlang.cookie"
    first = cookie.read_text()
    assert len(first) == 64 and mode(cookie) == 0o644  # the 0700 folder keeps it from others
    tls = tmp_path / ".secrets" / "tls"
    old = broker.issue_tls(("rabbitmq", "localhost", "127.0.0.1"))  # from before the clusters
    for name, data in old.files().items():
        (tls / name).write_bytes(data)
    assert generate(tmp_path, 2).returncode == 0
    assert cookie.read_text() == first  # kept, as the passwords are
    cert = x509.load_pem_x509_certificate((tls / "server.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "rabbitmq-3" in names.get_values_for_type(x509.DNSName)  # issued again
    assert (tls / "ca.pem").read_bytes() != old.ca_cert


def test_compose_credentials_need_at_least_one_hospital(tmp_path: Path) -> None:
    done = generate(tmp_path, 0)
    assert done.returncode == 2 and "at least one hospital" in done.stderr


@pytest.mark.parametrize("sites", [1, 3])
def test_kubernetes_broker_secrets_give_each_site_only_its_own_login(sites: int) -> None:
    names = [f"hospital-{k}" for k in range(1, sites + 1)]
    passwords = {p: f"pw-{p}" for p in broker.participants(names)}
    tls = broker.issue_tls()
    manifests = broker.k8s_secrets(names, passwords, "admin-pw", tls)
    by_name = {m["metadata"]["name"]: m for m in manifests}
    assert set(by_name) == {
        "hefl-broker-definitions",
        "hefl-broker-tls",
        "hefl-broker-cookie",
        "hefl-broker-ca",
        "hefl-broker-credentials",
        *(f"hefl-{site}-broker" for site in names),
    }
    decoded = {
        name: {k: base64.b64decode(v) for k, v in m["data"].items()} for name, m in by_name.items()
    }
    assert decoded["hefl-broker-tls"] == tls.files()  # the broker's pod only
    assert decoded["hefl-broker-ca"] == {"ca.pem": tls.ca_cert}  # every participant: no key
    assert [n for n, data in decoded.items() if b"PRIVATE KEY" in b"".join(data.values())] == [
        "hefl-broker-tls"
    ]
    assert len(decoded["hefl-broker-cookie"]["cookie"]) == 64  # the broker's pods only
    again = broker.k8s_secrets(names, passwords, "admin-pw", tls, cookie="c0ffee")
    assert {m["metadata"]["name"]: m for m in again}["hefl-broker-cookie"]["data"] == {
        "cookie": base64.b64encode(b"c0ffee").decode()
    }
    for site in names:
        data = by_name[f"hefl-{site}-broker"]["data"]
        assert {k: base64.b64decode(v).decode() for k, v in data.items()} == {
            "password": f"pw-{site}"
        }
    shared = by_name["hefl-broker-credentials"]["data"]
    assert {k: base64.b64decode(v).decode() for k, v in shared.items()} == {
        "coordinator-password": "pw-coordinator",
        "admin-password": "admin-pw",
    }
