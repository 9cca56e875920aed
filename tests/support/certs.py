"""Certificates for the tests: self-signed ones as dev servers make them, the names a certificate
covers, and a client context that accepts any certificate (to see what a server presents).
"""

from __future__ import annotations

import ipaddress
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed_files(folder: Path, *names: str) -> tuple[Path, Path]:
    """Return (cert, key) PEM files of a fresh self-signed certificate for names, as dev servers and
    users without mkcert make them. Names default to 127.0.0.1 and localhost."""
    names = names or ("127.0.0.1", "localhost")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[-1])])
    now = datetime.now(UTC)
    san: list[x509.GeneralName] = []
    for name in names:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            san.append(x509.DNSName(name))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / f"{names[-1]}.pem", folder / f"{names[-1]}-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_file, key_file


def self_signed_context(folder: Path) -> ssl.SSLContext:
    """Return a server context with a fresh self-signed certificate for 127.0.0.1, as dev servers make."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*self_signed_files(folder))
    return context


def san_values(certificate: x509.Certificate) -> list[str]:
    """Return the names and addresses in the certificate's subjectAltName, as text, in order."""
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name.value) for name in san]


def trusting_nothing() -> ssl.SSLContext:
    """A client that accepts any certificate, to see what a server would present."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
