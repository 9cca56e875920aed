"""Keep-alive connections to upstreams, by address and TLS setting: taken, released, swept.

A pooled connection is never handed out while it holds bytes nobody asked for, after its idle
time is up, or once broken; the pool dials new ones ("localhost" on both loopback addresses).
"""

from __future__ import annotations

import asyncio
import ssl

from proxy.config.model import Upstream
from proxy.upstream.connection import UPSTREAM_IDLE_TIMEOUT, UpstreamConnection


def _tls_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:  # dev servers' self-signed certificates (the default for loopback upstreams)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class UpstreamPool:
    """Keep-alive connections by upstream address and TLS setting; opens new ones as needed."""

    def __init__(self, *, idle_timeout: float = UPSTREAM_IDLE_TIMEOUT) -> None:
        self.idle_timeout = idle_timeout
        self._idle: dict[tuple[object, ...], list[UpstreamConnection]] = {}
        self._contexts = {True: _tls_context(True), False: _tls_context(False)}
        self._sweeper: asyncio.TimerHandle | None = None
        self._in_use: set[UpstreamConnection] = set()

    def take_idle(self, upstream: Upstream, *, verify: bool) -> UpstreamConnection | None:
        """Return an idle pooled connection to upstream that is still good, if there is one.

        Not a coroutine: the common case, a pooled connection, costs no await.
        """
        idle = self._idle.get((upstream, verify))
        if idle:
            now = asyncio.get_running_loop().time()
            while idle:
                connection = idle.pop()
                if connection.is_broken or connection.transport is None or now - connection.idle_since > self.idle_timeout:
                    connection.close()
                    continue
                connection.reused = True
                self._in_use.add(connection)
                return connection
        return None

    async def connect(self, upstream: Upstream, *, verify: bool, connect_timeout: float) -> UpstreamConnection:
        """Return a new connection to upstream (raising OSError or TimeoutError)."""
        connection = await self._connect(upstream, (upstream, verify), verify, connect_timeout)
        self._in_use.add(connection)
        return connection

    def release(self, connection: UpstreamConnection) -> None:
        """Take a connection back: pooled when its exchange ended cleanly, else closed."""
        self._in_use.discard(connection)
        if connection.is_broken or not connection.is_complete or connection.transport is None:
            connection.close()
            return
        loop = asyncio.get_running_loop()
        connection.idle_since = loop.time()
        connection.is_waiting_for_answer = False
        self._idle.setdefault(connection.key, []).append(connection)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.idle_timeout / 2, self._sweep)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        for connection in list(self._in_use):
            connection.close()
        self._in_use.clear()

    def _sweep(self) -> None:
        """Close idle connections past their time, so descriptors go back without waiting for a request."""
        loop = asyncio.get_running_loop()
        self._sweeper = None
        now = loop.time()
        for key in list(self._idle):
            keep = []
            for connection in self._idle[key]:
                if connection.is_broken or now - connection.idle_since > self.idle_timeout:
                    connection.close()
                else:
                    keep.append(connection)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if self._idle:
            self._sweeper = loop.call_later(self.idle_timeout / 2, self._sweep)

    async def _connect(self, upstream: Upstream, key: tuple[object, ...], verify: bool, connect_timeout: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        tls = self._contexts[verify] if upstream.scheme == "https" else None
        last_error: BaseException | None = None
        async with asyncio.timeout(connect_timeout):
            for host in upstream.dial_hosts:  # "localhost" is both loopback addresses; dev servers bind either
                try:
                    _, connection = await loop.create_connection(
                        lambda: UpstreamConnection(loop, key),
                        host,
                        upstream.port,
                        ssl=tls,
                        server_hostname=upstream.host if tls is not None else None,
                    )
                    return connection
                except ssl.SSLError:
                    raise
                except OSError as exc:
                    last_error = exc
        assert last_error is not None
        raise last_error
