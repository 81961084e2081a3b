"""The broker's private CA and server certificate, made at the key ceremony (no I/O).

Clients verify the broker against this CA only (``--broker-ca``), not the system's trust store:
a certificate some public CA issued for the broker's name does not pass. The CA's key signs the
server certificate and is then needed only to issue the next one, so the ceremony keeps it away
from the broker. ECDSA P-256 keys, SHA-256 signatures.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.errors import ConfigError

CA_DAYS: Final = 3650
SERVER_DAYS: Final = 825
DEFAULT_BROKER_HOSTS: Final = ("rabbitmq", "localhost", "127.0.0.1")


@dataclass(frozen=True)
class CertifiedKey:
    """A PEM certificate and its PEM private key (unencrypted: file permissions protect it)."""

    cert: bytes
    key: bytes

    def __repr__(self) -> str:
        return f"CertifiedKey(subject={self.subject!r})"

    @property
    def subject(self) -> str:
        return x509.load_pem_x509_certificate(self.cert).subject.rfc4514_string()


def make_ca(
    name: str = "hefl broker CA", *, days: int = CA_DAYS, now: datetime.datetime | None = None
) -> CertifiedKey:
    """A self-signed CA that may sign server certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = _now(now)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - datetime.timedelta(minutes=5))
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(_pem(cert), _key_pem(key))


def make_server_cert(
    ca: CertifiedKey,
    hosts: Sequence[str] = DEFAULT_BROKER_HOSTS,
    *,
    days: int = SERVER_DAYS,
    now: datetime.datetime | None = None,
) -> CertifiedKey:
    """The broker's certificate for ``hosts`` (DNS names or IP addresses), signed by ``ca``."""
    if not hosts:
        raise ConfigError("a broker certificate needs at least one host name")
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError("the broker CA key is not an ECDSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    start = _now(now)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - datetime.timedelta(minutes=5))
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return CertifiedKey(_pem(cert), _key_pem(key))


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _now(now: datetime.datetime | None) -> datetime.datetime:
    return now if now is not None else datetime.datetime.now(datetime.UTC)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
