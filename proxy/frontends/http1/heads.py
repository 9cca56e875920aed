"""Requests without a body, read by llhttp (httptools) and answered without aiohttp's request machinery.

For every request aiohttp's server wakes its connection's task, starts a second task to run the
handler in, builds a URL object and a request object, and keeps response bookkeeping: about
6 µs of CPU on the benchmark machine, an eighth of relaying a small response. Most of what a
browser asks a dev server for (modules, assets, API reads) is a GET without a body, so a client
connection reads those heads itself and hands the handler a FastRequest, in one task. Whatever
else arrives — a body, an upgrade, a head llhttp rejects or one over aiohttp's limits, several
requests in one read — goes to aiohttp instead, from its first byte, and the connection stays
with aiohttp from then on: aiohttp's parser and error answers remain the only judges of
anything unusual.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, NamedTuple, cast

import httptools
from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.http_parser import RawRequestMessage
from aiohttp.http_writer import HttpVersion, StreamWriter
from aiohttp.streams import EMPTY_PAYLOAD
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

if TYPE_CHECKING:
    from aiohttp.web_protocol import RequestHandler

RawHeaders = tuple[tuple[bytes, bytes], ...]

# Fields that make a request more than a bare head: aiohttp reads those.
_NOT_FAST = frozenset({b"transfer-encoding", b"upgrade", b"expect"})
_VERSIONS = {"1.1": HttpVersion11, "1.0": HttpVersion10}


class RequestHead(NamedTuple):
    """A whole request without a body, as read off the connection."""

    method: str
    target: str  # decoded as aiohttp decodes it: UTF-8 with surrogate escapes, so encoding it back gives the bytes
    version: HttpVersion
    raw_headers: RawHeaders
    keep_alive: bool


class FastRequest:
    """A request without a body, with the attributes of aiohttp's BaseRequest that proxying reads.

    Whatever needs the rest of aiohttp's request (the dashboard, static files, a streamed
    response) gets a real one from as_aiohttp(), built on the same connection.
    """

    __slots__ = ("_aiohttp", "_protocol", "_writes", "headers", "keep_alive", "method", "raw_headers", "raw_path", "version")

    body_exists = False
    content_length = None

    def __init__(self, protocol: RequestHandler, head: RequestHead, writes: WriteBatch) -> None:
        self.method, self.raw_path, self.version, self.raw_headers, self.keep_alive = head
        self.headers = CIMultiDictProxy(CIMultiDict([(_text(name), _text(value)) for name, value in head.raw_headers]))
        self._protocol = protocol
        self._writes = writes
        self._aiohttp: web.BaseRequest | None = None

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._protocol.transport

    @property
    def secure(self) -> bool:
        return self._protocol.ssl_context is not None

    @property
    def remote(self) -> str | None:
        peername = self._protocol.peername
        return str(peername[0]) if isinstance(peername, (list, tuple)) else None

    def write_soon(self, data: bytes) -> None:
        """Write a whole response with the others ready in this pass of the event loop (see WriteBatch)."""
        transport = self._protocol.transport
        if transport is not None:
            self._writes.write(transport, data)

    def as_aiohttp(self) -> web.BaseRequest:
        """Return the same request as aiohttp's own, as its server would have made it."""
        if self._aiohttp is None:
            path, _, query = self.raw_path.partition("?")
            message = RawRequestMessage(
                self.method,
                self.raw_path,
                self.version,
                self.headers,
                self.raw_headers,
                not self.keep_alive,
                None,
                False,
                False,
                URL.build(path=path, query_string=query, encoded=True),
            )
            loop = asyncio.get_running_loop()
            task = cast("asyncio.Task[None]", asyncio.current_task())
            self._aiohttp = web.BaseRequest(message, EMPTY_PAYLOAD, self._protocol, StreamWriter(self._protocol, loop), task, loop)
        return self._aiohttp


class WriteBatch:
    """Small whole responses, written back to back once the event loop's current pass is done.

    Writing each one the moment it is ready wakes a client process per response; writing the
    ones ready in one pass together lets a client waiting on many connections (a browser, a load
    generator) read them in one go. Measured: about 6 % more small responses per second at 50
    connections. Only for connections read here: they take no next request until the answer
    is handed over, and flush the batch before they close.
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


ClientRequest = web.BaseRequest | FastRequest


def aiohttp_request(request: ClientRequest) -> web.BaseRequest:
    """Return aiohttp's request for either kind, for code that needs all of it."""
    return request if isinstance(request, web.BaseRequest) else request.as_aiohttp()


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class HeadReader:
    """Reads the requests of one client connection with llhttp, one head at a time. Pure: bytes in.

    After feed(), take() returns the request when what was read is one whole request without a
    body that the connection may answer itself; `needs_aiohttp` says it must go to aiohttp.
    """

    def __init__(self, *, max_line: int, max_field: int, max_headers: int) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._max_line, self._max_field, self._max_headers = max_line, max_field, max_headers
        self.needs_aiohttp = False
        self._begun = 0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_complete = False
        self._keep_alive = False
        self._complete = False

    def feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # malformed, an upgrade or CONNECT: for aiohttp
            self.needs_aiohttp = True
        if self._begun > 1 or len(self._url) > self._max_line:  # pipelined, or over aiohttp's limits
            self.needs_aiohttp = True
        if self._head_complete and not self._complete:  # a body follows
            self.needs_aiohttp = True

    @property
    def is_reading(self) -> bool:
        """Whether part of a head has arrived and the rest has not."""
        return self._begun > 0 and not self._complete

    def take(self) -> RequestHead | None:
        """Return the request read, when it is one the connection answers itself; reset for the next one."""
        if self.needs_aiohttp or not self._complete:
            return None
        head = self._plain_head()
        if head is None:
            self.needs_aiohttp = True
            return None
        self._begun, self._url, self._headers, self._head_complete, self._complete = 0, b"", [], False, False
        return head

    def _plain_head(self) -> RequestHead | None:
        version = _VERSIONS.get(self._parser.get_http_version())
        if version is None or not self._url.startswith(b"/") or len(self._headers) > self._max_headers:
            return None
        hosts = 0
        for name, value in self._headers:
            lower = name.lower()
            if lower in _NOT_FAST or len(name) + len(value) > self._max_field:
                return None
            if lower == b"host":
                hosts += 1
            elif lower == b"content-length" and value != b"0":
                return None
        if hosts != 1:
            return None
        method = self._parser.get_method().decode("ascii")
        return RequestHead(method, _text(self._url), version, tuple(self._headers), self._keep_alive)

    # ------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        self._begun += 1

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_complete = True
        self._keep_alive = self._parser.should_keep_alive()  # read now: llhttp resets it once the message is complete

    def on_message_complete(self) -> None:
        self._complete = True
