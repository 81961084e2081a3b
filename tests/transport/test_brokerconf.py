"""The broker's configuration as pure functions: permissions, definitions, rabbitmq.conf, the CA.

No broker here: ``test_broker_isolation.py`` shows the same permissions and definitions holding
on the real RabbitMQ. These check what can be checked without one: which resource names each
expression grants (RabbitMQ's expressions are PCRE; these use only what Python's ``re`` reads the
same way), the password hash against RabbitMQ's algorithm, the certificates against their CA.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import re
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from common.errors import ConfigError
from common.protocol.signing import COORDINATOR as PROTOCOL_COORDINATOR
from common.transport.brokerconf import (
    BrokerPlan,
    Permission,
    TlsFiles,
    password_hash,
    rabbitmq_conf,
)
from common.transport.brokerpki import make_ca, make_server_cert
from common.transport.names import COORDINATOR, Names
from common.transport.settings import (
    DEFAULT_MAX_MESSAGE_BYTES,
    read_password_file,
    with_password,
)

PLAN = BrokerPlan(hospitals=("hospital-1", "hospital-2", "hospital-10"), prefix="hefl")
N = Names("hefl")
EVERY_RESOURCE = (
    N.announce_exchange,
    N.submit_exchange,
    N.submit_queue,
    *(N.announce_queue(h) for h in ("hospital-1", "hospital-2", "hospital-10", "hospital-3")),
    "amq.default",
    "amq.direct",
    "amq.fanout",
    "hefl.submitX",
    "hefl.announce.hospital-1.extra",
    "xhefl.submit",
    "other.announce",
)


def granted(expression: str) -> set[str]:
    return {name for name in EVERY_RESOURCE if re.search(expression, name)}


def grants(permission: Permission) -> dict[str, set[str]]:
    return {
        "configure": granted(permission.configure),
        "write": granted(permission.write),
        "read": granted(permission.read),
    }


def test_a_hospital_may_configure_and_consume_its_own_queue_and_publish_only_to_submit() -> None:
    assert grants(PLAN.permission("hospital-1")) == {
        "configure": {"hefl.announce.hospital-1"},
        "write": {"hefl.submit", "hefl.announce.hospital-1"},  # publish; bind its queue
        "read": {"hefl.announce", "hefl.announce.hospital-1"},  # bind from; consume
    }
    assert grants(PLAN.permission("hospital-10"))["read"] == {
        "hefl.announce",
        "hefl.announce.hospital-10",
    }


def test_the_coordinator_may_not_touch_a_hospitals_queue() -> None:
    assert grants(PLAN.permission(COORDINATOR)) == {
        "configure": {"hefl.announce", "hefl.submit", "hefl.submit.coordinator"},
        "write": {"hefl.announce", "hefl.submit.coordinator"},  # publish; bind its queue
        "read": {"hefl.submit", "hefl.submit.coordinator"},  # bind from; consume
    }


def test_no_exchange_shares_a_name_with_a_queue_so_each_grant_is_exact() -> None:
    exchanges = {N.announce_exchange, N.submit_exchange}
    queues = {N.submit_queue, N.announce_queue("hospital-1")}
    assert not exchanges & queues
    assert COORDINATOR == PROTOCOL_COORDINATOR


def test_a_prefix_with_dots_is_matched_literally() -> None:
    plan = BrokerPlan(hospitals=("h1",), prefix="fl.prod")
    write = plan.permission("h1").write
    assert re.search(write, "fl.prod.submit")
    assert not re.search(write, "flXprod.submit")


def test_the_password_hash_is_rabbitmqs_salted_sha256() -> None:
    salt = bytes([0x90, 0x8D, 0xC6, 0x0A])
    digest = hashlib.sha256(salt + b"test12").digest()
    assert password_hash("test12", salt) == base64.b64encode(salt + digest).decode()
    decoded = base64.b64decode(password_hash("pässword"))
    assert len(decoded) == 4 + 32
    assert decoded[4:] == hashlib.sha256(decoded[:4] + "pässword".encode()).digest()
    assert password_hash("same") != password_hash("same")  # a fresh salt each time


def test_definitions_hold_one_user_per_participant_with_its_permissions_and_the_topology() -> None:
    passwords = {name: f"pw-{name}" for name in PLAN.participants}
    definitions = PLAN.definitions(passwords, salt=lambda: b"salt")
    json.dumps(definitions)  # serializable as it is

    users = {user["name"]: user for user in definitions["users"]}
    assert set(users) == {"coordinator", "hospital-1", "hospital-2", "hospital-10"}
    assert users["hospital-2"]["password_hash"] == password_hash("pw-hospital-2", b"salt")
    assert {u["hashing_algorithm"] for u in users.values()} == {"rabbit_password_hashing_sha256"}
    assert all(u["tags"] == [] for u in users.values())  # nobody may impersonate (user_id)
    grants_ = {p["user"]: p for p in definitions["permissions"]}
    assert grants_["hospital-1"]["write"] == PLAN.permission("hospital-1").write
    assert {p["vhost"] for p in definitions["permissions"]} == {"hefl"}
    assert definitions["vhosts"] == [{"name": "hefl"}]

    exchanges = {e["name"]: e["type"] for e in definitions["exchanges"]}
    assert exchanges == {"hefl.announce": "fanout", "hefl.submit": "direct"}
    assert {q["name"] for q in definitions["queues"]} == {
        "hefl.submit.coordinator",
        "hefl.announce.hospital-1",
        "hefl.announce.hospital-2",
        "hefl.announce.hospital-10",
    }
    routes = {(b["source"], b["destination"], b["routing_key"]) for b in definitions["bindings"]}
    assert ("hefl.submit", "hefl.submit.coordinator", "hefl.submit.coordinator") in routes
    assert len(routes) == 4


def test_policies_cap_every_queue_and_only_the_submit_queue_refuses_publishes() -> None:
    policies = {p["name"]: p for p in BrokerPlan(hospitals=("h1",), submit_max_length=7).policies()}
    submit, announce = policies["hefl-submit"], policies["hefl-announce"]
    assert submit["definition"]["max-length"] == 7
    assert submit["definition"]["overflow"] == "reject-publish"
    assert announce["definition"]["overflow"] == "drop-head"
    assert re.search(submit["pattern"], "hefl.submit.coordinator")
    assert re.search(announce["pattern"], "hefl.announce.h1")
    assert not re.search(announce["pattern"], "hefl.submit.coordinator")
    assert {p["apply-to"] for p in policies.values()} == {"queues"}


def test_an_admin_user_is_added_only_when_asked_for() -> None:
    passwords = dict.fromkeys(PLAN.participants, "pw")
    assert "admin" not in {u["name"] for u in PLAN.definitions(passwords)["users"]}
    with_admin = PLAN.definitions(passwords, admin_password="root-pw")
    admin = next(u for u in with_admin["users"] if u["name"] == "admin")
    assert admin["tags"] == ["administrator"]


def test_a_user_prefix_names_the_users_and_senders_map_them_back() -> None:
    plan = BrokerPlan(hospitals=("hospital-1",), user_prefix="t1.")
    assert plan.user("hospital-1") == "t1.hospital-1"
    assert plan.senders(["hospital-1"]) == {"t1.hospital-1": "hospital-1"}
    assert plan.permission("hospital-1") == PLAN.permission("hospital-1")  # names, not users


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: BrokerPlan(hospitals=()), "at least one hospital"),
        (lambda: BrokerPlan(hospitals=("h1", "h1")), "unique"),
        (lambda: BrokerPlan(hospitals=("coordinator",)), "unique"),
        (lambda: BrokerPlan(hospitals=("h 1",)), "participant"),
        (lambda: BrokerPlan(hospitals=("h1",), prefix="a*"), "prefix"),
        (lambda: BrokerPlan(hospitals=("h1",), submit_max_length=-1), "negative"),
        (lambda: PLAN.permission("hospital-3"), "not a participant"),
        (lambda: PLAN.definitions({"coordinator": "pw"}), "no broker password for hospital-1"),
    ],
)
def test_bad_plans_are_refused(make: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()  # type: ignore[operator]


def test_the_conf_snippet_has_the_tls_listener_the_size_cap_and_the_definitions() -> None:
    tls = TlsFiles(
        cacertfile="/etc/tls/ca.pem", certfile="/etc/tls/s.pem", keyfile="/etc/tls/s.key"
    )
    text = rabbitmq_conf(tls=tls, definitions_file="/etc/rabbitmq/defs.json")
    lines = set(text.splitlines())
    assert {
        f"max_message_size = {DEFAULT_MAX_MESSAGE_BYTES}",
        "listeners.tcp = none",
        "listeners.ssl.default = 5671",
        "ssl_options.cacertfile = /etc/tls/ca.pem",
        "ssl_options.certfile = /etc/tls/s.pem",
        "ssl_options.keyfile = /etc/tls/s.key",
        "ssl_options.verify = verify_peer",
        "ssl_options.fail_if_no_peer_cert = false",
        "load_definitions = /etc/rabbitmq/defs.json",
    } <= lines
    plain = rabbitmq_conf(tls=None, plain_tcp=True, max_message_bytes=4096)
    assert "listeners.tcp = none" not in plain and "max_message_size = 4096" in plain
    with pytest.raises(ConfigError, match="listener"):
        rabbitmq_conf(tls=None)
    with pytest.raises(ConfigError, match="absolute"):
        rabbitmq_conf(tls=TlsFiles(cacertfile="ca.pem", certfile="/s", keyfile="/k"))
    with pytest.raises(ConfigError, match="max_message_size"):
        rabbitmq_conf(tls=tls, max_message_bytes=0)


# -- the private CA ------------------------------------------------------------------------------


def test_the_server_certificate_is_signed_by_the_ca_for_the_broker_names() -> None:
    ca = make_ca()
    server = make_server_cert(ca, ("rabbitmq", "localhost", "127.0.0.1"))
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    cert = x509.load_pem_x509_certificate(server.cert)
    cert.verify_directly_issued_by(ca_cert)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["rabbitmq", "localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert "PRIVATE KEY" not in repr(server) and b"PRIVATE KEY" in server.key


def test_a_client_trusting_the_ca_accepts_the_server_and_one_trusting_another_does_not(
    tmp_path: Path,
) -> None:
    ca, other = make_ca(), make_ca("another CA")
    server = make_server_cert(ca, ("localhost", "127.0.0.1"))
    (tmp_path / "server.pem").write_bytes(server.cert)
    (tmp_path / "server.key").write_bytes(server.key)
    code = (
        "import socket, ssl, sys\n"
        "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
        "ctx.load_cert_chain(sys.argv[1], sys.argv[2])\n"
        "s = socket.create_server(('127.0.0.1', 0)); print(s.getsockname()[1], flush=True)\n"
        "for _ in range(2):\n"
        "    c, _ = s.accept()\n"
        "    try: ctx.wrap_socket(c, server_side=True).close()\n"
        "    except ssl.SSLError: c.close()\n"
    )
    server_process = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "server.pem"), str(tmp_path / "server.key")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server_process.stdout is not None
        port = int(server_process.stdout.readline())
        outcomes = []
        for trusted in (ca, other):
            context = ssl.create_default_context(cadata=trusted.cert.decode())
            try:
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                    context.wrap_socket(raw, server_hostname="127.0.0.1"),
                ):
                    outcomes.append("verified")
            except ssl.SSLCertVerificationError:
                outcomes.append("refused")
        assert outcomes == ["verified", "refused"]
    finally:
        server_process.wait(timeout=10)


def test_certificates_are_valid_from_now_for_their_lifetime() -> None:
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    ca = make_ca(now=now, days=10)
    cert = x509.load_pem_x509_certificate(make_server_cert(ca, ("h",), now=now, days=5).cert)
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
    assert cert.not_valid_after_utc == now + datetime.timedelta(days=5)
    with pytest.raises(ConfigError, match="host"):
        make_server_cert(ca, ())


# -- the password file ---------------------------------------------------------------------------


def test_a_password_file_fills_in_the_urls_password_percent_encoded(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("p@ss/w:rd%\n")
    url = with_password("amqps://hospital-3@rabbitmq:5671/hefl", read_password_file(secret))
    assert url == "amqps://hospital-3:p%40ss%2Fw%3Ard%25@rabbitmq:5671/hefl"
    assert with_password("amqp://u@h", "pw") == "amqp://u:pw@h"
    assert with_password("amqp://u@h/v", "pw", user="other") == "amqp://u:pw@h/v"  # URL's user
    assert with_password("amqps://rabbitmq/v", "pw", user="hospital-2") == (
        "amqps://hospital-2:pw@rabbitmq/v"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("amqps://hospital-3:old@rabbitmq/hefl", "already carries a password"),
        ("amqps://rabbitmq/hefl", "names the user"),
        ("rabbitmq/hefl", "names the user"),
    ],
)
def test_a_url_that_cannot_take_the_password_is_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        with_password(url, "pw")


@pytest.mark.parametrize("content", ["", "\n", "one\ntwo\n"])
def test_a_password_file_must_hold_one_line(tmp_path: Path, content: str) -> None:
    secret = tmp_path / "password"
    secret.write_text(content)
    with pytest.raises(ConfigError, match="one non-empty line"):
        read_password_file(secret)
    with pytest.raises(ConfigError, match="cannot read"):
        read_password_file(tmp_path / "missing")
