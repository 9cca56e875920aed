"""The local CA and the certificates it mints, per SNI name, at handshake time.

The CA is name-constrained (critical NameConstraints: localhost, 127.0.0.0/8, ::1), so even a
leaked key cannot sign for a real website: clients that check constraints (OpenSSL, NSS, Chrome,
Firefox) refuse such a leaf. The minting side refuses anything outside those names too.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import stat
import tempfile
from collections import OrderedDict
from collections.abc import Callable
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
# A web page can make a browser ask for endless random subdomains: keep memory bounded.
LEAF_CACHE_SIZE = 1000
PERMITTED_NAMES = ("localhost", "127.0.0.0/8", "::1/128")


class CertificateError(ProxyError):
    """The CA or a site's own certificate cannot be used; the message says how to fix it."""


def _now() -> datetime.datetime:
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
        return _load_ca(cert_path, key_path), False
    return _create_ca(certs_dir, cert_path, key_path), True


def _load_ca(cert_path: str, key_path: str) -> LocalCA:
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
    if certificate.not_valid_after_utc < _now():
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
    now = _now()
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
    now = now or _now()
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


class AlertingSSLObject(ssl.SSLObject):
    """An SSLObject whose refusal alert reaches the client.

    asyncio closes the transport as soon as a handshake step raises, dropping the bytes OpenSSL
    queued: the unrecognized_name alert never leaves and the client sees a bare reset. Reporting
    "want read" instead makes asyncio flush the alert first; the client then hangs up.
    """

    is_refused = False  # set by the SNI callback

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except ssl.SSLError:
            if self.is_refused:
                raise ssl.SSLWantReadError("refused; the alert is on its way") from None
            raise


def new_server_context() -> ssl.SSLContext:
    """Return a server context with modern settings and no certificate yet."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])  # the listener speaks HTTP/1.1 (WebSockets included)
    return context


def context_from_pem(chain_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """Return a server context holding a certificate chain and key given as PEM bytes.

    Python's ssl loads certificates only from paths: the PEM goes through an anonymous
    in-memory file where the OS has one (Linux memfd), else a 0600 temp file removed at once.
    """
    context = new_server_context()
    data = key_pem + chain_pem
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("leaf")
        try:
            os.write(fd, data)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return context
    fd, path = tempfile.mkstemp(suffix=".pem")
    try:
        os.write(fd, data)
        os.close(fd)
        context.load_cert_chain(path)
    finally:
        os.unlink(path)
    return context


@dataclass
class _Minted:
    context: ssl.SSLContext
    not_after: datetime.datetime


class LeafCache:
    """Per-host server contexts minted by the CA, in a bounded LRU, renewed before they expire."""

    def __init__(self, ca: LocalCA, *, size: int = LEAF_CACHE_SIZE, clock: Callable[[], datetime.datetime] = _now) -> None:
        self.ca = ca
        self._size = size
        self._clock = clock
        self._entries: OrderedDict[str, _Minted] = OrderedDict()
        self.minted = 0  # how many leaves were made, for logs and tests

    def context_for(self, name: str) -> ssl.SSLContext:
        """Return the context for one local name (see is_local_tls_name), minting it if needed."""
        name = name.lower().rstrip(".")
        if not is_local_tls_name(name):
            raise CertificateError(f"the local CA only signs localhost, *.localhost and loopback addresses, not {name}")
        return self._context(name, [name])

    def default_context(self) -> ssl.SSLContext:
        """Return the context for a handshake without SNI: localhost, 127.0.0.1 and ::1."""
        return self._context("", ["localhost", "127.0.0.1", "::1"])

    def _context(self, key: str, names: list[str]) -> ssl.SSLContext:
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and entry.not_after - now > LEAF_RENEW_BEFORE:
            self._entries.move_to_end(key)
            return entry.context
        certificate, leaf_key = mint_leaf(self.ca, names, now=now)
        chain = certificate.public_bytes(serialization.Encoding.PEM) + self.ca.certificate.public_bytes(serialization.Encoding.PEM)
        key_pem = leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        context = context_from_pem(chain, key_pem)
        self._entries[key] = _Minted(context, certificate.not_valid_after_utc)
        self._entries.move_to_end(key)
        self.minted += 1
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return context


def context_from_files(cert_file: str, key_file: str) -> ssl.SSLContext:
    """Return a server context for a site that brings its own certificate (e.g. from mkcert)."""
    context = new_server_context()
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"cannot load the certificate {cert_file} with key {key_file}: {exc}") from None
    return context
