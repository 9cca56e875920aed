"""One connection to an upstream: a request head out, its response parsed by llhttp (httptools),
the body streamed with backpressure; after a 101 to an upgrade request, a byte tunnel.

A general-purpose client (cookies, redirects, URL objects, auto headers, decompression) does a
lot per request that a proxy must then switch off again; this one only moves bytes. Request
heads go out as the proxy built them, byte for byte, and response heads come back as raw bytes.

Framing follows RFC 9112 6.3: Content-Length, chunked, or until the connection closes; no body
for HEAD, 1xx, 204 and 304. A response that llhttp rejects, or that breaks its framing mid-body,
raises UpstreamProtocolError. A 101 answering a request that asked to upgrade turns the
connection into a tunnel (read/write/close); a 101 nobody asked for breaks it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Iterable
from typing import NamedTuple, cast

import httptools

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


def request_head(method: str, target: str, fields: Iterable[tuple[bytes, bytes]], *, chunked: bool) -> bytes:
    """Return an HTTP/1.1 request head: the fields as given, then chunked framing when the body's length is unknown."""
    # The target holds the bytes received, decoded as UTF-8 with surrogate escapes: this gives them back.
    lines = [f"{method} {target} HTTP/1.1\r\n".encode("utf-8", "surrogateescape")]
    for name, value in fields:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"\r\n")
    return b"".join(lines)


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
        self._asks_upgrade = False  # the request in flight asked to switch protocols
        self.is_tunnel = False  # a 101 switched it: raw bytes both ways from now on (read, write)

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        if self.is_tunnel:
            self._take(data)
            return
        if not self.is_waiting_for_answer or self._message_complete:  # unasked bytes (a late or second answer)
            self._break()
            return
        self._got_response_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:  # a 101: the head is complete, what follows is not HTTP
            self._message_complete = True
            if self._asks_upgrade and self._parser.get_status_code() == 101:
                self.is_tunnel = self.is_broken = True  # never pooled again
                self._take(data[upgrade.args[0] :])
            else:  # a 101 nobody asked for (RFC 9110 15.2.2): nothing after it can be trusted
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
        if self.is_tunnel:
            self._wake_body()  # read() returns b"" once the buffered bytes are taken
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

    def send_head(self, head: bytes, *, is_head_request: bool, asks_upgrade: bool = False) -> asyncio.Future[ResponseHead]:
        """Write a request head (and start parsing the answer); return a future for the response head.

        `asks_upgrade`: the head asks to switch protocols, so a 101 answer makes this connection a tunnel.
        """
        assert self.transport is not None
        self.is_waiting_for_answer = True
        self._is_head_request = is_head_request
        self._asks_upgrade = asks_upgrade
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

    async def read(self) -> bytes:
        """Tunnel: return the next bytes the upstream sent, b"" once it has closed."""
        while not self._chunks:
            if self.transport is None:
                return b""
            self._body_waiter = self._loop.create_future()
            await self._body_waiter
            self._body_waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered < _READ_AHEAD // 2 and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return chunk

    @property
    def is_complete(self) -> bool:
        """Whether the last response has been read to its end, so the connection can carry another."""
        return self._message_complete and not self._chunks and self._error is None

    def close(self) -> None:
        self.is_broken = True
        if self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------ internals

    def _take(self, data: bytes) -> None:
        """Tunnel: keep bytes for read(), pausing the socket while too many wait."""
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
            self._wake_body()
        if self._buffered > _READ_AHEAD and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

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
