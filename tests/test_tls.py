"""The local CA, leaf minting and the leaf cache (proxy/tls.py), without the proxy process.

Everything is written under tmp_path. Handshakes here run through in-memory BIOs, so the
certificate a context would present is read exactly as a client receives it, with no sockets.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import stat
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proxy.errors import ProxyError
from proxy.tls.ca import CA_CERT_FILE, CA_KEY_FILE, CertificateError, LocalCA, is_local_tls_name, load_or_create_ca, mint_leaf
from proxy.tls.leaves import LeafCache, context_from_files, context_from_pem
from tests.support.certs import san_values, self_signed_files, trusting_nothing

UTC = datetime.UTC


# ---------------------------------------------------------------- helpers


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    """A fresh CA in tmp_path/certs."""
    return load_or_create_ca(str(tmp_path / "certs"))[0]


def presented_certificate(server: ssl.SSLContext, cafile: str | None, server_hostname: str | None) -> x509.Certificate:
    """Return the certificate server presents in a full handshake over memory BIOs.

    The client trusts only cafile (None: verify nothing); server_hostname None sends no SNI and
    skips the name check.
    """
    client = trusting_nothing() if cafile is None else ssl.create_default_context(cafile=cafile)
    if server_hostname is None:
        client.check_hostname = False  # still CERT_REQUIRED with a cafile: the chain must verify
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):  # a TLS 1.3 handshake takes a few round trips; never loop forever
        for name, side, out, peer_in in (("client", client_side, c_out, s_in), ("server", server_side, s_out, c_in)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            if data := out.read():
                peer_in.write(data)
        if all(done.values()):
            break
    assert all(done.values()), "the in-memory handshake did not finish"
    der = client_side.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


# ---------------------------------------------------------------- which names are local


@pytest.mark.parametrize(
    "name",
    [
        "localhost",
        "LOCALHOST",
        "localhost.",
        "app1.localhost",
        "a.preview.localhost",
        "my_app.localhost",
        "app-1.localhost",
        "127.0.0.1",
        "127.9.8.7",
        "::1",
        "[::1]",
    ],
)
def test_local_names_may_be_certified(name: str) -> None:
    assert is_local_tls_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "localhost.evil.com",
        "app1.localhost.evil.com",
        "evil-localhost",
        "evillocalhost",
        "localhost.com",
        "localhostx",
        "example.com",
        "myapp.test",
        "*.localhost",
        "a..localhost",
        ".localhost",
        "-bad.localhost",
        "a b.localhost",
        "10.0.0.1",
        "0.0.0.0",
        "::",
        "::2",
        "::ffff:127.0.0.1",
        "",
    ],
)
def test_other_names_and_look_alikes_are_not_local(name: str) -> None:
    assert not is_local_tls_name(name)


# ---------------------------------------------------------------- the CA


def test_new_ca_key_is_0600_and_folder_0700(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    ca, created = load_or_create_ca(str(certs))
    assert created
    assert stat.S_IMODE(os.stat(certs).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(certs / CA_KEY_FILE).st_mode) == 0o600
    assert (certs / CA_CERT_FILE).read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY" in (certs / CA_KEY_FILE).read_bytes()
    assert b"PRIVATE KEY" not in (certs / CA_CERT_FILE).read_bytes()
    assert ca.cert_path == str(certs / CA_CERT_FILE) and ca.key_path == str(certs / CA_KEY_FILE)


def test_key_file_is_0600_even_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        load_or_create_ca(str(tmp_path / "certs"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "certs" / CA_KEY_FILE).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "certs").st_mode) == 0o700


def test_existing_open_certs_folder_is_closed_to_0700(tmp_path: Path) -> None:
    """A certs folder that came from a checkout with 0755 is tightened when the CA is created in it."""
    certs = tmp_path / "certs"
    certs.mkdir(mode=0o755)
    os.chmod(certs, 0o755)
    load_or_create_ca(str(certs))
    assert stat.S_IMODE(os.stat(certs).st_mode) == 0o700


def test_ca_is_a_ten_year_name_constrained_ca(ca: LocalCA) -> None:
    certificate = ca.certificate
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert datetime.timedelta(days=3649) <= lifetime <= datetime.timedelta(days=3652)
    assert certificate.not_valid_before_utc <= datetime.datetime.now(UTC) < certificate.not_valid_after_utc

    basic = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca is True
    assert basic.value.path_length == 0

    constraints = certificate.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert constraints.value.excluded_subtrees is None
    assert set(constraints.value.permitted_subtrees or []) == {
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
        x509.IPAddress(ipaddress.ip_network("::1/128")),
    }
    assert len(constraints.value.permitted_subtrees or []) == 3

    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
    assert certificate.subject == certificate.issuer
    certificate.verify_directly_issued_by(certificate)  # self-signed, with its own key


def test_ca_describes_its_permitted_names_and_fingerprint(ca: LocalCA) -> None:
    assert ca.permitted_names() == ["localhost", "127.0.0.0/8", "::1/128"]
    assert ca.fingerprint == ca.certificate.fingerprint(hashes.SHA256()).hex(":").upper()
    assert len(ca.fingerprint) == 32 * 3 - 1


def test_ca_is_reused_not_recreated(tmp_path: Path) -> None:
    first, created_first = load_or_create_ca(str(tmp_path / "certs"))
    key_before = (tmp_path / "certs" / CA_KEY_FILE).read_bytes()
    second, created_second = load_or_create_ca(str(tmp_path / "certs"))
    assert created_first and not created_second
    assert second.fingerprint == first.fingerprint
    assert (tmp_path / "certs" / CA_KEY_FILE).read_bytes() == key_before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660], ids=oct)
def test_ca_key_readable_by_others_is_refused_with_the_chmod_fix(tmp_path: Path, mode: int) -> None:
    certs = tmp_path / "certs"
    load_or_create_ca(str(certs))
    os.chmod(certs / CA_KEY_FILE, mode)
    with pytest.raises(CertificateError) as caught:
        load_or_create_ca(str(certs))
    message = str(caught.value)
    assert "chmod 600" in message
    assert str(certs / CA_KEY_FILE) in message
    assert isinstance(caught.value, ProxyError)


def test_ca_key_mode_0400_is_accepted(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    first, _ = load_or_create_ca(str(certs))
    os.chmod(certs / CA_KEY_FILE, 0o400)
    assert load_or_create_ca(str(certs))[0].fingerprint == first.fingerprint


def test_ca_key_without_its_certificate_is_refused(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    load_or_create_ca(str(certs))
    (certs / CA_CERT_FILE).unlink()
    with pytest.raises(CertificateError, match="missing"):
        load_or_create_ca(str(certs))


def test_ca_certificate_of_another_key_is_refused(tmp_path: Path) -> None:
    load_or_create_ca(str(tmp_path / "one"))
    load_or_create_ca(str(tmp_path / "two"))
    (tmp_path / "one" / CA_CERT_FILE).write_bytes((tmp_path / "two" / CA_CERT_FILE).read_bytes())
    with pytest.raises(CertificateError, match="does not belong"):
        load_or_create_ca(str(tmp_path / "one"))


def test_unreadable_ca_files_are_refused_without_a_traceback(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    load_or_create_ca(str(certs))
    (certs / CA_CERT_FILE).write_text("not a certificate\n")
    with pytest.raises(CertificateError, match="cannot read the CA"):
        load_or_create_ca(str(certs))


# ---------------------------------------------------------------- leaves


def test_leaf_is_p256_short_lived_for_the_exact_name(ca: LocalCA) -> None:
    now = datetime.datetime.now(UTC)
    leaf, key = mint_leaf(ca, ["a.preview.localhost"], now=now)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    public = leaf.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= datetime.timedelta(days=30, hours=1)
    assert leaf.not_valid_after_utc - now <= datetime.timedelta(days=30)
    assert leaf.not_valid_before_utc <= now
    assert san_values(leaf) == ["a.preview.localhost"]  # the exact host, never *.preview.localhost
    assert leaf.issuer == ca.certificate.subject
    leaf.verify_directly_issued_by(ca.certificate)
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ExtendedKeyUsageOID.SERVER_AUTH in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "a.preview.localhost"


def test_leaf_for_ip_names_uses_ip_entries(ca: LocalCA) -> None:
    leaf, _ = mint_leaf(ca, ["localhost", "127.0.0.1", "::1"])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]


def test_every_leaf_has_its_own_key_and_serial(ca: LocalCA) -> None:
    one, key_one = mint_leaf(ca, ["app1.localhost"])
    two, key_two = mint_leaf(ca, ["app1.localhost"])
    assert one.serial_number != two.serial_number
    assert key_one.public_key().public_numbers() != key_two.public_key().public_numbers()


def test_minted_leaf_verifies_with_only_the_ca_as_trust_root(ca: LocalCA) -> None:
    leaves = LeafCache(ca)
    presented = presented_certificate(leaves.context_for("app1.localhost"), ca.cert_path, "app1.localhost")
    assert san_values(presented) == ["app1.localhost"]


def test_handshake_without_sni_gets_localhost_and_both_loopback_ips(ca: LocalCA) -> None:
    leaves = LeafCache(ca)
    presented = presented_certificate(leaves.default_context(), ca.cert_path, None)
    assert sorted(san_values(presented)) == sorted(["localhost", "127.0.0.1", "::1"])
    # And it passes a real hostname check for the IP, as https://127.0.0.1:7443/ does.
    presented_certificate(leaves.default_context(), ca.cert_path, "127.0.0.1")


# ---------------------------------------------------------------- the cache


class Clock:
    """A settable clock for LeafCache."""

    def __init__(self, now: datetime.datetime) -> None:
        self.now = now

    def __call__(self) -> datetime.datetime:
        return self.now


def test_same_name_gets_the_same_context_and_certificate(ca: LocalCA) -> None:
    leaves = LeafCache(ca)
    first = leaves.context_for("app1.localhost")
    assert leaves.context_for("app1.localhost") is first
    assert leaves.context_for("APP1.localhost.") is first  # case and trailing dot do not make a new leaf
    assert leaves.minted == 1
    one = presented_certificate(first, ca.cert_path, "app1.localhost")
    two = presented_certificate(leaves.context_for("app1.localhost"), ca.cert_path, "app1.localhost")
    assert one == two


def test_different_names_get_different_leaves(ca: LocalCA) -> None:
    leaves = LeafCache(ca)
    assert leaves.context_for("a.localhost") is not leaves.context_for("b.localhost")
    assert leaves.minted == 2


def test_cache_is_lru_bounded_fourth_name_evicts_the_least_recent(ca: LocalCA) -> None:
    leaves = LeafCache(ca, size=3)
    a = leaves.context_for("a.localhost")
    b = leaves.context_for("b.localhost")
    c = leaves.context_for("c.localhost")
    assert leaves.context_for("a.localhost") is a  # a is now the most recent; b the least
    assert leaves.minted == 3
    leaves.context_for("d.localhost")
    assert leaves.minted == 4
    assert leaves.context_for("a.localhost") is a
    assert leaves.context_for("c.localhost") is c
    assert leaves.minted == 4  # a and c were still cached
    assert leaves.context_for("b.localhost") is not b  # b was evicted: minted again
    assert leaves.minted == 5


def test_cache_never_holds_more_than_its_size(ca: LocalCA) -> None:
    leaves = LeafCache(ca, size=3)
    for i in range(10):
        leaves.context_for(f"n{i}.localhost")
    assert leaves.minted == 10
    for i in range(7, 10):
        leaves.context_for(f"n{i}.localhost")
    assert leaves.minted == 10  # the last three stayed
    leaves.context_for("n0.localhost")
    assert leaves.minted == 11


def test_leaf_is_renewed_a_week_before_it_expires(ca: LocalCA) -> None:
    start = datetime.datetime.now(UTC).replace(microsecond=0)
    clock = Clock(start)
    leaves = LeafCache(ca, clock=clock)
    first = leaves.context_for("app1.localhost")
    not_after = presented_certificate(first, ca.cert_path, "app1.localhost").not_valid_after_utc
    assert not_after <= start + datetime.timedelta(days=30)

    clock.now = not_after - datetime.timedelta(days=7, minutes=1)
    assert leaves.context_for("app1.localhost") is first
    assert leaves.minted == 1

    clock.now = not_after - datetime.timedelta(days=7) + datetime.timedelta(seconds=1)
    renewed = leaves.context_for("app1.localhost")
    assert renewed is not first
    assert leaves.minted == 2
    assert renewed is leaves.context_for("app1.localhost")  # and the new one is cached again


def test_renewed_leaf_is_dated_from_the_injected_clock(ca: LocalCA) -> None:
    start = datetime.datetime.now(UTC).replace(microsecond=0)
    clock = Clock(start)
    leaves = LeafCache(ca, clock=clock)
    leaves.context_for("app1.localhost")
    clock.now = start + datetime.timedelta(days=24)
    renewed = leaves.context_for("app1.localhost")
    leaf = presented_certificate(renewed, None, "app1.localhost")  # dated in the future: read, not verified
    assert leaf.not_valid_after_utc == clock.now + datetime.timedelta(days=30)


@pytest.mark.parametrize("name", ["example.com", "localhost.evil.com", "evil-localhost", "10.0.0.1"])
def test_cache_refuses_to_mint_for_names_outside_the_ca(ca: LocalCA, name: str) -> None:
    """Defence in depth: the module promises the minting side refuses non-local names too."""
    leaves = LeafCache(ca)
    with pytest.raises((ProxyError, ValueError)):
        leaves.context_for(name)
    assert leaves.minted == 0


# ---------------------------------------------------------------- contexts from PEM and files


def test_site_certificate_files_make_a_context_that_presents_them(tmp_path: Path) -> None:
    cert_file, key_file = self_signed_files(tmp_path, "myapp.test")
    context = context_from_files(str(cert_file), str(key_file))
    presented = presented_certificate(context, str(cert_file), "myapp.test")
    assert presented == x509.load_pem_x509_certificate(cert_file.read_bytes())


def test_site_certificate_with_the_wrong_key_is_a_certificate_error(tmp_path: Path) -> None:
    cert_file, _ = self_signed_files(tmp_path, "myapp.test")
    _, other_key = self_signed_files(tmp_path, "other.test")
    with pytest.raises(CertificateError, match="cannot load the certificate"):
        context_from_files(str(cert_file), str(other_key))


def test_missing_site_certificate_is_a_certificate_error(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match=str(tmp_path / "nope.pem")):
        context_from_files(str(tmp_path / "nope.pem"), str(tmp_path / "nope-key.pem"))


def test_context_from_pem_leaves_no_file_behind(tmp_path: Path, ca: LocalCA, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where a fallback temp file would go
    leaf, key = mint_leaf(ca, ["app1.localhost"])
    chain = leaf.public_bytes(serialization.Encoding.PEM) + ca.certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    context = context_from_pem(chain, key_pem)
    assert presented_certificate(context, ca.cert_path, "app1.localhost") == leaf
    assert list((tmp_path / "tmp").iterdir()) == []
