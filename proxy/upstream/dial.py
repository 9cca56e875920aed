"""Whether an upstream accepts connections right now: one rule for the waiting page, the
dashboard's probe, `list` and `doctor`.
"""

from __future__ import annotations

import asyncio

from proxy.config.model import Upstream


async def accepts_connections(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return whether something accepts a TCP connection on host:port right now."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError):
        return False
    writer.close()
    return True


async def upstream_accepts(upstream: Upstream, timeout: float = 0.5) -> bool:
    """Return whether the upstream accepts a connection on any address it is dialed on ("localhost": both loopbacks)."""
    results = await asyncio.gather(*(accepts_connections(host, upstream.port, timeout) for host in upstream.dial_hosts))
    return any(results)
