"""Who listens where: read-only questions to the OS and quick connect probes, for messages and `list`."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import psutil

from proxy.config import Config, Site, StaticRoot, Upstream, Upstreams


def describe_listener(port: int, host: str | None = None) -> str | None:
    """Return "node (pid 4121)" for the process listening on port (and host, if given), else None.

    Other users' processes can be hidden without root; then nothing is named.
    """
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError):
        return None
    for conn in connections:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        if host is not None and conn.laddr.ip not in (host, "0.0.0.0", "::"):
            continue
        if conn.pid is None:
            return "another process"
        try:
            name = psutil.Process(conn.pid).name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            name = "a process"
        return f"{name} (pid {conn.pid})"
    return None


async def accepts_connections(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return whether something accepts a TCP connection on host:port right now."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


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

    async def upstream_is_up(upstream: Upstream) -> bool:
        return any(await asyncio.gather(*(accepts_connections(host, upstream.port) for host in upstream.dial_hosts)))

    async def route_is_up(target: Upstreams | StaticRoot) -> tuple[bool, list[dict[str, object]]]:
        if isinstance(target, StaticRoot):
            return os.path.isdir(target.path), []
        states = await asyncio.gather(*(upstream_is_up(u) for u in target.addresses))
        return any(states), [{"url": str(u), "up": up} for u, up in zip(target.addresses, states)]

    async def probe(site: Site) -> SiteProbe:
        routes = await asyncio.gather(*(route_is_up(r.target) for r in site.routes))
        return SiteProbe(site.host, site.target_lines(), all(up for up, _ in routes), [u for _, ups in routes for u in ups], str(site.mark))

    return list(await asyncio.gather(*(probe(s) for s in config.sites)))
