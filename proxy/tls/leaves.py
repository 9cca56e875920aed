"""Server TLS contexts: one per SNI name, minted by the local CA on first use and cached; sites' own files.

Leaves are short-lived and renewed before they expire; the cache is bounded because a web page
can make a browser ask for endless random subdomains.
"""

from __future__ import annotations

import datetime
import os
import ssl
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from proxy.tls.ca import LEAF_RENEW_BEFORE, CertificateError, LocalCA, is_local_tls_name, mint_leaf, utc_now

# A web page can make a browser ask for endless random subdomains: keep memory bounded.
LEAF_CACHE_SIZE = 1000


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

    def __init__(self, ca: LocalCA, *, size: int = LEAF_CACHE_SIZE, clock: Callable[[], datetime.datetime] = utc_now) -> None:
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
