"""What a local broker needs to require SASL/SCRAM over TLS, as a locked-down cluster does: a certificate
authority of its own, the broker's certificate for 127.0.0.1 and localhost, and the SCRAM passwords.

Made once per data directory (``tls/``) with the ``cryptography`` package, so the tests and anyone
trying the engine against a secured cluster run one without a PKI or a Docker image
(``LocalKafka(sasl_ssl=True)``, tests/integration/test_sasl_ssl.py).
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

MECHANISM = "SCRAM-SHA-512"
BROKER_USER = "broker"  # the broker's own login, to itself (the inter-broker listener is SASL_SSL too)
CLIENT_USER = "stepstream"  # what the engine's services log in as


@dataclass(frozen=True, slots=True)
class LocalTls:
    """The files and passwords of one data directory's secured broker."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def broker_file(self) -> Path:
        """The broker's key and certificate chain, PEM, as Kafka's ``ssl.keystore.type=PEM`` reads it."""
        return self.directory / "broker.pem"

    def password(self, user: str) -> str:
        return (self.directory / f"{user}.password").read_text(encoding="utf-8").strip()

    def ensure(self) -> LocalTls:
        """Make the authority, the broker's certificate and the passwords, unless made before."""
        if self.broker_file.is_file() and self.ca_file.is_file():
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        ca_key, broker_key = _key(), _key()
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Stepstream local Kafka CA")])
        ca = (
            _builder(ca_name, ca_name, ca_key.public_key(), now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        broker_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        hosts = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        broker = (
            _builder(broker_name, ca_name, broker_key.public_key(), now)
            .add_extension(x509.SubjectAlternativeName(hosts), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        key_pem = broker_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        _private(self.broker_file, key_pem + broker.public_bytes(pem) + ca.public_bytes(pem))
        self.ca_file.write_bytes(ca.public_bytes(pem))
        for user in (BROKER_USER, CLIENT_USER):
            _private(self.directory / f"{user}.password", secrets.token_urlsafe(24).encode())
        return self


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: rsa.RSAPublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
    )


def _private(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    path.chmod(0o600)
