"""Request heads without a body, read by llhttp (httptools): the light path of the HTTP/1.1 front-end. Pure.

For every request aiohttp's server wakes its connection's task, starts a second task to run the
handler in, builds a URL object and a request object, and keeps response bookkeeping: about
6 µs of CPU on the benchmark machine, an eighth of relaying a small response. Most of what a
browser asks a dev server for (modules, assets, API reads) is a GET without a body, so a client
connection reads those heads itself (HeadReader) and hands them to the core in one task.
Whatever else arrives (a body, an upgrade, a head llhttp rejects or one over aiohttp's limits,
several requests in one read) goes to aiohttp instead, from its first byte, and the connection
stays with aiohttp from then on: aiohttp's parser and error answers remain the only judges of
anything unusual.
"""

from __future__ import annotations

from typing import NamedTuple

import httptools

RawHeaders = tuple[tuple[bytes, bytes], ...]

# Fields that make a request more than a bare head: aiohttp reads those.
_NOT_FAST = frozenset({b"transfer-encoding", b"upgrade", b"expect"})
_VERSIONS = {"1.1": (1, 1), "1.0": (1, 0)}


class RequestHead(NamedTuple):
    """A whole request without a body, as read off the connection."""

    method: str
    target: str  # decoded as aiohttp decodes it: UTF-8 with surrogate escapes, so encoding it back gives the bytes
    version: tuple[int, int]
    raw_headers: RawHeaders
    keep_alive: bool


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


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")
