"""The HTTP/1.1 response sink: the core's answer serialized for one client connection.

Fields pass as given, byte for byte; this module adds the framing this client needs
(Content-Length, chunked coding, or reading to the close for HTTP/1.0) and Connection when the
connection will close, and writes with backpressure. A small whole answer on a connection read
by the light path joins the write batch (WriteBatch); a 101 hands the connection over as a tunnel.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol

from proxy.forwarding.contract import ClientGone, Field, Tunnel
from proxy.frontends.http1.framing import framing_fields, has_body, response_head

# Bytes of an upgraded connection read ahead before it stops reading.
_TUNNEL_READ_AHEAD = 256 * 1024


class Channel(Protocol):
    """The client connection as the sink sees it."""

    @property
    def transport(self) -> asyncio.Transport | None: ...

    async def drain(self) -> None:
        """Wait while the client is not reading; raise ClientGone if it has gone."""
        ...

    def take_raw_bytes(self, tunnel: ClientTunnel) -> None:
        """From now on, hand every byte the client sends to the tunnel (after a 101)."""
        ...


class WriteBatch:
    """Small whole responses, written back to back once the event loop's current pass is done.

    Writing each one the moment it is ready wakes a client process per response; writing the
    ones ready in one pass together lets a client waiting on many connections (a browser, a load
    generator) read them in one go. Measured: about 6 % more small responses per second at 50
    connections. Only for connections read by the light path: they take no next request until
    the answer is handed over, and flush the batch before they close.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[tuple[asyncio.Transport, bytes]] = []

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append((transport, data))

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for transport, data in pending:
            if not transport.is_closing():
                transport.write(data)


class Http1Sink:
    """One answer on an HTTP/1.x connection (see contract.ResponseSink)."""

    __slots__ = ("_batch", "_channel", "_chunked", "_method", "_version", "is_done", "is_started", "keep_alive", "wrote_interim")

    def __init__(self, channel: Channel, method: str, version: tuple[int, int], keep_alive: bool, batch: WriteBatch | None = None) -> None:
        self._channel = channel
        self._method = method
        self._version = version
        self.keep_alive = keep_alive  # the client's wish at first; False once this answer must close the connection
        self._batch = batch
        self._chunked = False
        self.is_started = False  # the head has gone
        self.is_done = False  # the answer is complete, cut off or handed over as a tunnel
        self.wrote_interim = False  # a 100 Continue went out

    def _transport(self) -> asyncio.Transport:
        transport = self._channel.transport
        if transport is None or transport.is_closing():
            raise ClientGone("the client has gone")
        return transport

    def send_interim(self, status: int) -> None:
        """Send a 1xx (100 Continue) before the answer."""
        self._transport().write(response_head(self._version, status, "", (), b""))
        self.wrote_interim = True

    def send_whole(self, status: int, reason: str, fields: list[Field], body: bytes, *, length: int | None = None, last: bool = False) -> None:
        transport = self._transport()
        with_body = has_body(self._method, status)
        framing, self.keep_alive, _ = framing_fields(
            self._version, self.keep_alive and not last, body=with_body, length=len(body) if length is None else length, length_in_fields=length is not None
        )
        data = response_head(self._version, status, reason, fields, framing) + (body if with_body else b"")
        self.is_started = self.is_done = True
        if self._batch is not None:
            self._batch.write(transport, data)
        else:
            transport.write(data)

    async def start(self, status: int, reason: str, fields: list[Field], *, length: int | None = None) -> None:
        transport = self._transport()
        framing, self.keep_alive, self._chunked = framing_fields(
            self._version, self.keep_alive, body=has_body(self._method, status), length=length, length_in_fields=length is not None
        )
        transport.write(response_head(self._version, status, reason, fields, framing))
        self.is_started = True
        await self._channel.drain()

    async def write(self, data: bytes) -> None:
        if not data:
            return  # an empty chunk would end a chunked body
        transport = self._transport()
        transport.write(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)
        await self._channel.drain()

    async def end(self) -> None:
        self.is_done = True
        transport = self._channel.transport
        if transport is None:
            raise ClientGone("the client has gone")
        if self._chunked:
            transport.write(b"0\r\n\r\n")
        elif not self.keep_alive:
            transport.close()  # a body read to the close ends with it

    def abort(self) -> None:
        self.is_done = True
        self.keep_alive = False
        transport = self._channel.transport
        if transport is not None:
            transport.abort()

    async def upgrade(self, reason: str, fields: list[Field]) -> Tunnel:
        transport = self._transport()
        transport.write(response_head(self._version, 101, reason, fields, b"Connection: Upgrade\r\nUpgrade: websocket\r\n"))
        self.is_started = self.is_done = True
        self.keep_alive = False  # the connection no longer speaks HTTP
        tunnel = ClientTunnel(self._channel, transport)
        self._channel.take_raw_bytes(tunnel)
        return tunnel


class ClientTunnel:
    """An upgraded client connection as raw bytes both ways (see contract.Tunnel)."""

    def __init__(self, channel: Channel, transport: asyncio.Transport) -> None:
        self._channel = channel
        self._transport = transport
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._is_eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._is_paused = False

    # -- fed by the connection (aiohttp's parser protocol: feed_data, feed_eof)

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
            self._wake()
            if self._buffered > _TUNNEL_READ_AHEAD and not self._is_paused and not self._transport.is_closing():
                self._is_paused = True
                self._transport.pause_reading()
        return False, b""

    def feed_eof(self) -> None:
        self._is_eof = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- the Tunnel

    async def read(self) -> bytes:
        while not self._chunks:
            if self._is_eof or self._transport.is_closing():
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._is_paused and self._buffered < _TUNNEL_READ_AHEAD // 2 and not self._transport.is_closing():
            self._is_paused = False
            self._transport.resume_reading()
        return chunk

    async def write(self, data: bytes) -> None:
        if self._transport.is_closing():
            raise ClientGone("the client has gone")
        self._transport.write(data)
        await self._channel.drain()

    def close(self) -> None:
        self._transport.close()
        self.feed_eof()
