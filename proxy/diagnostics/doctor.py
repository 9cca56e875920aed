"""`doctor`: can the proxy run here and reach its apps? Each check says ok, info, warn or fail, with a fix.

The judge_* functions are pure: they take facts and return a Check. run_checks() gathers the facts
(the config, listeners, connects, the resolver, the CA files, the trust stores) strictly read-only:
it never changes a file, a trust store or a setting. Nothing here prints.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import shlex
import socket
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from proxy.config.load import certs_folder, load_config
from proxy.config.model import DEFAULT_HTTP_PORT, DEFAULT_HTTPS_PORT, Config, ListenAddress, Upstream, Upstreams
from proxy.diagnostics.ports import ListeningSocket, is_proxy_command, tcp_listeners
from proxy.errors import ConfigErrors, ProxyError
from proxy.tls import trust
from proxy.tls.ca import CA_CERT_FILE, CA_KEY_FILE, CertificateError, load_ca
from proxy.upstream.dial import upstream_accepts

OK, INFO, WARN, FAIL, SKIP = "ok", "info", "warn", "fail", "skip"
DEFAULT_CONFIG = "./sites.yaml"
# Warn early enough that nobody meets an expired CA in the middle of a demo.
EXPIRY_WARNING = datetime.timedelta(days=60)
RESOLVE_CHECK_NAME = "doctor-check.localhost"
UNPRIVILEGED_PORT_START = "/proc/sys/net/ipv4/ip_unprivileged_port_start"


@dataclass(frozen=True, slots=True)
class Check:
    """The verdict of one check: a status, one line saying what was found, details, and the fix."""

    status: str  # OK, INFO, WARN, FAIL or SKIP
    summary: str
    details: tuple[str, ...] = ()
    fix: tuple[str, ...] = ()


def has_failure(checks: Sequence[Check]) -> bool:
    """Return whether any check failed: `doctor` then exits 1."""
    return any(c.status == FAIL for c in checks)


def check_lines(checks: Sequence[Check]) -> list[str]:
    """Return the report: `ok    summary`, detail lines indented, then `fix:` lines."""
    lines = []
    for check in checks:
        lines.append(f"{check.status:<4}  {check.summary}")
        lines.extend(f"      {detail}" for detail in check.details)
        label = "fix: " if check.status in (WARN, FAIL) else "how: "
        for i, fix in enumerate(check.fix):
            lines.append(f"      {label if i == 0 else '     '}{fix}")
    return lines


def proxy_command(verb: str, config_path: str, certs: str | None) -> str:
    """Return the `localhost-proxy VERB` line that acts on the same CA as this doctor run."""
    argv = ["localhost-proxy", verb]
    if certs:
        argv += ["--certs", certs]
    elif config_path != DEFAULT_CONFIG:
        argv += ["--config", config_path]
    return shlex.join(argv)


# ---------------------------------------------------------------- judging (pure)


def judge_config(path: str, config: Config | None, errors: ConfigErrors | None) -> Check:
    """Return whether the config file is valid; a failure lists its FILE:LINE:COL lines."""
    if config is not None:
        count = len(config.sites)
        return Check(OK, f"config {path} is valid ({count} site{'' if count == 1 else 's'})")
    lines = tuple(str(e) for e in errors.errors) if errors is not None else ()
    return Check(FAIL, f"config {path} has problems", lines, (f"correct the lines above, then `localhost-proxy check --config {shlex.quote(path)}`",))


def judge_proxy_port(key: str, address: ListenAddress, holders: Sequence[ListeningSocket], config_file: str) -> Check:
    """Return whether the proxy can listen on address: free, or held by a running localhost-proxy."""
    what = f"proxy port {address} (listen.{key})"
    if address.port == 0:
        return Check(OK, f"{what}: any free port is picked at start")
    others = [h for h in holders if not is_proxy_command(h.cmdline)]
    if not holders:
        return Check(OK, f"{what} is free")
    if not others:
        pids = ", ".join(sorted({str(h.pid) for h in holders}))
        return Check(OK, f"{what} is held by localhost-proxy (pid {pids}): the proxy is running")
    names = sorted({f"{h.program} (pid {h.pid})" if h.pid is not None else "a process of another user" for h in others})
    where = sorted({h.endpoint for h in others})
    spare = address.port + 1
    return Check(
        FAIL,
        f"{what} is taken by {', '.join(names)} on {', '.join(where)}",
        fix=(
            f"stop it (`localhost-proxy who {address.port}` shows its command line), or give the proxy another port:",
            f"`listen: {{{key}: {spare}}}` in {config_file}, or `localhost-proxy run --{key} {spare}`",
        ),
    )


def judge_upstream(site_host: str, upstream: Upstream, accepts: bool) -> Check:
    """Return whether a site's upstream accepts connections; a warning (the app may start later), never a failure."""
    if accepts:
        return Check(OK, f"{site_host} -> {upstream}: accepts connections")
    tried = " or ".join(upstream.tried_addresses)
    return Check(
        WARN,
        f"{site_host} -> {upstream}: nothing accepts connections on {tried}",
        fix=(
            f"start the app (it should listen on port {upstream.port}), or point the site at the port it uses: localhost-proxy add {site_host} PORT --replace",
        ),
    )


def judge_localhost_resolution(addresses: Sequence[str] | None, error: str | None, site_hosts: Sequence[str], platform: str) -> Check:
    """Return whether programs that ask the system resolver find *.localhost names on loopback.

    Browsers and curl resolve *.localhost themselves (RFC 6761), so this is a warning only:
    it matters for other programs (Python requests, wget, Node before v17) talking to the proxy.
    """
    name = RESOLVE_CHECK_NAME
    if addresses and all(a.startswith("127.") or a == "::1" for a in addresses):
        return Check(OK, f"*.localhost names resolve to loopback for every program ({name} -> {', '.join(addresses)})")
    found = f"{name} resolves to {', '.join(addresses)}, not to loopback" if addresses else f"{name} does not resolve ({error or 'no address'})"
    plain = [h for h in site_hosts if not h.startswith("*.")] or ["app1.localhost"]
    fix = []
    if platform != "macos":
        fix.append("sudo apt install libnss-myhostname (Debian/Ubuntu; it answers every *.localhost name with 127.0.0.1 and ::1),")
        fix.append("or add lines to /etc/hosts (one per name; wildcards are not possible there):")
    else:
        fix.append("add lines to /etc/hosts (one per name; wildcards are not possible there):")
    fix += [f"  127.0.0.1 {' '.join(plain)}", f"  ::1 {' '.join(plain)}"]
    return Check(WARN, f"{found}: browsers and curl still work, other programs may not find your sites", fix=tuple(fix))


def judge_ca_files(certs: str, has_cert: bool, has_key: bool, ca_command: str) -> Check | None:
    """Return a check when the CA is missing or half there; None when both files exist."""
    cert_path, key_path = os.path.join(certs, CA_CERT_FILE), os.path.join(certs, CA_KEY_FILE)
    if has_cert and has_key:
        return None
    if not has_key and not has_cert:
        return Check(WARN, f"no local CA in {certs} yet: HTTPS sites need one", fix=(f"run `{ca_command}` (the proxy also makes it on its first HTTPS start)",))
    if not has_key:
        return Check(
            WARN, f"{cert_path} is there but its key {key_path} is not: a new CA will be made", fix=(f"run `{ca_command}`, then `localhost-proxy trust` again",)
        )
    return Check(
        FAIL,
        f"the CA key {key_path} is there but its certificate {cert_path} is not: HTTPS cannot start",
        fix=(f"rm {shlex.quote(key_path)}; then run `{ca_command}` and `localhost-proxy trust`",),
    )


def judge_key_mode(key_path: str, mode: int) -> Check:
    """Return whether only the owner may read the CA key (mode 0600 or stricter)."""
    if mode & 0o077:
        return Check(
            FAIL,
            f"the CA key {key_path} can be read by other users (mode {mode:o}): whoever reads it can make certificates this machine trusts",
            fix=(f"chmod 600 {shlex.quote(key_path)}",),
        )
    return Check(OK, f"the CA key {key_path} is private (mode {mode:o})")


def judge_ca_expiry(cert_path: str, not_after: datetime.datetime, now: datetime.datetime, ca_command: str) -> Check:
    """Return whether the CA is still valid, warning within EXPIRY_WARNING of its end."""
    left = not_after - now
    remake = (
        f"rm the CA files in {shlex.quote(os.path.dirname(cert_path))} ({CA_CERT_FILE}, {CA_KEY_FILE}), run `{ca_command}`, then `localhost-proxy untrust` / `trust`",
    )
    if left <= datetime.timedelta(0):
        return Check(FAIL, f"the CA {cert_path} expired on {not_after:%Y-%m-%d}: HTTPS cannot start", fix=remake)
    if left < EXPIRY_WARNING:
        return Check(WARN, f"the CA {cert_path} expires on {not_after:%Y-%m-%d}, in {left.days} days", fix=remake)
    return Check(OK, f"the CA is valid until {not_after:%Y-%m-%d} ({left.days} days)")


def judge_ca_trust(machine: trust.Machine, trust_command: str) -> Check:
    """Return whether the system store and every browser NSS database found trust the CA."""
    missing: list[str] = []
    unknown: list[str] = []
    trusted: list[str] = []
    if machine.platform == "unknown":
        unknown.append("the system store (neither update-ca-certificates nor update-ca-trust is installed)")
    elif machine.system_has_ca is None:
        unknown.append("the macOS System keychain (`security` is missing)")
    elif machine.platform == "macos":
        (trusted if machine.system_has_ca else missing).append("the macOS System keychain")
    elif machine.system_is_current:
        trusted.append("the system store")
    elif machine.system_has_ca:
        missing.append("the system store (the CA file is there, but the bundle was not rebuilt with it)")
    else:
        missing.append("the system store")
    for db in machine.nssdbs:
        if machine.certutil is None:
            unknown.append(f"NSS database {db.path} (certutil is not installed: {trust.NSS_PACKAGES})")
        else:
            (trusted if db.has_ca else missing).append(f"NSS database {db.path}")
    details = [f"trusted by {place}" for place in trusted] + [f"cannot tell for {place}" for place in unknown]
    if not machine.nssdbs:
        details.append("no browser NSS databases found (Chrome and Firefox make theirs on first start; run trust after that)")
    if missing:
        return Check(
            WARN, "the CA is not trusted by " + "; ".join(missing), tuple(details), (f"run `{trust_command}` (it asks for sudo for the system store)",)
        )
    if not trusted:
        return Check(WARN, "cannot tell whether this machine trusts the CA", tuple(details), (f"run `{trust_command}`; it checks the result itself",))
    return Check(OK, "the CA is trusted", tuple(details))


def judge_privileged_ports(start: int | None, is_root: bool, platform: str, wanted: Sequence[int]) -> Check:
    """Return whether ports 80/443 can be bound without root; info, or a warning when the config wants them. Never a failure."""
    if platform == "macos":
        return Check(SKIP, "low ports: not checked on macOS (since 10.14 any user may listen on ports below 1024 on loopback)")
    if start is None:
        return Check(SKIP, f"low ports: cannot read {UNPRIVILEGED_PORT_START}; ports below 1024 likely need root")
    if start <= 80:
        return Check(OK, f"any user may listen on ports 80 and 443 (net.ipv4.ip_unprivileged_port_start = {start})")
    needs = sorted({p for p in wanted if 0 < p < start})
    how = (
        "sudo sysctl net.ipv4.ip_unprivileged_port_start=80   # every user, until reboot (persist it in /etc/sysctl.d/)",
        "or: sudo setcap cap_net_bind_service=+ep $(readlink -f $(which python3))   # that Python binary, for every script it runs",
    )
    if is_root:
        return Check(INFO, f"you are root, so any port works here; other users may listen only from port {start} up", fix=how)
    if needs:
        ports = ", ".join(str(p) for p in needs)
        return Check(WARN, f"the config listens on port {ports}, but only root may listen below {start}", fix=how)
    return Check(
        INFO,
        f"ports below {start} need root; the proxy's ports ({', '.join(str(p) for p in wanted)}) do not",
        ("to serve http://app1.localhost/ without a port number, allow ports 80/443:",),
        how,
    )


# ---------------------------------------------------------------- gathering (read-only OS queries)


async def run_checks(config_path: str, certs_arg: str | None) -> list[Check]:
    """Return every check in order: config, proxy ports, upstreams, resolver, CA, low ports."""
    checks: list[Check] = []
    config: Config | None = None
    try:
        config = load_config(config_path)
        checks.append(judge_config(config_path, config, None))
    except ConfigErrors as exc:
        checks.append(judge_config(config_path, None, exc))

    listeners, _ = tcp_listeners()
    if config is not None:
        addresses = {"http": config.listen_http, "https": config.listen_https}
    else:
        addresses = {"http": ListenAddress(None, DEFAULT_HTTP_PORT), "https": ListenAddress(None, DEFAULT_HTTPS_PORT)}
        checks.append(Check(SKIP, "proxy ports: the config cannot be read, so the default ports are checked"))
    for key, address in addresses.items():
        holders = [s for s in listeners if s.port == address.port and (s.all_interfaces or s.address in address.hosts)]
        checks.append(judge_proxy_port(key, address, holders, config_path))

    if config is not None:
        checks.extend(await _upstream_checks(config))
        if not config.sites:
            checks.append(Check(SKIP, "upstreams: no sites yet"))

    checks.append(_resolution_check([s.host for s in config.sites] if config else [], trust.detect_platform()))
    certs = certs_arg or certs_folder(config_path)
    checks.extend(_ca_checks(certs, config_path, certs_arg))
    checks.append(_privileged_ports_check([a.port for a in addresses.values()]))
    return checks


async def _upstream_checks(config: Config) -> list[Check]:
    pairs: list[tuple[str, Upstream]] = []
    for site in config.sites:
        for route in site.routes:
            if isinstance(route.target, Upstreams):
                pairs.extend((site.host, u) for u in route.target.addresses if (site.host, u) not in pairs)
    states = await asyncio.gather(*(upstream_accepts(u) for _, u in pairs))
    return [judge_upstream(host, u, up) for (host, u), up in zip(pairs, states)]


def _resolution_check(site_hosts: list[str], platform: str) -> Check:
    try:
        infos = socket.getaddrinfo(RESOLVE_CHECK_NAME, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return judge_localhost_resolution(None, str(exc), site_hosts, platform)
    addresses = sorted({str(info[4][0]) for info in infos})
    return judge_localhost_resolution(addresses, None, site_hosts, platform)


def _ca_checks(certs: str, config_path: str, certs_arg: str | None) -> list[Check]:
    ca_command = proxy_command("ca", config_path, certs_arg)
    cert_path, key_path = os.path.join(certs, CA_CERT_FILE), os.path.join(certs, CA_KEY_FILE)
    missing = judge_ca_files(certs, os.path.isfile(cert_path), os.path.isfile(key_path), ca_command)
    if missing is not None:
        return [missing]
    checks = [judge_key_mode(key_path, stat.S_IMODE(os.stat(key_path).st_mode))]
    try:
        with open(cert_path, "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as exc:
        return [
            *checks,
            Check(
                FAIL,
                f"cannot read the CA certificate {cert_path}: {exc}",
                fix=(f"remove {CA_CERT_FILE} and {CA_KEY_FILE} from {certs}, then run `{ca_command}`",),
            ),
        ]
    now = datetime.datetime.now(datetime.UTC)
    expiry = judge_ca_expiry(cert_path, certificate.not_valid_after_utc, now, ca_command)
    checks.append(expiry)
    if checks[0].status == OK and expiry.status != FAIL:
        try:  # the same load `run` does: the key must match the certificate
            load_ca(cert_path, key_path)
        except (CertificateError, OSError) as exc:
            checks.append(Check(FAIL, f"the CA in {certs} cannot be used: {exc}"))
    checks.append(_trust_check(cert_path, proxy_command("trust", config_path, certs_arg)))
    return checks


def _trust_check(cert_path: str, trust_command: str) -> Check:
    try:
        ca = trust.load_ca(cert_path)
        platform = trust.detect_platform()
        machine = trust.survey_machine(ca, platform=platform, home=trust.default_home(), include_system=platform != "unknown")
    except ProxyError as exc:
        return Check(WARN, f"cannot tell whether the CA is trusted: {exc}", fix=(f"run `{trust_command}`; it checks the result itself",))
    return judge_ca_trust(machine, trust_command)


def _privileged_ports_check(wanted: list[int]) -> Check:
    platform = "macos" if sys.platform == "darwin" else sys.platform
    start = None
    try:
        with open(UNPRIVILEGED_PORT_START, encoding="ascii") as f:
            start = int(f.read().strip())
    except (OSError, ValueError):
        pass  # not Linux, or a kernel before 4.11: judge says it cannot tell
    return judge_privileged_ports(start, os.geteuid() == 0, platform, wanted)
