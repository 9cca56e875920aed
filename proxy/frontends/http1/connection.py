"""Client connections: bodyless requests answered directly, a deadline for each request head, a
cap on open connections, quiet logs.

aiohttp's server bounds an idle connection by its keep-alive timer only, so a client that
trickles a request head byte by byte (slowloris) holds its socket for that whole time; and it
accepts connections until the process runs out of file descriptors. This subclass of its
connection handler adds both bounds and logs malformed requests in one line instead of a
traceback each (any web page can send them). It also reads plain GET-like requests itself
(see fastpath.py) and passes anything else to aiohttp.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import HttpVersion11, web
from aiohttp.web_protocol import RequestHandler

from proxy.frontends.http1.heads import ClientRequest, FastRequest, HeadReader, WriteBatch

log = logging.getLogger("proxy")

Handler = Callable[[ClientRequest], Awaitable[web.StreamResponse]]

HEAD_TIMEOUT = 10.0  # seconds from a request head's first byte to its last
IDLE_TIMEOUT = 60.0  # seconds a keep-alive client connection may sit between requests
_FDS_PER_CONNECTION = 2  # the client's socket and the pooled upstream socket it uses
_FDS_RESERVED = 64  # listeners, the config watcher, logs, certificate files, the event loop
# Bytes a connection reads ahead while it answers a request, or of a head still incomplete,
# before it stops reading (the former) or leaves the head to aiohttp's limits (the latter).
_READ_AHEAD = 64 * 1024


def raise_open_file_limit() -> int:
    """Raise this process's open-file limit from its soft to its hard value; return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            return wanted
        except (ValueError, OSError):  # macOS refuses more than OPEN_MAX
            return soft
    return soft


def connection_cap(open_file_limit: int) -> int:
    """Return how many client connections can be served at once with this many file descriptors."""
    return max(16, (open_file_limit - _FDS_RESERVED) // _FDS_PER_CONNECTION)


_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 52\r\nConnection: close\r\n\r\nlocalhost-proxy has too many open connections; retry\n"
_MALFORMED_BODY = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 40\r\nConnection: close\r\n\r\nthe request body broke its chunked form\n"
)
_SLOW = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 48\r\nConnection: close\r\n\r\nthe request head took too long to arrive; retry\n"


class GuardedServer(web.Server):
    """aiohttp's low-level server whose connections are GuardedConnection, at most `max_connections` at once."""

    def __init__(self, handler: Handler, *, max_connections: int, max_field_size: int, max_line_size: int, **kwargs: Any) -> None:
        super().__init__(handler, keepalive_timeout=IDLE_TIMEOUT, max_field_size=max_field_size, max_line_size=max_line_size, **kwargs)
        self.handler = handler  # aiohttp's own attribute is typed for its requests only
        self.max_connections = max_connections
        self.at_capacity_logged = False
        self.head_limits = {"max_line": max_line_size, "max_field": max_field_size, "max_headers": 128}  # aiohttp's own
        self.writes = WriteBatch(self._loop)

    def __call__(self) -> RequestHandler:
        return GuardedConnection(self, loop=self._loop, **self._kwargs)


class GuardedConnection(RequestHandler):
    """One client connection: closed with a 408 when a request head is not complete within HEAD_TIMEOUT.

    Heads are read here until one needs aiohttp (fastpath.py); from then on aiohttp reads them all.
    """

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._head_deadline: asyncio.TimerHandle | None = None
        self._is_refused = False
        self._head_reader: HeadReader | None = HeadReader(**manager.head_limits)  # None once aiohttp reads
        self._unanswered = bytearray()  # what arrived since the last request read here
        self._answering: asyncio.Task[None] | None = None  # the request read here being answered
        self._is_reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self._guard.connections) >= self._guard.max_connections:
            self._is_refused = True
            if not self._guard.at_capacity_logged:  # once per episode, not once per refused client
                self._guard.at_capacity_logged = True
                log.warning(
                    "reached %d open client connections (the limit this process's open-file limit allows); "
                    "answering new ones 503 until some close. Raise `ulimit -n` to allow more.",
                    self._guard.max_connections,
                )
            transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses
            transport.write(_BUSY)
            transport.close()
            return
        if self._guard.at_capacity_logged and len(self._guard.connections) < self._guard.max_connections * 0.9:
            self._guard.at_capacity_logged = False
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_deadline()
        if self._answering is not None:
            self._answering.cancel()  # the client left: its upstream request goes too, as with aiohttp's handlers
        if not self._is_refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._is_refused:
            return
        if self._head_reader is not None:
            self._read_here(data)
        else:
            self._read_by_aiohttp(data)

    def _read_here(self, data: bytes) -> None:
        assert self._head_reader is not None
        self._unanswered += data
        if self._answering is not None:  # the next request waits until this one is answered, as in HTTP/1.1
            if len(self._unanswered) > _READ_AHEAD and self.transport is not None and not self._is_reading_paused:
                self._is_reading_paused = True
                self.transport.pause_reading()
            return
        self._head_reader.feed(data)
        head = self._head_reader.take()
        if head is not None:
            self._unanswered.clear()
            self._cancel_head_deadline()
            self._answering = self._loop.create_task(self._answer(FastRequest(self, head, self._guard.writes)))
        elif self._head_reader.needs_aiohttp or len(self._unanswered) > _READ_AHEAD:
            self._head_reader = None
            unanswered = bytes(self._unanswered)
            self._unanswered.clear()
            self._read_by_aiohttp(unanswered)
        elif self._head_reader.is_reading and self._head_deadline is None:
            self._head_deadline = self._loop.call_later(HEAD_TIMEOUT, self._head_too_slow)

    async def _answer(self, request: FastRequest) -> None:
        """Answer a request read here as aiohttp's server would: the handler's response, then keep-alive or close."""
        keep_alive = False
        try:
            response = await self._guard.handler(request)
            if not response.prepared:  # the proxy's own answers (pages, redirects): aiohttp's writer sends them
                await response.prepare(request.as_aiohttp())
                await response.write_eof()
            keep_alive = bool(response.keep_alive)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client has gone
        except Exception as exc:  # a bug: log it; the connection closes
            self.log_exception("Unhandled exception", exc_info=exc)
        finally:
            self._answering = None
        if not keep_alive or self._force_close or self._close or self.transport is None:
            self._guard.writes.flush()  # an answer waiting to be written goes before the close
            self.force_close()
            return
        self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
        if self._is_reading_paused:
            self._is_reading_paused = False
            self.transport.resume_reading()
        if self._unanswered:
            waiting = bytes(self._unanswered)
            self._unanswered.clear()
            self.data_received(waiting)

    def _process_keepalive(self) -> None:
        if self._answering is not None:  # aiohttp sees an idle connection, but a request read here is being answered
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
        super()._process_keepalive()

    def _read_by_aiohttp(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        if self._current_request is not None and len(self._messages) > queued and type(self._messages[-1][0]).__name__ == "_ErrInfo":
            self._end_malformed_body(self._current_request)
            return
        if self._messages or self._force_close or self._current_request is not None:
            self._cancel_head_deadline()  # a head is complete, or a body is streaming in
        elif self._head_deadline is None:
            self._head_deadline = self._loop.call_later(HEAD_TIMEOUT, self._head_too_slow)

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        transport = self.transport
        if transport is not None and not self._messages and self._current_request is None and self._answering is None:
            transport.write(_SLOW)
            self.force_close()
            transport.close()

    def _end_malformed_body(self, request: web.BaseRequest) -> None:
        """A request body broke its framing while streaming upstream: answer 400 if nothing was sent yet, and close.

        aiohttp queues the parse error for after the current request, whose body stream would
        then wait forever; closing the connection cancels the handler and its upstream request.
        """
        transport = self.transport
        if transport is None:
            return
        log.info("closed a connection from %s: its request body broke its chunked framing", self.peername[0] if self.peername else "?")
        if request.writer.output_size == 0:
            transport.write(_MALFORMED_BODY)
        self.force_close()
        transport.close()

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None) -> web.StreamResponse:
        # aiohttp answers a request it could not parse in HTTP/1.0; a server sends its own version (RFC 9110 6.2).
        request._cache["version"] = HttpVersion11
        return super().handle_error(request, status, exc, message)

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """Malformed requests get one line; anything else keeps its traceback."""
        exc = kwargs.get("exc_info")
        if isinstance(exc, web.HTTPException) or type(exc).__module__ == "aiohttp.http_exceptions":
            message = " ".join(str(getattr(exc, "message", exc)).split())
            log.info("refused a malformed request from %s: %s", self.peername[0] if self.peername else "?", message[:200])
            return
        super().log_exception(*args, **kwargs)
