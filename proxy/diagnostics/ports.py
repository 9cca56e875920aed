"""Who listens where: read-only questions to the OS and quick connect probes, for messages and `list`."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import psutil

from proxy.config.model import Config, Site, StaticRoot, Upstream, Upstreams
from proxy.config.parse import normalize_site_name
from proxy.names import LOOPBACK_ADDRESSES, OWN_HOSTS, format_host, is_under_localhost
from proxy.upstream.dial import upstream_accepts


def describe_listener(port: int, host: str | None = None) -> str | None:
    """Return "node (pid 4121)" for the process listening on port (and host, if given), else None.

    Other users' processes can be hidden without root; then nothing is named.
    """
    for listener in tcp_listeners({port})[0]:
        if host is None or listener.address == host or listener.all_interfaces:
            return f"{listener.program or 'a process'} (pid {listener.pid})" if listener.pid is not None else "another process"
    return None


@dataclass(frozen=True, slots=True)
class SiteProbe:
    """A site and whether it answers right now: every route has an upstream that accepts (or its folder exists)."""

    host: str
    targets: list[str]
    up: bool
    upstreams: list[dict[str, object]]  # {"url": ..., "up": ...} for each upstream address
    config: str  # FILE:LINE:COL


async def probe_sites(config: Config) -> list[SiteProbe]:
    """Return a probe of every site, all connects at once."""

    async def route_is_up(target: Upstreams | StaticRoot) -> tuple[bool, list[dict[str, object]]]:
        if isinstance(target, StaticRoot):
            return await asyncio.to_thread(os.path.isdir, target.path), []
        states = await asyncio.gather(*(upstream_accepts(u) for u in target.addresses))
        return any(states), [{"url": str(u), "up": up} for u, up in zip(target.addresses, states)]

    async def probe(site: Site) -> SiteProbe:
        routes = await asyncio.gather(*(route_is_up(r.target) for r in site.routes))
        return SiteProbe(site.host, site.target_lines(), all(up for up, _ in routes), [u for _, ups in routes for u in ups], str(site.mark))

    return list(await asyncio.gather(*(probe(s) for s in config.sites)))


# ---------------------------------------------------------------- `ports` and `who`: every listener, and who holds it


@dataclass(frozen=True, slots=True)
class ListeningSocket:
    """One TCP socket in LISTEN state and, when the OS tells, the process that holds it."""

    address: str  # as the OS reports it: "127.0.0.1", "::1", "0.0.0.0", "::"
    port: int
    pid: int | None  # None: another user's process, which the OS names only to root
    program: str | None
    cmdline: tuple[str, ...] = ()

    @property
    def all_interfaces(self) -> bool:
        """Bound to every interface: other machines can reach it too."""
        return _canonical_address(self.address) in ("0.0.0.0", "::")

    @property
    def is_local(self) -> bool:
        """Reachable on loopback: bound there, or on every interface."""
        ip = _ip(self.address)
        return self.all_interfaces or (ip is not None and ip.is_loopback)

    @property
    def endpoint(self) -> str:
        return f"{format_host(self.address)}:{self.port}"


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Return address as an IP, IPv4-mapped IPv6 (::ffff:127.0.0.1) as the IPv4 it carries."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _canonical_address(address: str) -> str:
    ip = _ip(address)
    return address if ip is None else str(ip)


def tcp_listeners(ports: Collection[int] | None = None) -> tuple[list[ListeningSocket], str | None]:
    """Return every listening TCP socket on this machine (or on `ports`), sorted by port, and a note when some may be missing.

    Read-only. Linux lists every socket but names only the owner's processes (all of them to root);
    macOS lists sockets to root only, so without root each process we may inspect is asked in turn.
    """
    found: list[tuple[str, int, int | None]] = []
    note = None
    try:
        found += [(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN and c.laddr]
    except psutil.AccessDenied:
        note = "only your own processes are listed; run with sudo to see every listener"
        for process in psutil.process_iter():
            try:
                connections = process.net_connections(kind="tcp")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            found.extend((c.laddr.ip, c.laddr.port, process.pid) for c in connections if c.status == psutil.CONN_LISTEN and c.laddr)
    names: dict[int, tuple[str | None, tuple[str, ...]]] = {}
    listeners = set()
    for address, port, pid in found:  # one entry per process sharing a socket (forked workers)
        if ports is not None and port not in ports:
            continue
        if pid is not None and pid not in names:
            names[pid] = _process_names(pid)
        program, cmdline = names[pid] if pid is not None else (None, ())
        listeners.add(ListeningSocket(address, port, pid, program, cmdline))
    return sorted(listeners, key=lambda s: (s.port, ":" in s.address, s.address, s.pid or 0)), note


def _process_names(pid: int) -> tuple[str | None, tuple[str, ...]]:
    """Return a process's program name and command line, as far as we may see them."""
    try:
        process = psutil.Process(pid)
        name = process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None, ()
    try:
        return name, tuple(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return name, ()


def is_proxy_command(cmdline: Sequence[str]) -> bool:
    """Return whether a command line is `localhost-proxy run` (or `python -m proxy run`)."""
    return "run" in cmdline and any("proxy" in os.path.basename(arg) for arg in cmdline)


def _dial_candidates(host: str) -> set[str]:
    """Return the IP addresses a dial to host can land on, as far as we can tell without DNS."""
    if is_under_localhost(host):
        return set(LOOPBACK_ADDRESSES)
    ip = _ip(host)
    return set() if ip is None else {str(ip)}


def upstream_reaches(upstream: Upstream, listener: ListeningSocket) -> bool:
    """Return whether dialing the upstream connects to this listener."""
    if upstream.port != listener.port:
        return False
    address = _canonical_address(listener.address)
    for host in upstream.dial_hosts:
        for candidate in _dial_candidates(host):
            ip = ipaddress.ip_address(candidate)
            if candidate == address:
                return True
            if address == "0.0.0.0" and ip.version == 4 and ip.is_loopback:
                return True
            if address == "::" and ip.is_loopback:  # Linux's [::] takes IPv4 too (bindv6only=0)
                return True
    return False


def routed_by(listener: ListeningSocket, config: Config | None) -> list[str]:
    """Return the hosts of the sites whose upstreams reach this listener."""
    if config is None:
        return []
    return [
        site.host
        for site in config.sites
        if any(upstream_reaches(u, listener) for r in site.routes if isinstance(r.target, Upstreams) for u in r.target.addresses)
    ]


_VERSION_SUFFIX = re.compile(r"[0-9.]+$")


def guess_site_name(program: str | None, port: int, taken: Collection[str] = ()) -> str:
    """Return a site name for `add`, from the program's name: node -> node, python3.11 -> python.

    taken: hosts already in use (app1.localhost); a taken name gets the port appended (node-5173).
    The result is always a valid site name (one DNS label); "app" when nothing usable is left.
    """
    name = (program or "").lower().removesuffix(".exe")
    name = _VERSION_SUFFIX.sub("", name)
    name = re.sub(r"[^a-z0-9]+", "-", name).strip("-")[:50].strip("-")
    if not name or normalize_site_name(name) in OWN_HOSTS:
        name = "app"
    if normalize_site_name(name) in taken:
        name = f"{name}-{port}"
    return name


def add_target(listener: ListeningSocket) -> str:
    """Return the TARGET `add` needs to reach a listener: the bare port when localhost reaches it."""
    if _canonical_address(listener.address) in ("127.0.0.1", "::1", "0.0.0.0", "::"):
        return str(listener.port)
    return listener.endpoint


@dataclass(frozen=True, slots=True)
class PortEntry:
    """One row of `ports`: a listener, the sites that route to it, and what to run when none does."""

    listener: ListeningSocket
    routed_by: list[str]
    is_proxy: bool  # held by a `localhost-proxy run`
    suggestion: str | None  # `localhost-proxy add NAME PORT`

    def as_json(self) -> dict[str, object]:
        s = self.listener
        return {"address": s.address, "port": s.port, "pid": s.pid, "program": s.program, "all_interfaces": s.all_interfaces, "routed_by": self.routed_by}


def port_entries(listeners: Sequence[ListeningSocket], config: Config | None) -> list[PortEntry]:
    """Return a row for every listener reachable on loopback, marked with the sites that route to it."""
    taken = {site.host for site in config.sites} if config is not None else set()
    names: dict[str, str] = {}  # target -> suggested name: one name per port, not per address
    entries = []
    for listener in listeners:
        if not listener.is_local:
            continue
        hosts = routed_by(listener, config)
        is_proxy = is_proxy_command(listener.cmdline)
        suggestion = None
        if not hosts and not is_proxy:
            target = add_target(listener)
            if target not in names:
                names[target] = guess_site_name(listener.program, listener.port, taken)
                taken.add(normalize_site_name(names[target]))
            suggestion = f"localhost-proxy add {names[target]} {target}"
        entries.append(PortEntry(listener, hosts, is_proxy, suggestion))
    return entries


def table_lines(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Return rows as aligned text columns under a header."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]


def port_table(entries: Sequence[PortEntry]) -> list[str]:
    """Return the `ports` table: address, reach, pid, program, and the sites (or the `add` to run)."""
    rows = []
    for entry in entries:
        s = entry.listener
        if entry.routed_by:
            sites = ", ".join(entry.routed_by)
        elif entry.is_proxy:
            sites = "(localhost-proxy itself)"
        else:
            sites = f"not routed; try: {entry.suggestion}"
        reach = "ALL INTERFACES" if s.all_interfaces else "loopback"
        rows.append((s.endpoint, reach, str(s.pid) if s.pid is not None else "-", s.program or "?", sites))
    return table_lines(("LISTEN", "REACH", "PID", "PROGRAM", "SITES"), rows)


def unnamed_note(is_root: bool) -> str:
    """Return why a listener has no process: without root, another user's; as root, another namespace's."""
    if is_root:
        return "the OS does not name its process (one in another container or network namespace?)"
    return "a process of another user; run with sudo to see which"


def who_lines(port: int, listeners: Sequence[ListeningSocket], *, is_root: bool = False) -> list[str]:
    """Return what `who PORT` prints about the listeners on port (empty when there are none)."""
    lines = []
    for s in listeners:
        if s.port != port:
            continue
        where = s.endpoint + (" (all interfaces)" if s.all_interfaces else "")
        if s.pid is None:
            lines.append(f"{where}: {unnamed_note(is_root)}")
            continue
        lines.append(f"{where}: {s.program or 'a process'} (pid {s.pid})")
        if s.cmdline:
            lines.append(f"  command: {' '.join(s.cmdline)}")
    return lines
