"""Every place the HTTP/1.1 front-end relies on aiohttp's server beyond its documented API, in one module.

Each reliance below has a test in tests/test_aiohttp_internals.py that fails when an aiohttp
release changes it, and pyproject.toml admits only the releases those tests passed on. Nothing
else in the package imports aiohttp's private modules or attributes.

1. The connection class: web.RequestHandler subclassed, made with its keyword arguments.
2. aiohttp's server finishes a handler's answer with prepare() and write_eof() on the returned
   response and reads its keep_alive: a response whose prepare() writes nothing marks an answer
   the front-end has already written itself.
3. set_parser(): after a 101, the connection's bytes (those read with the request head
   included) go to a reader of ours instead of aiohttp's parser.
4. A request body that breaks its chunked framing mid-stream: aiohttp queues the parse error
   (an _ErrInfo in the connection's _messages) for after the current request, whose body then
   waits forever; the front-end looks for it there.
5. Whether aiohttp parses requests with its C extension (llhttp) or its pure-Python fallback:
   the module its parser class comes from.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from aiohttp import http_parser, web, web_protocol


class RawBytesReader(Protocol):
    """What set_parser() feeds: every byte the client sends after the upgrade, then its end."""

    def feed_data(self, data: bytes) -> tuple[bool, bytes]: ...

    def feed_eof(self) -> None: ...


def new_connection(cls: type[web.RequestHandler], server: web.Server, **kwargs: Any) -> web.RequestHandler:
    """Return a connection of our RequestHandler subclass for aiohttp's server (its protocol factory)."""
    return cls(server, loop=asyncio.get_running_loop(), **kwargs)


class _AlreadySent(web.StreamResponse):
    """A response the front-end has written itself: aiohttp's server writes nothing more for it."""

    def __init__(self, *, keep_alive: bool) -> None:
        super().__init__()
        self._is_kept_alive = keep_alive

    @property
    def keep_alive(self) -> bool:
        """Whether aiohttp's server reads another request on this connection (it reads this after write_eof)."""
        return self._is_kept_alive

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def already_sent(*, keep_alive: bool) -> web.StreamResponse:
    """Return what a handler gives aiohttp's server for an answer it has written itself."""
    return _AlreadySent(keep_alive=keep_alive)


def take_raw_bytes(connection: web.RequestHandler, reader: RawBytesReader) -> None:
    """Hand every byte the client sends from now on (and those already read past the head) to reader."""
    connection.set_parser(reader)  # type: ignore[arg-type]  # typed for aiohttp's WebSocketReader; any feed_data/feed_eof reader works


def has_queued_parse_error(connection: web.RequestHandler, queued_before: int) -> bool:
    """Return whether the last data_received() queued a parse error behind the request being read."""
    messages = connection._messages
    return len(messages) > queued_before and isinstance(messages[-1][0], web_protocol._ErrInfo)


def queued_count(connection: web.RequestHandler) -> int:
    """Return how many parsed requests (or parse errors) wait in the connection's queue."""
    return len(connection._messages)


def parses_in_c() -> bool:
    """Return whether aiohttp reads requests with its C parser (llhttp), not its slower pure-Python one."""
    return http_parser.HttpRequestParser.__module__ == "aiohttp._http_parser"
