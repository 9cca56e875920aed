"""The local CA and the leaf certificates it signs.

The CA is name-constrained (critical NameConstraints: localhost, 127.0.0.0/8, ::1), so even a
leaked key cannot sign for a real website: clients that check constraints (OpenSSL, NSS, Chrome,
Firefox) refuse such a leaf. The minting side refuses anything outside those names too.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import stat
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proxy.errors import ProxyError
from proxy.names import is_dns_name, is_loopback_ip, is_under_localhost

log = logging.getLogger("proxy")

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
CA_LIFETIME = datetime.timedelta(days=3650)
# Short-lived leaves: nothing to revoke; re-minted a week before they expire.
LEAF_LIFETIME = datetime.timedelta(days=30)
LEAF_RENEW_BEFORE = datetime.timedelta(days=7)
PERMITTED_NAMES = ("localhost", "127.0.0.0/8", "::1/128")


class CertificateError(ProxyError):
    """The CA or a site's own certificate cannot be used; the message says how to fix it."""


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def is_local_tls_name(name: str) -> bool:
    """Return whether the CA may certify name: localhost, a *.localhost name, or a loopback IP.

    Look-alikes such as localhost.evil.com or evil-localhost are not local.
    """
    name = name.lower().rstrip(".")
    if is_loopback_ip(name.strip("[]")):  # 127.0.0.0/8 or ::1
        return True
    return is_under_localhost(name) and is_dns_name(name)


# ---------------------------------------------------------------- the CA


@dataclass(frozen=True)
class LocalCA:
    """The CA certificate and key, loaded from (or just written to) the certs folder."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: str
    key_path: str

    @property
    def fingerprint(self) -> str:
        return self.certificate.fingerprint(hashes.SHA256()).hex(":").upper()

    def permitted_names(self) -> list[str]:
        constraints = self.certificate.extensions.get_extension_for_class(x509.NameConstraints).value
        return [str(n.value) for n in constraints.permitted_subtrees or []]


def load_or_create_ca(certs_dir: str) -> tuple[LocalCA, bool]:
    """Return the CA in certs_dir and whether it was created just now.

    A key file that other users can read is refused: whoever reads it can mint certificates this
    machine trusts for every local name.
    """
    cert_path = os.path.join(certs_dir, CA_CERT_FILE)
    key_path = os.path.join(certs_dir, CA_KEY_FILE)
    if os.path.exists(key_path):
        return load_ca(cert_path, key_path), False
    return _create_ca(certs_dir, cert_path, key_path), True


def load_ca(cert_path: str, key_path: str) -> LocalCA:
    mode = stat.S_IMODE(os.stat(key_path).st_mode)
    if mode & 0o077:
        raise CertificateError(
            f"the CA key {key_path} can be read by other users (mode {mode:o}); anyone who reads it can make certificates "
            f"your browser trusts for local names. Run: chmod 600 {key_path}"
        )
    try:
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        with open(cert_path, "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
    except FileNotFoundError as exc:
        raise CertificateError(f"{exc.filename} is missing but {key_path} is there; remove both to make a new CA (then run `trust` again)") from None
    except ValueError as exc:
        raise CertificateError(f"cannot read the CA in {os.path.dirname(key_path)}: {exc}; remove {CA_CERT_FILE} and {CA_KEY_FILE} to make a new one") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key().public_numbers() != certificate.public_key().public_numbers():  # type: ignore[union-attr]
        raise CertificateError(f"{cert_path} does not belong to {key_path}; remove both to make a new CA (then run `trust` again)")
    if certificate.not_valid_after_utc < utc_now():
        raise CertificateError(
            f"the CA in {cert_path} expired on {certificate.not_valid_after_utc:%Y-%m-%d}; remove {CA_CERT_FILE} and {CA_KEY_FILE} to make a new one, then run `trust`"
        )
    return LocalCA(certificate, key, cert_path, key_path)


def _create_ca(certs_dir: str, cert_path: str, key_path: str) -> LocalCA:
    os.makedirs(certs_dir, mode=0o700, exist_ok=True)
    os.chmod(certs_dir, 0o700)  # the folder may come from a checkout with 0755
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "localhost-proxy"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"localhost-proxy local CA ({os.uname().nodename})"),
        ]
    )
    now = utc_now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[
                    x509.DNSName("localhost"),  # covers every *.localhost name
                    x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
                    x509.IPAddress(ipaddress.ip_network("::1/128")),
                ],
                excluded_subtrees=None,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    # The key's mode is right from its first byte: never a chmod after writing.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    with open(cert_path, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    log.info(
        "created a local CA in %s (fingerprint %s); run `localhost-proxy trust` so browsers accept it",
        certs_dir,
        certificate.fingerprint(hashes.SHA256()).hex(":").upper()[:23],
    )
    return LocalCA(certificate, key, cert_path, key_path)


# ---------------------------------------------------------------- leaves


def _san_for(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def mint_leaf(ca: LocalCA, names: list[str], *, now: datetime.datetime | None = None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Return a leaf certificate for names (the exact host, never a wildcard) and its key.

    EC P-256: an RSA key would take tens of milliseconds to generate inside the handshake.
    """
    now = now or utc_now()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + LEAF_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san_for(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return certificate, key
