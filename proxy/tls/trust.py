"""`trust` / `untrust`: put the local CA into the stores browsers and tools read, and take it out.

Three layers: survey_machine() looks (read-only) at this machine; plan_trust()/plan_untrust() are
pure and turn that into the exact commands; run_plan() runs them, or prints them for --dry-run,
then checks the result with the store's own tools. Nothing here prints: output goes through `out`.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from proxy.errors import ProxyError

NICKNAME_PREFIX = "localhost-proxy CA"
FILE_PREFIX = "localhost-proxy-"
MACOS_KEYCHAIN = "/Library/Keychains/System.keychain"
UNKNOWN_PLATFORM = (
    "cannot tell how to update this system's trust store (found neither update-ca-certificates nor update-ca-trust); "
    "pass --no-system to update only the NSS databases"
)
NSS_PACKAGES = "libnss3-tools (Debian/Ubuntu), nss-tools (Fedora) or nss (Homebrew)"


@dataclass(frozen=True, slots=True)
class SystemStore:
    """Where one platform keeps its system-wide CAs and how it rebuilds them."""

    anchor_dir: str  # our CA file goes here ("" on macOS: the keychain holds it)
    anchor_suffix: str
    update: tuple[str, ...]  # rebuilds the bundle from the anchors
    bundle: str  # the file OpenSSL-based clients read afterwards ("" on macOS)


SYSTEM_STORES = {
    # update-ca-certificates only picks up *.crt files (PEM inside).
    "debian": SystemStore("/usr/local/share/ca-certificates", ".crt", ("update-ca-certificates",), "/etc/ssl/certs/ca-certificates.crt"),
    "fedora": SystemStore("/etc/pki/ca-trust/source/anchors", ".pem", ("update-ca-trust", "extract"), "/etc/pki/tls/certs/ca-bundle.crt"),
    "macos": SystemStore("", "", (), ""),
}


class NeedsRootError(ProxyError):
    """Some steps change system files; the message says how to rerun and which commands need root."""


@dataclass(frozen=True, slots=True)
class CaCert:
    """The local CA's certificate as trust stores see it: bytes and fingerprints, no key."""

    path: str
    der: bytes
    sha256: str  # lower-case hex
    sha1: str  # upper-case hex, as `security find-certificate -Z` prints it

    @property
    def nickname(self) -> str:
        """The NSS nickname: names this CA and no other, so untrust deletes exactly it."""
        return f"{NICKNAME_PREFIX} {self.sha256[:16]}"

    @property
    def anchor_name(self) -> str:
        return f"{FILE_PREFIX}{self.sha256[:16]}"


def load_ca(path: str) -> CaCert:
    """Return the CA certificate at path (PEM), or raise ProxyError saying how to create one."""
    try:
        with open(path, encoding="ascii") as f:
            der = ssl.PEM_cert_to_DER_cert(f.read())
    except FileNotFoundError:
        raise ProxyError(f"no CA certificate at {path}: start `localhost-proxy run` once (it creates the CA), then run trust again") from None
    except (ValueError, UnicodeDecodeError):
        raise ProxyError(f"{path} is not a PEM certificate (expected -----BEGIN CERTIFICATE-----)") from None
    return CaCert(os.path.abspath(path), der, hashlib.sha256(der).hexdigest(), hashlib.sha1(der).hexdigest().upper())


@dataclass(frozen=True, slots=True)
class NssDb:
    """One NSS database (a folder with cert9.db) and what it holds of ours."""

    path: str
    has_ca: bool  # our nickname is in it
    other_cas: tuple[str, ...] = ()  # nicknames of earlier localhost-proxy CAs


@dataclass(frozen=True, slots=True)
class Machine:
    """What the planners need to know about this machine; survey_machine() fills it in."""

    platform: str  # "debian", "fedora", "macos" or "unknown"
    nssdbs: tuple[NssDb, ...] = ()
    nssdbs_given: bool = False  # --nssdb: only these, and say so when there are none
    certutil: str | None = "certutil"
    vfychain: str | None = "vfychain"
    system_has_ca: bool | None = None  # None: cannot tell (macOS `security` missing)
    system_is_current: bool = False  # anchor file identical and already in the bundle
    other_anchors: tuple[str, ...] = ()  # anchor files of earlier localhost-proxy CAs


@dataclass(frozen=True, slots=True)
class Step:
    """One command of a plan, or a check of what the commands did."""

    target: str  # "the system store", "NSS database /home/me/.pki/nssdb"
    description: str
    argv: tuple[str, ...]  # empty only for the in-process system check
    needs_root: bool = False
    is_users: bool = False  # touches the user's own files: under sudo, run as the user
    expect_valid: bool | None = None  # None: an action; True/False: a check that must (not) validate


@dataclass(frozen=True, slots=True)
class TrustPlan:
    """The steps of `trust` or `untrust`, in order, and notes about what is left alone."""

    verb: str  # "trust" or "untrust"
    ca: CaCert
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = ()
    system_bundle: str | None = None  # set when trust updates a bundle file clients can be pointed at


def detect_platform() -> str:
    """Return which system store this machine has: "debian", "fedora", "macos" or "unknown"."""
    if sys.platform == "darwin":
        return "macos"
    if shutil.which("update-ca-certificates") and os.path.isdir(SYSTEM_STORES["debian"].anchor_dir):
        return "debian"
    if shutil.which("update-ca-trust"):
        return "fedora"
    return "unknown"


def invoking_user() -> tuple[int, int, str] | None:
    """Return (uid, gid, home) of the user who ran `sudo`, or None when not running under sudo.

    Under sudo, HOME is root's: the user's browser databases live in the invoking user's home, and
    writing them as root would leave root-owned files the browser cannot update.
    """
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if os.geteuid() != 0 or not uid or not gid or not uid.isdigit() or not gid.isdigit():
        return None
    try:
        home = pwd.getpwuid(int(uid)).pw_dir
    except KeyError:
        return None
    return int(uid), int(gid), home


def default_home() -> str:
    """Return the home folder whose browser databases trust/untrust should update."""
    user = invoking_user()
    return user[2] if user else os.path.expanduser("~")


def find_nssdbs(home: str, platform: str) -> list[str]:
    """Return the NSS databases (folders with a cert9.db) Chrome and Firefox use under home."""
    candidates = [
        os.path.join(home, ".pki", "nssdb"),  # Chrome, Chromium, and other NSS programs
        os.path.join(home, "snap", "chromium", "current", ".pki", "nssdb"),
        *sorted(glob.glob(os.path.join(glob.escape(home), ".mozilla", "firefox", "*"))),
        *sorted(glob.glob(os.path.join(glob.escape(home), "snap", "firefox", "common", ".mozilla", "firefox", "*"))),
    ]
    if platform == "macos":
        candidates += sorted(glob.glob(os.path.join(glob.escape(home), "Library", "Application Support", "Firefox", "Profiles", "*")))
    # Firefox profiles from before version 58 have only cert8.db, which certutil's sql: mode ignores.
    return [c for c in candidates if os.path.isfile(os.path.join(c, "cert9.db"))]


def _certutil_nicknames(certutil: str, nssdb: str) -> list[str]:
    """Return the nicknames in an NSS database (`certutil -L` lists `NICKNAME  TRUST` lines)."""
    result = _run([certutil, "-L", "-d", f"sql:{nssdb}"], None, timeout=30)
    if result.returncode != 0:
        raise ProxyError(f"cannot read the NSS database {nssdb}: {result.stderr.strip() or f'certutil exit {result.returncode}'}")
    # A blank line and a two-line header come first; the trust flags ("C,,") end each line.
    return [line.rstrip().rsplit(None, 1)[0].rstrip() for line in result.stdout.splitlines()[4:] if line.strip()]


def _bundle_has(bundle: str, der: bytes) -> bool:
    """Return whether the certificate is in a PEM bundle file, as OpenSSL would load it."""
    if not os.path.isfile(bundle):
        return False
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=bundle)
    except ssl.SSLError:
        return False
    return any(isinstance(c, bytes) and c == der for c in context.get_ca_certs(binary_form=True))


def survey_machine(ca: CaCert, *, platform: str, home: str, nssdbs: Sequence[str] | None = None, include_system: bool = True) -> Machine:
    """Return what this machine has: NSS databases, tools, and whether the stores hold the CA.

    Read-only. nssdbs: the --nssdb folders (only those are used); None finds Chrome's and Firefox's.
    """
    certutil, vfychain = shutil.which("certutil"), shutil.which("vfychain")
    if nssdbs:
        for folder in nssdbs:
            if not os.path.isfile(os.path.join(folder, "cert9.db")):
                raise ProxyError(f"--nssdb {folder}: no cert9.db there; create an empty database with: certutil -N -d sql:{folder} --empty-password")
        if certutil is None:
            raise ProxyError(f"--nssdb needs certutil, which is not installed: install {NSS_PACKAGES}")
        folders = [os.path.abspath(f) for f in nssdbs]
    else:
        folders = find_nssdbs(home, platform)
    found = []
    for folder in folders:
        if certutil is None:
            found.append(NssDb(folder, has_ca=False))
            continue
        names = _certutil_nicknames(certutil, folder)
        others = tuple(n for n in names if n.startswith(NICKNAME_PREFIX + " ") and n != ca.nickname)
        found.append(NssDb(folder, has_ca=ca.nickname in names, other_cas=others))

    has_ca: bool | None = False
    is_current = False
    other_anchors: tuple[str, ...] = ()
    store = SYSTEM_STORES.get(platform)
    if include_system and store is not None and store.anchor_dir:
        anchor = os.path.join(store.anchor_dir, ca.anchor_name + store.anchor_suffix)
        has_ca = os.path.isfile(anchor)
        if has_ca:
            try:
                with open(anchor, encoding="ascii") as f:
                    is_current = ssl.PEM_cert_to_DER_cert(f.read()) == ca.der and _bundle_has(store.bundle, ca.der)
            except (OSError, ValueError):
                is_current = False  # unreadable or not our PEM: trust rewrites it
        pattern = os.path.join(glob.escape(store.anchor_dir), FILE_PREFIX + "*" + store.anchor_suffix)
        other_anchors = tuple(sorted(p for p in glob.glob(pattern) if p != anchor))
    elif include_system and platform == "macos":
        has_ca = _keychain_has(ca)
    return Machine(platform, tuple(found), bool(nssdbs), certutil, vfychain, has_ca, is_current, other_anchors)


def _keychain_has(ca: CaCert) -> bool | None:
    """Return whether the System keychain holds the CA (by SHA-1), or None when `security` is absent."""
    try:
        result = _run(["security", "find-certificate", "-a", "-Z", MACOS_KEYCHAIN], None, timeout=30)
    except FileNotFoundError:
        return None
    return result.returncode == 0 and ca.sha1 in result.stdout


def _system_target(platform: str) -> str:
    return "the macOS System keychain" if platform == "macos" else "the system store"


def _nss_check(machine: Machine, ca: CaCert, db: str, leaf_pem_path: str | None, expect_valid: bool) -> Step:
    """Return the step asking NSS itself whether the CA (or a leaf it signed) validates in db."""
    target = f"NSS database {db}"
    if machine.vfychain:
        argv: tuple[str, ...]
        if leaf_pem_path:  # -u 1: certUsageSSLServer, what a browser checks for an https:// site
            argv = (machine.vfychain, "-d", f"sql:{db}", "-u", "1", "-a", leaf_pem_path)
            what = "a leaf certificate the CA signed validates for TLS servers (vfychain)"
        else:  # -u 3: certUsageSSLCA
            argv = (machine.vfychain, "-d", f"sql:{db}", "-u", "3", "-a", ca.path)
            what = "the CA validates as a TLS certificate authority (vfychain)"
    else:  # -u L: SSL CA; fails with "marked as not trusted" or "could not find" otherwise
        argv = (machine.certutil or "certutil", "-V", "-d", f"sql:{db}", "-u", "L", "-n", ca.nickname)
        what = "the CA validates as a TLS certificate authority (certutil -V)"
    if not expect_valid:
        what = what.replace(" validates", " no longer validates")
    return Step(target, what, argv, is_users=True, expect_valid=expect_valid)


def _nss_tools_note(machine: Machine) -> list[str]:
    if machine.certutil is not None:
        return []
    if machine.nssdbs:
        folders = ", ".join(db.path for db in machine.nssdbs)
        return [f"NSS databases (Chrome, Firefox) found at {folders}, but certutil is not installed: install {NSS_PACKAGES}, then run this again"]
    return []


def plan_trust(ca: CaCert, machine: Machine, *, include_system: bool = True, leaf_pem_path: str | None = None) -> TrustPlan:
    """Return the steps that make this machine trust the CA, each followed by a check.

    leaf_pem_path: a certificate the CA signed; when given, NSS checks that it validates for a TLS
    server, which is what a browser does. Otherwise NSS checks the CA itself.
    """
    steps: list[Step] = []
    notes = _nss_tools_note(machine)
    bundle = None
    if include_system:
        store = SYSTEM_STORES.get(machine.platform)
        target = _system_target(machine.platform)
        if store is None:
            raise ProxyError(UNKNOWN_PLATFORM)
        if machine.platform == "macos":
            argv: tuple[str, ...] = ("security", "add-trusted-cert", "-d", "-r", "trustRoot", "-k", MACOS_KEYCHAIN, ca.path)
            steps.append(Step(target, "add the CA as a trusted root", argv, needs_root=True))
            steps.append(Step(target, "macOS accepts the CA (security verify-cert)", ("security", "verify-cert", "-c", ca.path), expect_valid=True))
        else:
            anchor = os.path.join(store.anchor_dir, ca.anchor_name + store.anchor_suffix)
            if machine.system_is_current:
                notes.append(f"{target} already has the CA ({anchor})")
            else:
                steps.append(Step(target, f"copy the CA to {anchor}", ("install", "-m", "0644", ca.path, anchor), needs_root=True))
                steps.append(Step(target, f"rebuild {store.bundle}", store.update, needs_root=True))
            steps.append(Step(target, f"a TLS client reading {store.bundle} accepts a certificate the CA signed", (), expect_valid=True))
            bundle = store.bundle
    for db in machine.nssdbs if machine.certutil else ():
        target = f"NSS database {db.path}"
        if db.has_ca:
            notes.append(f"{target} already has the CA as {ca.nickname!r}")
        else:
            # C,, : trusted to issue TLS server certificates; nothing for e-mail or code signing.
            argv = (machine.certutil or "certutil", "-A", "-d", f"sql:{db.path}", "-t", "C,,", "-n", ca.nickname, "-i", ca.path)
            steps.append(Step(target, f"add the CA as {ca.nickname!r}", argv, is_users=True))
        steps.append(_nss_check(machine, ca, db.path, leaf_pem_path, expect_valid=True))
    if not machine.nssdbs and not machine.nssdbs_given:
        notes.append(
            "no NSS databases found (Chrome creates ~/.pki/nssdb on its first start, Firefox a profile); run trust again after starting the browser once"
        )
    return TrustPlan("trust", ca, tuple(steps), tuple(notes), bundle)


def plan_untrust(ca: CaCert, machine: Machine, *, include_system: bool = True) -> TrustPlan:
    """Return the steps that remove exactly this CA from wherever trust put it; none if it is nowhere."""
    steps: list[Step] = []
    notes = _nss_tools_note(machine)
    if include_system:
        store = SYSTEM_STORES.get(machine.platform)
        target = _system_target(machine.platform)
        if store is None:
            raise ProxyError(UNKNOWN_PLATFORM)
        if machine.system_has_ca is False:
            notes.append(f"{target}: the CA is not there, nothing to remove")
        elif machine.platform == "macos":
            steps.append(Step(target, "remove the CA's trust setting", ("security", "remove-trusted-cert", "-d", ca.path), needs_root=True))
            argv: tuple[str, ...] = ("security", "delete-certificate", "-Z", ca.sha1, MACOS_KEYCHAIN)
            steps.append(Step(target, "delete the CA from the keychain", argv, needs_root=True))
        else:
            anchor = os.path.join(store.anchor_dir, ca.anchor_name + store.anchor_suffix)
            steps.append(Step(target, f"remove {anchor}", ("rm", "-f", anchor), needs_root=True))
            steps.append(Step(target, f"rebuild {store.bundle}", store.update, needs_root=True))
            steps.append(Step(target, f"a TLS client reading {store.bundle} rejects a certificate the CA signed", (), expect_valid=False))
        for path in machine.other_anchors:
            notes.append(
                f"{target} also holds {path}, from an earlier localhost-proxy CA; to remove it: sudo rm {shlex.quote(path)} && sudo {shlex.join(store.update)}"
            )
    for db in machine.nssdbs if machine.certutil else ():
        target = f"NSS database {db.path}"
        if db.has_ca:
            argv = (machine.certutil or "certutil", "-D", "-d", f"sql:{db.path}", "-n", ca.nickname)
            steps.append(Step(target, f"delete {ca.nickname!r}", argv, is_users=True))
            steps.append(_nss_check(machine, ca, db.path, None, expect_valid=False))
        else:
            notes.append(f"{target}: the CA is not there, nothing to remove")
        for name in db.other_cas:
            notes.append(
                f"{target} also holds {name!r}, from an earlier localhost-proxy CA; to remove it: certutil -D -d {shlex.quote('sql:' + db.path)} -n {shlex.quote(name)}"
            )
    return TrustPlan("untrust", ca, tuple(steps), tuple(notes))


def command_line(step: Step, *, is_root: bool) -> str:
    """Return the shell line for a step, with sudo in front when it needs root we do not have."""
    line = shlex.join(step.argv)
    return f"sudo {line}" if step.needs_root and not is_root else line


SystemCheck = Callable[[], None]
"""Performs a TLS handshake the way clients on this machine would; raises ssl.SSLError or OSError on failure."""


def bundle_check(bundle: str, ca: CaCert) -> SystemCheck:
    """Return a weaker system check for callers without a leaf: is the CA in the bundle OpenSSL reads?"""

    def check() -> None:
        if not _bundle_has(bundle, ca.der):
            raise ssl.SSLCertVerificationError(f"the CA is not in {bundle}")

    return check


def loopback_handshake(server_context: ssl.SSLContext, hostname: str, client_context: ssl.SSLContext | None = None, timeout: float = 5.0) -> None:
    """Complete one TLS handshake with a throwaway server on 127.0.0.1; raise if the client refuses.

    server_context presents a leaf the CA signed for hostname. client_context defaults to
    ssl.create_default_context(), which reads the system store the way Python, curl and most
    OpenSSL-based clients do, so success means those clients trust the CA now.
    """
    client = client_context or ssl.create_default_context()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(timeout)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(timeout)
                try:
                    with server_context.wrap_socket(conn, server_side=True):
                        pass
                except (ssl.SSLError, OSError):
                    pass  # the client refused our certificate: its side reports why

        server = threading.Thread(target=serve, name="trust-check-server", daemon=True)
        server.start()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, client.wrap_socket(raw, server_hostname=hostname):
                pass
        finally:
            server.join(timeout)


def run_plan(
    plan: TrustPlan,
    *,
    dry_run: bool,
    out: Callable[[str], None],
    is_root: bool,
    run_as: tuple[int, int] | None = None,
    system_check: SystemCheck | None = None,
    sudo_command: str | None = None,
) -> int:
    """Run (or, for dry_run, print) the plan's steps and checks; return 0 if all held, else 1.

    Raises NeedsRootError before doing anything when a step needs root and is_root is false.
    run_as: (uid, gid) for the user's own files under sudo (see invoking_user()). system_check:
    the handshake for the system store's check; without one, the CA's presence in the bundle.
    A failed step skips the rest of its target; the other targets still run.
    """
    for note in plan.notes:
        out(note)
    if dry_run:
        for step in plan.steps:
            out(f"# {step.target}: {'check that ' if step.expect_valid is not None else ''}{step.description}")
            if step.argv:
                out(command_line(step, is_root=is_root))
        if plan.verb == "trust":
            for line in client_env_lines(plan.ca.path, plan.system_bundle):
                out(line)
        return 0
    root_steps = [s for s in plan.steps if s.needs_root]
    if root_steps and not is_root:
        commands = "\n".join(f"  {command_line(s, is_root=True)}" for s in root_steps)
        rerun = sudo_command or f"sudo localhost-proxy {plan.verb}"
        raise NeedsRootError(
            f"{_system_target_of(plan)} can only be changed by root: run with sudo: {rerun}\n"
            f"(or pass --no-system to change only your browsers' NSS databases). The commands that need root:\n{commands}"
        )
    if not plan.steps:
        if plan.verb == "trust":
            out("nothing to trust the CA in: no system store chosen and no NSS database found")
            return 1
        out("the CA is not trusted anywhere here; nothing removed")
        return 0
    failed_targets: set[str] = set()
    done: list[str] = []
    verified: list[str] = []
    for step in plan.steps:
        if step.target in failed_targets:
            continue
        if step.expect_valid is None:
            error = _run_command(step, run_as)
            if error:
                out(f"{step.target}: could not {step.description}: {error}")
                failed_targets.add(step.target)
            else:
                out(f"{step.target}: {_past(step.description)}")
                done.append(step.target)
            continue
        error = _run_check(step, plan, system_check, run_as)
        if error:
            out(f"{step.target}: NOT verified: {error}")
            failed_targets.add(step.target)
        else:
            out(f"{step.target}: verified: {step.description}")
            verified.append(step.target)
    if plan.verb == "trust" and not failed_targets:
        out(f"{plan.ca.nickname} is trusted in: {', '.join(dict.fromkeys(verified))}")
        for line in client_env_lines(plan.ca.path, plan.system_bundle):
            out(line)
    if plan.verb == "untrust" and not failed_targets:
        out(f"removed {plan.ca.nickname} from: {', '.join(dict.fromkeys(done))}")
    return 1 if failed_targets else 0


def _system_target_of(plan: TrustPlan) -> str:
    targets = [s.target for s in plan.steps if s.needs_root]
    return targets[0] if targets else "the system store"


def _past(description: str) -> str:
    """Return a step's description as a report: "add the CA ..." -> "added the CA ..."."""
    verb, _, rest = description.partition(" ")
    past = {"add": "added", "copy": "copied", "rebuild": "rebuilt", "remove": "removed", "delete": "deleted"}.get(verb, verb)
    return f"{past} {rest}"


def _run_command(step: Step, run_as: tuple[int, int] | None) -> str | None:
    """Run one step's command; return None on success, else what went wrong in one line."""
    try:
        result = _run(step.argv, run_as if step.is_users else None, timeout=120)
    except FileNotFoundError:
        return f"{step.argv[0]} is not installed"
    except subprocess.TimeoutExpired:
        return f"{shlex.join(step.argv)} did not finish within 120 s"
    if result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        return f"{shlex.join(step.argv)} exited with {result.returncode}" + (f": {detail[-1]}" if detail else "")
    return None


def _run(argv: Sequence[str], user: tuple[int, int] | None, *, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command and capture its output; as (uid, gid) with no extra groups when user is given."""
    if user is None:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, user=user[0], group=user[1], extra_groups=[])


def _run_check(step: Step, plan: TrustPlan, system_check: SystemCheck | None, run_as: tuple[int, int] | None) -> str | None:
    """Run one check; return None when the store answered as expected, else why not."""
    if step.argv:
        try:
            result = _run(step.argv, run_as if step.is_users else None, timeout=60)
        except FileNotFoundError:
            return f"{step.argv[0]} is not installed, so the result cannot be checked"
        except subprocess.TimeoutExpired:
            return f"{shlex.join(step.argv)} did not finish within 60 s"
        valid = result.returncode == 0
        if valid == step.expect_valid:
            return None
        detail = " ".join((result.stdout + result.stderr).split())
        verdict = "does not validate" if step.expect_valid else "still validates"
        return f"{shlex.join(step.argv)}: {verdict}" + (f" ({detail[:300]})" if detail else "")
    check = system_check or bundle_check(plan.system_bundle or SYSTEM_STORES["debian"].bundle, plan.ca)
    try:
        check()
    except ssl.SSLCertVerificationError as exc:
        # verify_message: OpenSSL's reason ("unable to get local issuer certificate"), when it is the judge.
        reason = getattr(exc, "verify_message", None) or (exc.args[-1] if exc.args else exc)
        return None if step.expect_valid is False else f"certificate rejected: {reason}"
    except (ssl.SSLError, OSError) as exc:
        return f"the check handshake failed before the certificate was judged: {exc}"
    return None if step.expect_valid else "a certificate the CA signed is still accepted"


def client_env_lines(ca_pem_path: str, system_bundle: str | None) -> list[str]:
    """Return what to tell the user about clients that do not read the stores trust updated.

    system_bundle: the system bundle file that now holds the CA next to the public ones, or None
    when the system store was not updated (or, as on macOS, has no such file).
    NODE_EXTRA_CA_CERTS adds to Node's list; the other three replace the client's whole list.
    """
    ca = shlex.quote(ca_pem_path)
    lines = [
        "Browsers use the stores above. For command-line clients:",
        f"  export NODE_EXTRA_CA_CERTS={ca}   # Node.js ignores the system store; this adds the CA to its built-in list",
    ]
    if system_bundle:
        bundle = shlex.quote(system_bundle)
        lines += [
            f"  export REQUESTS_CA_BUNDLE={bundle}   # Python requests/pip use certifi's list, not the system store",
            f"curl, Python's ssl and other OpenSSL clients read {system_bundle} already. Only for a client with its own list",
            "(a static curl, a Python built with its own OpenSSL), point the variables that REPLACE its list at the system bundle:",
            f"  export SSL_CERT_FILE={bundle} CURL_CA_BUNDLE={bundle}",
            f"Never point REQUESTS_CA_BUNDLE, SSL_CERT_FILE or CURL_CA_BUNDLE at {ca_pem_path} itself in your profile:",
            "those clients would then reject every HTTPS site except the proxy's.",
        ]
    else:
        lines += [
            "The system store was not updated, so no bundle holds the CA next to the public ones. REQUESTS_CA_BUNDLE,",
            "SSL_CERT_FILE and CURL_CA_BUNDLE REPLACE a client's list: set them to the CA only for a command that talks",
            "to nothing but the proxy (it will reject every other HTTPS site):",
            f"  REQUESTS_CA_BUNDLE={ca} SSL_CERT_FILE={ca} CURL_CA_BUNDLE={ca} your-command",
        ]
    return lines
