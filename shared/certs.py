"""Development PKI: a CA, a server certificate and a client certificate, for TLS and mutual TLS.

For test and lab deployments. Production deployments should use certificates from their own CA.
Keys are EC P-256 and written with mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
FILES = ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cemsplit development"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _issue(subject: str, key, issuer_name: x509.Name, issuer_key, days: int, *, ca: bool, usage=None, hosts=None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def create_dev_pki(directory: Path, hosts: list[str] | None = None, days: int = 365) -> dict[str, Path]:
    """Create ca.pem, server.pem and client.pem with their keys in directory.

    Args:
        directory: created if missing; existing certificate files are never overwritten.
        hosts: DNS names and IP addresses the server certificate is valid for, in addition to
            localhost, 127.0.0.1 and ::1.
        days: validity of every certificate.

    Raises:
        FileExistsError: one of the files already exists; names it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if (directory / name).exists():
            raise FileExistsError(f"{directory / name} already exists; choose another directory or remove the old files")
    all_hosts = list(dict.fromkeys([*DEFAULT_HOSTS, *(hosts or [])]))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("cemsplit development CA", ca_key, _name("cemsplit development CA"), ca_key, days, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(all_hosts[0], server_key, ca_cert.subject, ca_key, days, ca=False, usage=ExtendedKeyUsageOID.SERVER_AUTH, hosts=all_hosts)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue("cemsplit-client", client_key, ca_cert.subject, ca_key, days, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH)

    def key_bytes(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    outputs = {
        "ca.pem": (ca_cert.public_bytes(serialization.Encoding.PEM), False),
        "ca-key.pem": (key_bytes(ca_key), True),
        "server.pem": (server_cert.public_bytes(serialization.Encoding.PEM), False),
        "server-key.pem": (key_bytes(server_key), True),
        "client.pem": (client_cert.public_bytes(serialization.Encoding.PEM), False),
        "client-key.pem": (key_bytes(client_key), True),
    }
    paths = {}
    for name, (data, private) in outputs.items():
        _write(directory / name, data, private)
        paths[name] = directory / name
    return paths
