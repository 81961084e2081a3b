#!/usr/bin/env python3
"""Generate the compose cluster's broker credentials, outside git: one user per participant.

    python docker/broker_credentials.py --hospitals M

writes, under ``docker/.secrets/`` (a 0700 folder: only the operator reaches what is in it;
``--dir`` names another folder than ``docker/``):

- ``broker/<participant>.password``: the broker password of ``coordinator`` and of each of
  ``hospital-1`` ... ``hospital-M``, each its own broker user; compose binds each file into that
  participant's container only (``secrets:``, ``/run/secrets/broker-password``, read by
  ``hefl --broker-password-file``), never into an environment variable. Mode 0644, since the
  container's user (uid 10001) is not the operator: the 0700 folders are what keep them from the
  host's other users (0444 is Docker's own default mode for secrets inside a container);
- ``broker/admin.password`` (0600): the management UI's ``admin`` user, for the operator only;
- ``definitions.json`` (0644, salted hashes only, read by the broker's own user): vhost ``hefl``,
  the users, each confined to its own resources (``common.transport.brokerconf.BrokerPlan``: a
  hospital may declare and consume only ``hefl.announce.<itself>`` and publish only to the
  ``hefl.submit`` exchange), queue limits and the topology;
- ``broker/erlang.cookie``: the Erlang cookie the nodes of a broker cluster share (``make up
  BROKER_NODES=3``; docker/compose.broker-cluster.yaml), a compose secret of the broker nodes
  only; kept once made;
- ``tls/`` (0700): the broker's TLS material from ``hefl.sites.broker.issue_tls``: ``ca.pem``
  (the private CA's certificate, which every participant's container mounts read-only for
  ``hefl --broker-ca``), ``server.pem`` and ``server.key`` (the broker's certificate, for
  ``rabbitmq``, ``localhost``, ``127.0.0.1`` and every node of both deployments' broker
  clusters, and its key: mounted into the broker's containers only). The CA's key is never
  written, so nothing else can be signed by it. All 0644: the broker's user (uid 101 in the
  stand-in image, 999 in the official one) is not the operator.

Existing passwords, cookie and TLS files are kept, so ``make up`` after ``make up`` reuses them
(a certificate from before the broker cluster, which lacks its nodes' names, is issued again);
identities issued later get new passwords; ``make clean`` removes everything (a new CA next
time). Needs this project's ``common`` package (its ``.venv``, or python3 with PyYAML and
cryptography).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script with python3, outside the project's venv
    sys.path.insert(0, str(ROOT))

from cryptography import x509  # noqa: E402

from common.atomic import write_atomic  # noqa: E402
from common.errors import HeflError  # noqa: E402
from hefl.sites import site_names  # noqa: E402
from hefl.sites.broker import (  # noqa: E402
    ADMIN,
    CERT_FILE,
    CERTIFICATE_HOSTS,
    TLS_FILES,
    BrokerTls,
    definitions,
    erlang_cookie,
    issue_passwords,
    issue_tls,
    participants,
)

PRIVATE = 0o700
CONTAINER_READABLE = 0o644
OPERATOR_ONLY = 0o600


SUFFIX = ".password"
COOKIE = "erlang.cookie"


def known_passwords(folder: Path) -> dict[str, str]:
    """The passwords already issued, by user."""
    known = {path.stem: path.read_text().strip() for path in folder.glob(f"*{SUFFIX}")}
    return {user: password for user, password in known.items() if password}


def write(path: Path, text: str, mode: int) -> None:
    write_atomic(path, text.encode(), mode=mode)


def write_tls(folder: Path, issue: Callable[[], BrokerTls] = issue_tls) -> bool:
    """The broker's CA certificate, certificate and key in ``folder``; True when issued now.

    Kept when all three exist and the certificate names every broker host; otherwise all three
    are issued again (the CA's key is gone, so a missing server file cannot be re-signed by the
    same CA)."""
    if all((folder / name).is_file() for name in TLS_FILES) and names_every_host(folder):
        return False
    for name, data in issue().files().items():
        write_atomic(folder / name, data, mode=CONTAINER_READABLE)
    return True


def names_every_host(folder: Path) -> bool:
    """True when the broker's certificate in ``folder`` names every one of ``CERTIFICATE_HOSTS``."""
    cert = x509.load_pem_x509_certificate((folder / CERT_FILE).read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    listed = {*names.get_values_for_type(x509.DNSName)}
    listed |= {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    return set(CERTIFICATE_HOSTS) <= listed


def generate(root: Path, hospitals: int) -> Path:
    secrets_dir = root / ".secrets"
    broker = secrets_dir / "broker"
    tls = secrets_dir / "tls"
    for folder in (secrets_dir, broker, tls):
        folder.mkdir(mode=PRIVATE, parents=True, exist_ok=True)
        folder.chmod(PRIVATE)
    names = site_names(hospitals)
    users = participants(names)
    passwords = issue_passwords([*users, ADMIN], known_passwords(broker))
    for stale in {p.stem for p in broker.glob(f"*{SUFFIX}")} - {*users, ADMIN}:  # re-issued
        (broker / f"{stale}{SUFFIX}").unlink()
    for user in users:
        write(broker / f"{user}{SUFFIX}", passwords[user] + "\n", CONTAINER_READABLE)
    write(broker / f"{ADMIN}{SUFFIX}", passwords[ADMIN] + "\n", OPERATOR_ONLY)
    if not (broker / COOKIE).is_file():
        write(broker / COOKIE, erlang_cookie(), CONTAINER_READABLE)
    rendered = definitions(names, {u: passwords[u] for u in users}, passwords[ADMIN])
    out = secrets_dir / "definitions.json"
    write(out, json.dumps(rendered, indent=2) + "\n", CONTAINER_READABLE)
    write_tls(tls)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--hospitals", type=int, required=True, help="hospital identities the cluster issued"
    )
    parser.add_argument(
        "--dir", type=Path, default=Path(__file__).resolve().parent, help="default: docker/"
    )
    args = parser.parse_args(argv)
    try:
        out = generate(args.dir, args.hospitals)
    except (HeflError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    users = f"coordinator, hospital-1..{args.hospitals}, {ADMIN}"
    print(f"broker users {users}: {out.parent}", file=sys.stderr)
    print(f"broker TLS (private CA, the broker's certificate): {out.parent}/tls", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
