"""The HTTP/1.1 client every proxied request goes through: pooled keep-alive connections per
upstream, responses parsed by llhttp (httptools), bodies streamed with backpressure.

A general-purpose client (cookies, redirects, URL objects, auto headers, decompression) does a
lot per request that a proxy must then switch off again; this one only moves bytes. Request
heads go out as the proxy built them, byte for byte, and response heads come back as raw bytes.

Framing follows RFC 9112 6.3: Content-Length, chunked, or until the connection closes; no body
for HEAD, 1xx, 204 and 304. A response that llhttp rejects, or that breaks its framing mid-body,
raises UpstreamProtocolError; a pooled connection is never handed out while it holds bytes
nobody asked for, or after its idle time is up.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator
from typing import NamedTuple, cast

import httptools

from proxy.config.model import Upstream

# Idle pooled upstream connections close before the dev server closes them (Node and uvicorn
# drop idle keep-alive connections after 5 s), so a request rarely meets a stale one.
UPSTREAM_IDLE_TIMEOUT = 4.0
# A response body is read ahead this far before the upstream socket is paused.
_READ_AHEAD = 256 * 1024
# Request methods that may be sent again on a fresh connection when a pooled one turns out closed.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class UpstreamError(Exception):
    """The upstream connection failed; the subclasses say how."""


class UpstreamClosed(UpstreamError):
    """The upstream closed the connection before its response was complete (or started)."""

    def __init__(self, message: str, *, before_response: bool) -> None:
        super().__init__(message)
        self.before_response = before_response


class UpstreamProtocolError(UpstreamError):
    """The upstream sent something that is not a well-framed HTTP/1.1 response."""


class _UnaskedBytes(Exception):
    """Raised inside the parser to stop it at bytes that follow the complete answer."""


class ResponseHead(NamedTuple):  # made per response: a NamedTuple is cheaper to make than a frozen dataclass
    status: int
    reason: str
    headers: list[tuple[bytes, bytes]]  # as sent, in order
    content_length: int | None  # None: chunked or until close (or no body at all)
    has_body: bool


def _tls_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:  # dev servers' self-signed certificates (the default for loopback upstreams)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class UpstreamConnection(asyncio.Protocol):
    """One connection to an upstream; carries one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[object, ...]) -> None:
        self._loop = loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.reused = False
        self.is_broken = False  # closed, failed, or holding bytes nobody asked for: never pooled again
        # One parser for the connection's life: llhttp reads one response after another on it.
        self._parser = httptools.HttpResponseParser(self)
        self.is_waiting_for_answer = False  # between send_head and release
        self._head_waiter: asyncio.Future[ResponseHead] | None = None
        self._is_head_request = False
        self._status_reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._body_waiter: asyncio.Future[None] | None = None
        self._message_complete = False
        self._until_close = False  # the body ends when the connection does
        self._error: UpstreamError | None = None
        self._got_response_bytes = False
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        if not self.is_waiting_for_answer or self._message_complete:  # unasked bytes (a late or second answer)
            self._break()
            return
        self._got_response_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # a 101 to a plain request: the head is complete, the rest is not HTTP
            self._message_complete = True
            self._wake_body()
            self._break()
        except httptools.HttpParserError as exc:
            if self._message_complete:  # the answer is whole; only what follows it is wrong
                self._break()
            else:
                self._fail(UpstreamProtocolError(_parser_message(exc)))
        if self._buffered > _READ_AHEAD and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        return False  # close our side as well

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_broken = True
        self.transport = None
        if self.is_waiting_for_answer and not self._message_complete:
            if self._until_close and exc is None and self._head_waiter is not None and self._head_waiter.done():
                self._message_complete = True  # a close-delimited body is complete at a clean close
                self._wake_body()
            else:
                started = self._got_response_bytes
                reason = "the app closed the connection mid-response" if started else "the app closed the connection without answering"
                self._fail(UpstreamClosed(reason + (f" ({exc})" if exc else ""), before_response=not started))
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(UpstreamClosed("the app closed the connection", before_response=not self._got_response_bytes))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # ------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        if self._message_complete:  # a second answer behind the first: nobody asked for it
            raise _UnaskedBytes
        self._headers = []

    def on_status(self, reason: bytes) -> None:
        self._status_reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        length: int | None = None
        chunked = False
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"content-length":
                length = int(value)
            elif lower == b"transfer-encoding":
                chunked = True
        has_body = not (self._is_head_request or status in (204, 304) or status < 200)
        self._until_close = has_body and length is None and not chunked
        head = ResponseHead(status, self._status_reason.decode("latin-1"), self._headers, length if not chunked else None, has_body)
        if self._is_head_request:
            # llhttp cannot be told the request was HEAD and would wait for a body: stop here,
            # and do not reuse the connection (whatever follows on it cannot be placed).
            self._message_complete = True
            self.is_broken = True
        if self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_result(head)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        self._wake_body()

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._status_reason = b""  # the next message on this connection is the answer
            return
        self._message_complete = True
        if not self._parser.should_keep_alive():
            self.is_broken = True
        self._wake_body()

    # ------------------------------------------------------------ one exchange

    def send_head(self, head: bytes, *, is_head_request: bool) -> asyncio.Future[ResponseHead]:
        """Write a request head (and start parsing the answer); return a future for the response head."""
        assert self.transport is not None
        self.is_waiting_for_answer = True
        self._is_head_request = is_head_request
        self._status_reason = b""
        self._message_complete = False
        self._got_response_bytes = False
        self._head_waiter = self._loop.create_future()
        self.transport.write(head)
        return self._head_waiter

    async def write(self, data: bytes) -> None:
        """Write part of a request body, waiting while the upstream is not reading."""
        if self.transport is None or self.transport.is_closing():
            raise UpstreamClosed("the app closed the connection", before_response=not self._got_response_bytes)
        self.transport.write(data)
        if self._write_paused:
            self._drain_waiter = self._loop.create_future()
            await self._drain_waiter

    def whole_body(self) -> bytes | None:
        """Return the whole body when all of it has already arrived, else None (it must be streamed)."""
        if not self._message_complete or self._error is not None:
            return None
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return body

    async def body(self) -> AsyncIterator[bytes]:
        """Yield the response body as it arrives; raise UpstreamError if it is cut off or breaks its framing."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._reading_paused and self._buffered < _READ_AHEAD // 2 and self.transport is not None:
                    self._reading_paused = False
                    self.transport.resume_reading()
                yield chunk
                continue
            if self._error is not None:
                raise self._error
            if self._message_complete:
                return
            self._body_waiter = self._loop.create_future()
            await self._body_waiter
            self._body_waiter = None

    @property
    def is_complete(self) -> bool:
        """Whether the last response has been read to its end, so the connection can carry another."""
        return self._message_complete and not self._chunks and self._error is None

    def close(self) -> None:
        self.is_broken = True
        if self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------ internals

    def _wake_body(self) -> None:
        if self._body_waiter is not None and not self._body_waiter.done():
            self._body_waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        self._error = error
        if self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_exception(error)
        self._wake_body()
        self._break()

    def _break(self) -> None:
        self.is_broken = True
        if self.transport is not None:
            self.transport.abort()


def _parser_message(exc: httptools.HttpParserError) -> str:
    text = str(exc) or type(exc).__name__
    return text.removeprefix("Invalid ").strip() or "malformed response"


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
