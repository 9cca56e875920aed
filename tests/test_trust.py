"""trust/untrust: real NSS databases in tmp_path, exact commands for the system stores.

Nothing here touches this machine's system trust store or the real ~/.pki: NSS tests use
databases made with `certutil -N` under tmp_path; system-store plans are only planned, printed
and refused, never run.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.errors import ProxyError
from proxy.tls.ca import LocalCA, load_or_create_ca, mint_leaf
from proxy.tls.trust import (
    CaCert,
    Machine,
    NeedsRootError,
    NssDb,
    Step,
    TrustPlan,
    client_env_lines,
    find_nssdbs,
    load_ca,
    loopback_handshake,
    plan_trust,
    plan_untrust,
    run_plan,
    survey_machine,
)
from tests.support.system import require_tool


def require_nss_tools() -> None:
    for tool in ("certutil", "vfychain"):
        require_tool(tool, "libnss3-tools")


@dataclass
class TestCa:
    __test__ = False  # not a test class, despite the name

    pem_path: Path
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    local: LocalCA


def make_ca(folder: Path) -> TestCa:
    """Return a fresh CA made by the product's own code, in folder."""
    ca, _ = load_or_create_ca(str(folder))
    return TestCa(Path(ca.cert_path), ca.certificate, ca.key, ca)


def sign_leaf(ca: TestCa, hostname: str, folder: Path) -> tuple[Path, Path]:
    """Return (cert, key) PEM files for a TLS server leaf for hostname, signed by ca (any name: a leaked key's view)."""
    certificate, key = mint_leaf(ca.local, [hostname])
    cert_path, key_path = folder / f"{hostname}.pem", folder / f"{hostname}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def make_nssdb(folder: Path) -> Path:
    """Return a new empty NSS database folder, as Chrome creates ~/.pki/nssdb."""
    folder.mkdir(parents=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{folder}", "--empty-password"], check=True, capture_output=True, timeout=30)
    return folder


def nss_validates(db: Path, leaf: Path) -> bool:
    """Ask NSS itself (vfychain, SSL server usage) whether the leaf validates in db."""
    result = subprocess.run(["vfychain", "-d", f"sql:{db}", "-u", "1", "-a", str(leaf)], capture_output=True, timeout=30, check=False)
    return result.returncode == 0


def nicknames(db: Path) -> list[str]:
    result = subprocess.run(["certutil", "-L", "-d", f"sql:{db}"], check=True, capture_output=True, text=True, timeout=30)
    return [line.rstrip().rsplit(None, 1)[0].rstrip() for line in result.stdout.splitlines()[4:] if line.strip()]


class Output(list[str]):
    """Collects run_plan's lines, as cli.py would print them."""

    def __call__(self, line: str) -> None:
        self.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self)


@pytest.fixture
def ca(tmp_path: Path) -> TestCa:
    return make_ca(tmp_path / "certs")


@pytest.fixture
def nssdb(tmp_path: Path) -> Path:
    require_nss_tools()
    return make_nssdb(tmp_path / "nssdb")


def trust_nss(
    ca_path: Path, db: Path, *, leaf: Path | None = None, dry_run: bool = False, run_as: tuple[int, int] | None = None
) -> tuple[int, Output, TrustPlan]:
    ca = load_ca(str(ca_path))
    plan = plan_trust(
        ca,
        survey_machine(ca, platform="debian", home="/nonexistent", nssdbs=[str(db)], include_system=False),
        include_system=False,
        leaf_pem_path=str(leaf) if leaf else None,
    )
    out = Output()
    return run_plan(plan, dry_run=dry_run, out=out, is_root=False, run_as=run_as), out, plan


def untrust_nss(ca_path: Path, db: Path, *, dry_run: bool = False) -> tuple[int, Output, TrustPlan]:
    ca = load_ca(str(ca_path))
    plan = plan_untrust(ca, survey_machine(ca, platform="debian", home="/nonexistent", nssdbs=[str(db)], include_system=False), include_system=False)
    out = Output()
    return run_plan(plan, dry_run=dry_run, out=out, is_root=False), out, plan


# --- NSS databases, for real ---------------------------------------------------------------


def test_trust_makes_nss_validate_a_leaf_and_untrust_undoes_it(ca: TestCa, nssdb: Path, tmp_path: Path) -> None:
    leaf, _ = sign_leaf(ca, "app1.localhost", tmp_path)
    assert not nss_validates(nssdb, leaf)

    code, out, plan = trust_nss(ca.pem_path, nssdb, leaf=leaf)
    assert code == 0, out.text
    assert nss_validates(nssdb, leaf)
    assert nicknames(nssdb) == [plan.ca.nickname]
    assert f"NSS database {nssdb}: verified: a leaf certificate the CA signed validates" in out.text
    assert "export NODE_EXTRA_CA_CERTS=" in out.text

    code, out, _ = untrust_nss(ca.pem_path, nssdb)
    assert code == 0, out.text
    assert not nss_validates(nssdb, leaf)
    assert nicknames(nssdb) == []
    assert f"NSS database {nssdb}: deleted {plan.ca.nickname!r}" in out
    assert f"NSS database {nssdb}: verified: the CA no longer validates as a TLS certificate authority (vfychain)" in out


def test_nss_enforces_the_name_constraints_of_a_trusted_ca(ca: TestCa, nssdb: Path, tmp_path: Path) -> None:
    """Trusting the CA does not let it vouch for public names: its constraints hold in NSS."""
    outside, _ = sign_leaf(ca, "example.com", tmp_path)
    assert trust_nss(ca.pem_path, nssdb)[0] == 0
    assert not nss_validates(nssdb, outside)


def test_trust_twice_adds_once_and_still_verifies(ca: TestCa, nssdb: Path) -> None:
    assert trust_nss(ca.pem_path, nssdb)[0] == 0
    code, out, plan = trust_nss(ca.pem_path, nssdb)
    assert code == 0, out.text
    assert [s.argv[1] for s in plan.steps] == ["-d"]  # only the vfychain check, no certutil -A
    assert f"NSS database {nssdb} already has the CA as {plan.ca.nickname!r}" in out
    assert nicknames(nssdb) == [plan.ca.nickname]


def test_untrust_where_the_ca_is_absent_removes_nothing(ca: TestCa, nssdb: Path) -> None:
    for _ in range(2):  # once on a fresh database, once after trust + untrust
        code, out, plan = untrust_nss(ca.pem_path, nssdb)
        assert code == 0, out.text
        assert plan.steps == ()
        assert f"NSS database {nssdb}: the CA is not there, nothing to remove" in out
        assert trust_nss(ca.pem_path, nssdb)[0] == 0
        assert untrust_nss(ca.pem_path, nssdb)[0] == 0


def test_untrust_removes_only_this_ca_not_an_earlier_one(tmp_path: Path, nssdb: Path) -> None:
    """Two CAs (a regenerated certs folder) get two nicknames; untrust of one leaves the other."""
    old, new = make_ca(tmp_path / "old"), make_ca(tmp_path / "new")
    old_leaf, _ = sign_leaf(old, "app1.localhost", tmp_path / "old")
    new_leaf, _ = sign_leaf(new, "app1.localhost", tmp_path / "new")
    old_ca, new_ca = load_ca(str(old.pem_path)), load_ca(str(new.pem_path))
    assert old_ca.nickname != new_ca.nickname
    assert old_ca.nickname.startswith("localhost-proxy CA ") and len(old_ca.nickname.split()[-1]) == 16

    assert trust_nss(old.pem_path, nssdb)[0] == 0
    assert trust_nss(new.pem_path, nssdb)[0] == 0
    assert sorted(nicknames(nssdb)) == sorted([old_ca.nickname, new_ca.nickname])

    code, out, _ = untrust_nss(new.pem_path, nssdb)
    assert code == 0, out.text
    assert nicknames(nssdb) == [old_ca.nickname]
    assert nss_validates(nssdb, old_leaf) and not nss_validates(nssdb, new_leaf)
    assert f"certutil -D -d sql:{nssdb} -n '{old_ca.nickname}'" in out.text  # said how to remove the old one


def test_dry_run_prints_the_exact_commands_and_changes_nothing(ca: TestCa, nssdb: Path) -> None:
    code, out, plan = trust_nss(ca.pem_path, nssdb, dry_run=True)
    assert code == 0
    certutil, vfychain = shutil.which("certutil"), shutil.which("vfychain")
    assert f"{certutil} -A -d sql:{nssdb} -t C,, -n '{plan.ca.nickname}' -i {ca.pem_path}" in out
    assert f"{vfychain} -d sql:{nssdb} -u 3 -a {ca.pem_path}" in out
    assert nicknames(nssdb) == []

    assert trust_nss(ca.pem_path, nssdb)[0] == 0
    code, out, plan = untrust_nss(ca.pem_path, nssdb, dry_run=True)
    assert code == 0
    assert f"{certutil} -D -d sql:{nssdb} -n '{plan.ca.nickname}'" in out
    assert nicknames(nssdb) == [plan.ca.nickname]


def test_finds_chrome_and_every_firefox_profile_under_home(tmp_path: Path) -> None:
    require_nss_tools()
    home = tmp_path / "home"
    chrome = make_nssdb(home / ".pki" / "nssdb")
    firefox = [make_nssdb(home / ".mozilla" / "firefox" / name) for name in ("abcd.default-release", "efgh.work")]
    snap = make_nssdb(home / "snap" / "firefox" / "common" / ".mozilla" / "firefox" / "ijkl.default")
    (home / ".mozilla" / "firefox" / "old.profile").mkdir()  # cert8.db era or never started: no cert9.db
    (home / ".mozilla" / "firefox" / "profiles.ini").write_text("[General]\n")
    assert find_nssdbs(str(home), "debian") == [str(p) for p in (chrome, *firefox, snap)]


def test_nssdb_without_cert9_db_is_a_user_error(ca: TestCa, tmp_path: Path) -> None:
    with pytest.raises(ProxyError, match=r"no cert9.db there; create an empty database with: certutil -N -d sql:"):
        survey_machine(load_ca(str(ca.pem_path)), platform="debian", home=str(tmp_path), nssdbs=[str(tmp_path)], include_system=False)


def test_missing_ca_file_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(ProxyError, match=r"no CA certificate at .*start `localhost-proxy run` once"):
        load_ca(str(tmp_path / "ca.pem"))


# --- System stores: planned and printed, never run ------------------------------------------

CA_PATH = "/home/me/.local/share/localhost-proxy/certs/ca.pem"
FAKE_CA = CaCert(CA_PATH, b"der", "0123456789abcdef" + "0" * 48, "AB" * 20)
NICK = "localhost-proxy CA 0123456789abcdef"
CHROME = "/home/me/.pki/nssdb"


@pytest.mark.parametrize(
    ("platform", "commands"),
    [
        (
            "debian",
            [
                f"install -m 0644 {CA_PATH} /usr/local/share/ca-certificates/localhost-proxy-0123456789abcdef.crt",
                "update-ca-certificates",
            ],
        ),
        (
            "fedora",
            [
                f"install -m 0644 {CA_PATH} /etc/pki/ca-trust/source/anchors/localhost-proxy-0123456789abcdef.pem",
                "update-ca-trust extract",
            ],
        ),
        (
            "macos",
            [
                f"security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {CA_PATH}",
                f"security verify-cert -c {CA_PATH}",
            ],
        ),
    ],
    ids=["debian", "fedora", "macos"],
)
def test_trust_plan_for_the_system_store(platform: str, commands: list[str]) -> None:
    machine = Machine(platform, nssdbs=(NssDb(CHROME, has_ca=False),))
    plan = plan_trust(FAKE_CA, machine)
    system = [s for s in plan.steps if not s.is_users]
    assert [" ".join(s.argv) for s in system if s.argv] == commands
    assert all(s.needs_root for s in system if s.expect_valid is None)
    assert system[-1].expect_valid is True  # and then it checks
    nss = [s.argv for s in plan.steps if s.is_users]
    assert nss == [
        ("certutil", "-A", "-d", f"sql:{CHROME}", "-t", "C,,", "-n", NICK, "-i", CA_PATH),
        ("vfychain", "-d", f"sql:{CHROME}", "-u", "3", "-a", CA_PATH),
    ]


@pytest.mark.parametrize(
    ("platform", "commands"),
    [
        ("debian", ["rm -f /usr/local/share/ca-certificates/localhost-proxy-0123456789abcdef.crt", "update-ca-certificates"]),
        ("fedora", ["rm -f /etc/pki/ca-trust/source/anchors/localhost-proxy-0123456789abcdef.pem", "update-ca-trust extract"]),
        ("macos", [f"security remove-trusted-cert -d {CA_PATH}", f"security delete-certificate -Z {'AB' * 20} /Library/Keychains/System.keychain"]),
    ],
    ids=["debian", "fedora", "macos"],
)
def test_untrust_plan_for_the_system_store(platform: str, commands: list[str]) -> None:
    machine = Machine(platform, nssdbs=(NssDb(CHROME, has_ca=True),), system_has_ca=True)
    plan = plan_untrust(FAKE_CA, machine)
    assert [" ".join(s.argv) for s in plan.steps if s.argv and not s.is_users] == commands
    assert next(s.argv for s in plan.steps if s.is_users) == ("certutil", "-D", "-d", f"sql:{CHROME}", "-n", NICK)


def test_untrust_skips_a_system_store_without_the_ca() -> None:
    plan = plan_untrust(FAKE_CA, Machine("debian", system_has_ca=False))
    assert plan.steps == ()
    assert "the system store: the CA is not there, nothing to remove" in plan.notes


def test_trust_skips_root_steps_when_the_system_store_is_current() -> None:
    """A second `trust` needs no sudo: the anchor is there and already in the bundle, only the check runs."""
    plan = plan_trust(FAKE_CA, Machine("debian", system_is_current=True))
    assert [(s.argv, s.needs_root, s.expect_valid) for s in plan.steps] == [((), False, True)]


def test_no_system_plans_no_root_steps() -> None:
    plan = plan_trust(FAKE_CA, Machine("debian", nssdbs=(NssDb(CHROME, has_ca=False),)), include_system=False)
    assert not any(s.needs_root for s in plan.steps)
    assert plan.system_bundle is None


def test_unknown_platform_asks_for_no_system() -> None:
    with pytest.raises(ProxyError, match="pass --no-system"):
        plan_trust(FAKE_CA, Machine("unknown"))


def test_without_root_nothing_runs_and_the_message_says_sudo(ca: TestCa, nssdb: Path) -> None:
    ca_cert = load_ca(str(ca.pem_path))
    machine = survey_machine(ca_cert, platform="debian", home="/nonexistent", nssdbs=[str(nssdb)], include_system=False)
    plan = plan_trust(ca_cert, machine)  # system store included: planned, and must be refused
    with pytest.raises(NeedsRootError) as raised:
        run_plan(plan, dry_run=False, out=Output(), is_root=False, sudo_command="sudo /venv/bin/localhost-proxy trust")
    message = str(raised.value)
    assert "run with sudo: sudo /venv/bin/localhost-proxy trust" in message
    assert "--no-system" in message
    assert f"  install -m 0644 {ca_cert.path} /usr/local/share/ca-certificates/{ca_cert.anchor_name}.crt" in message
    assert "  update-ca-certificates" in message
    assert nicknames(nssdb) == []  # refused before the NSS step too


def test_dry_run_without_root_prefixes_sudo_only_on_root_steps() -> None:
    out = Output()
    plan = plan_trust(FAKE_CA, Machine("debian", nssdbs=(NssDb(CHROME, has_ca=False),)))
    assert run_plan(plan, dry_run=True, out=out, is_root=False) == 0
    assert f"sudo install -m 0644 {CA_PATH} /usr/local/share/ca-certificates/localhost-proxy-0123456789abcdef.crt" in out
    assert "sudo update-ca-certificates" in out
    assert f"certutil -A -d sql:{CHROME} -t C,, -n '{NICK}' -i {CA_PATH}" in out
    assert "export REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt" in out.text


# --- The system check: a real handshake on loopback ------------------------------------------


def server_context(ca: TestCa, hostname: str, folder: Path) -> ssl.SSLContext:
    cert, key = sign_leaf(ca, hostname, folder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def test_handshake_passes_with_a_client_that_trusts_the_ca(ca: TestCa, tmp_path: Path) -> None:
    trusting = ssl.create_default_context(cafile=str(ca.pem_path))
    loopback_handshake(server_context(ca, "app1.localhost", tmp_path), "app1.localhost", trusting)


def test_handshake_fails_against_the_system_store_that_lacks_the_ca(ca: TestCa, tmp_path: Path) -> None:
    """The default context reads this machine's store, which the tests never change."""
    with pytest.raises(ssl.SSLCertVerificationError):
        loopback_handshake(server_context(ca, "app1.localhost", tmp_path), "app1.localhost")


def system_check_plan(ca: TestCa, expect_valid: bool) -> TrustPlan:
    step = Step("the system store", "a TLS client accepts a certificate the CA signed", (), expect_valid=expect_valid)
    return TrustPlan("trust" if expect_valid else "untrust", load_ca(str(ca.pem_path)), (step,), system_bundle="/etc/ssl/certs/ca-certificates.crt")


@pytest.mark.parametrize(("client_trusts", "expect_valid", "code"), [(True, True, 0), (False, True, 1), (False, False, 0), (True, False, 1)])
def test_run_plan_reports_the_handshake_check(ca: TestCa, tmp_path: Path, client_trusts: bool, expect_valid: bool, code: int) -> None:
    context = server_context(ca, "app1.localhost", tmp_path)
    client = ssl.create_default_context(cafile=str(ca.pem_path)) if client_trusts else None
    out = Output()
    result = run_plan(
        system_check_plan(ca, expect_valid),
        dry_run=False,
        out=out,
        is_root=True,
        system_check=lambda: loopback_handshake(context, "app1.localhost", client),
    )
    assert result == code, out.text
    assert ("the system store: verified:" in out.text) == (code == 0)


def test_without_a_handshake_the_check_looks_in_the_bundle(ca: TestCa) -> None:
    out = Output()
    assert run_plan(system_check_plan(ca, True), dry_run=False, out=out, is_root=True) == 1
    assert "the system store: NOT verified: certificate rejected: the CA is not in /etc/ssl/certs/ca-certificates.crt" in out


# --- What to tell non-browser clients -------------------------------------------------------


def test_env_lines_point_replacing_variables_at_the_system_bundle_after_a_system_update() -> None:
    text = "\n".join(client_env_lines("/c/ca.pem", "/etc/ssl/certs/ca-certificates.crt"))
    assert "export NODE_EXTRA_CA_CERTS=/c/ca.pem" in text
    assert "export REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt" in text
    assert "export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt CURL_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt" in text
    assert "REQUESTS_CA_BUNDLE=/c/ca.pem" not in text


def test_env_lines_without_a_system_update_limit_the_ca_file_to_proxy_only_commands() -> None:
    text = "\n".join(client_env_lines("/c/my certs/ca.pem", None))
    assert "export NODE_EXTRA_CA_CERTS='/c/my certs/ca.pem'" in text
    assert "REQUESTS_CA_BUNDLE='/c/my certs/ca.pem' SSL_CERT_FILE='/c/my certs/ca.pem' CURL_CA_BUNDLE='/c/my certs/ca.pem' your-command" in text
    assert "export REQUESTS_CA_BUNDLE" not in text
    assert "nothing but the proxy" in text


def test_under_sudo_nss_commands_run_as_the_user_and_leave_their_files_theirs(ca: TestCa, tmp_path: Path) -> None:
    """run_as: a database in someone's home stays theirs when trust runs as root (nobody stands in)."""
    require_nss_tools()
    if os.geteuid() != 0:
        pytest.skip("needs root to run commands as another user")
    nobody = 65534
    home = Path(tempfile.mkdtemp(prefix="trust-home-"))  # tmp_path's parents are 0700 root: nobody cannot enter
    try:
        os.chmod(home, 0o755)
        db = home / "nssdb"
        db.mkdir()
        os.chown(db, nobody, nobody)
        subprocess.run(
            ["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], check=True, capture_output=True, timeout=30, user=nobody, group=nobody, extra_groups=[]
        )
        shutil.copy(ca.pem_path, home / "ca.pem")
        os.chmod(home / "ca.pem", 0o644)
        code, out, plan = trust_nss(home / "ca.pem", db, run_as=(nobody, nobody))
        assert code == 0, out.text
        assert nicknames(db) == [plan.ca.nickname]
        assert {(p.name, p.stat().st_uid) for p in db.iterdir()} == {(name, nobody) for name in ("cert9.db", "key4.db", "pkcs11.txt")}
    finally:
        shutil.rmtree(home)
