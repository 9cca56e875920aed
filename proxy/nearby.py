"""What listens near an upstream that refused: the same port on the other loopback address, or a
neighbouring port a dev server moved to ("port 5173 is free, but 5174 is taken by vite").

`explain_nearby` is pure; `loopback_listeners` asks the OS (psutil) and is called only when a
request has already failed, never on the forwarding path.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

import psutil

from proxy.config import Upstream, format_host

# How far a dev server that found its port taken usually moves (Vite, Next.js and CRA count up).
NEIGHBOUR_DISTANCE = 3
# Known dev servers, named by what their command line contains (node runs most of them).
_DEV_SERVERS = ("vite", "next", "webpack", "nuxt", "astro", "remix", "parcel", "storybook", "gatsby", "svelte-kit", "ng serve", "runserver", "uvicorn", "flask", "rails", "hugo", "jekyll")


@dataclass(frozen=True, slots=True)
class Listening:
    """One listening TCP socket."""

    ip: str
    port: int
    pid: int | None
    program: str  # "vite" when the command line says so, else the process name; "" if unknown

    def who(self) -> str:
        if not self.program:
            return "another process"
        return f"{self.program} (pid {self.pid})" if self.pid else self.program


def _reaches_loopback(ip: str) -> bool:
    """Return whether a socket bound to ip answers on a loopback address."""
    address = ipaddress.ip_address(ip)
    return address.is_loopback or address.is_unspecified


def explain_nearby(upstream: Upstream, listeners: list[Listening], *, own_pid: int | None = None) -> str | None:
    """Return one sentence about what listens near a refused upstream, or None when nothing does."""
    candidates = [entry for entry in listeners if (own_pid is None or entry.pid != own_pid) and _reaches_loopback(entry.ip)]
    tried = set(upstream.dial_hosts)
    tried_text = " or ".join(upstream.tried_addresses)
    same_port = [entry for entry in candidates if entry.port == upstream.port and entry.ip not in tried]
    if same_port:
        entry = same_port[0]
        where = f"{format_host(entry.ip)}:{entry.port}"
        return f"nothing on {tried_text}, but {entry.who()} listens on {where}: write just {entry.port} in sites.yaml (dialed on both 127.0.0.1 and ::1), or {where}"
    neighbours = sorted(
        (entry for entry in candidates if 0 < abs(entry.port - upstream.port) <= NEIGHBOUR_DISTANCE),
        key=lambda entry: (abs(entry.port - upstream.port), entry.port),
    )
    if neighbours:
        entry = neighbours[0]
        return f"port {upstream.port} is free, but {entry.port} is taken by {entry.who()}: did the dev server move? Then change the port in sites.yaml to {entry.port}"
    return None


def loopback_listeners(ports: set[int]) -> list[Listening]:
    """Return the TCP listeners on the given ports (any address), with their programs where the OS tells."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return []
    found: list[Listening] = []
    for conn in connections:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port not in ports:
            continue
        found.append(Listening(conn.laddr.ip, conn.laddr.port, conn.pid, _program(conn.pid)))
    return found


def _program(pid: int | None) -> str:
    if pid is None:
        return ""
    try:
        process = psutil.Process(pid)
        command = " ".join(process.cmdline())
        name = process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""
    for dev_server in _DEV_SERVERS:
        if dev_server in command:
            return dev_server
    return name


def nearby_ports(upstream: Upstream) -> set[int]:
    return {p for p in range(upstream.port - NEIGHBOUR_DISTANCE, upstream.port + NEIGHBOUR_DISTANCE + 1) if 0 < p < 65536}


def explain_refused(upstream: Upstream) -> str | None:
    """Blocking: ask the OS what listens near upstream and say it in one sentence."""
    return explain_nearby(upstream, loopback_listeners(nearby_ports(upstream)), own_pid=os.getpid())
