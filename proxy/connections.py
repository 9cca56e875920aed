"""Client connections: a deadline for each request head, a cap on open connections, quiet logs.

aiohttp's server bounds an idle connection by its keep-alive timer only, so a client that
trickles a request head byte by byte (slowloris) holds its socket for that whole time; and it
accepts connections until the process runs out of file descriptors. This subclass of its
connection handler adds both bounds and logs malformed requests in one line instead of a
traceback each (any web page can send them).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any, cast

from aiohttp import HttpVersion11, web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("proxy")

HEAD_TIMEOUT = 10.0  # seconds from a request head's first byte to its last
IDLE_TIMEOUT = 60.0  # seconds a keep-alive client connection may sit between requests
_FDS_PER_CONNECTION = 2  # the client's socket and the pooled upstream socket it uses
_FDS_RESERVED = 64  # listeners, the config watcher, logs, certificate files, the event loop


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
_MALFORMED_BODY = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 40\r\nConnection: close\r\n\r\nthe request body broke its chunked form\n"
_SLOW = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 48\r\nConnection: close\r\n\r\nthe request head took too long to arrive; retry\n"


class GuardedServer(web.Server):
    """aiohttp's low-level server whose connections are GuardedConnection, at most `max_connections` at once."""

    def __init__(self, handler: Any, *, max_connections: int, **kwargs: Any) -> None:
        super().__init__(handler, keepalive_timeout=IDLE_TIMEOUT, **kwargs)
        self.max_connections = max_connections
        self.at_capacity_logged = False

    def __call__(self) -> RequestHandler:
        return GuardedConnection(self, loop=self._loop, **self._kwargs)


class GuardedConnection(RequestHandler):
    """One client connection: closed with a 408 when a request head is not complete within HEAD_TIMEOUT."""

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._head_deadline: asyncio.TimerHandle | None = None
        self._is_refused = False

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
        if not self._is_refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._is_refused:
            return
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
        if transport is not None and not self._messages and self._current_request is None:
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
