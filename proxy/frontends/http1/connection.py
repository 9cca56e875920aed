"""HTTP/1.1 client connections: each request turned into a ProxyRequest for the core, with an Http1Sink.

Two paths lead to the core. Bodyless request heads are read here by llhttp (heads.py) and
answered in one task; anything else (a body, an upgrade, several requests in one read, a head
llhttp rejects or one over the limits) goes to aiohttp's server from its first byte, and the
connection stays with aiohttp's parser from then on. Both paths build the same ProxyRequest
and answer through the same sink.

The connection also bounds what aiohttp's server does not: a deadline for each request head (a
client trickling one byte at a time), idle keep-alive connections, and a cap on open
connections; malformed requests are logged in one line instead of a traceback each (any web
page can send them).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any, Protocol, cast

from aiohttp import web

from proxy.forwarding.contract import ClientGone, ProxyRequest, RequestBody, ResponseSink
from proxy.frontends.http1 import aiohttp_internals
from proxy.frontends.http1.framing import authority_and_target, is_websocket_upgrade, response_head
from proxy.frontends.http1.heads import HeadReader, RequestHead
from proxy.frontends.http1.sink import ClientTunnel, Http1Sink, WriteBatch

log = logging.getLogger("proxy")

HEAD_TIMEOUT = 10.0  # seconds from a request head's first byte to its last
IDLE_TIMEOUT = 60.0  # seconds a keep-alive client connection may sit between requests
# Room for the large cookies dev apps accumulate on localhost (aiohttp's default is 8 KiB a line).
MAX_HEADER_FIELD = 32 * 1024
MAX_HEADERS = 128  # aiohttp's own limit, kept on the light path too
_FDS_PER_CONNECTION = 2  # the client's socket and the pooled upstream socket it uses
_FDS_RESERVED = 64  # listeners, the config watcher, logs, certificate files, the event loop
# Bytes a connection reads ahead while it answers a request, or of a head still incomplete,
# before it stops reading (the former) or leaves the head to aiohttp's limits (the latter).
_READ_AHEAD = 64 * 1024

_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 52\r\nConnection: close\r\n\r\nlocalhost-proxy has too many open connections; retry\n"
_MALFORMED_BODY = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 40\r\nConnection: close\r\n\r\nthe request body broke its chunked form\n"
)
_SLOW = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 48\r\nConnection: close\r\n\r\nthe request head took too long to arrive; retry\n"


class RequestHandling(Protocol):
    """The forwarding core, as a front-end sees it."""

    async def handle(self, request: ProxyRequest, sink: ResponseSink) -> object: ...


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


class Http1Server(web.Server):
    """aiohttp's low-level server whose connections are Http1Connection, at most `max_connections` at once."""

    def __init__(self, core: RequestHandling, *, max_connections: int) -> None:
        self._connection_options: dict[str, Any] = {
            "keepalive_timeout": IDLE_TIMEOUT,
            "max_field_size": MAX_HEADER_FIELD,
            "max_line_size": MAX_HEADER_FIELD,
            "max_headers": MAX_HEADERS,
            "access_log": None,  # the core writes its own access line, with the upstream in it
            "auto_decompress": False,  # request bodies are forwarded as sent
        }
        # handler_cancellation: a client that leaves cancels its request, and so the upstream request.
        super().__init__(self._answer_by_aiohttp, handler_cancellation=True, **self._connection_options)
        self.core = core
        self.max_connections = max_connections
        self.at_capacity_logged = False
        self.head_limits = {"max_line": MAX_HEADER_FIELD, "max_field": MAX_HEADER_FIELD, "max_headers": MAX_HEADERS}
        self.writes = WriteBatch(asyncio.get_running_loop())

    def __call__(self) -> web.RequestHandler:
        return aiohttp_internals.new_connection(Http1Connection, self, **self._connection_options)

    @staticmethod
    async def _answer_by_aiohttp(request: web.BaseRequest) -> web.StreamResponse:
        connection = request.protocol
        assert isinstance(connection, Http1Connection)
        return await connection.answer_by_aiohttp(request)


class Http1Connection(web.RequestHandler):
    """One client connection: light path first, aiohttp's from the first request that needs it."""

    def __init__(self, server: Http1Server, **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._server = server
        self._event_loop: asyncio.AbstractEventLoop = kwargs["loop"]
        self._head_deadline: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0  # when the light path last finished an answer (or the connection opened)
        self._is_refused = False
        self._is_closing = False
        self._head_reader: HeadReader | None = HeadReader(**server.head_limits)  # None once aiohttp reads
        self._unanswered = bytearray()  # what arrived since the last request read here
        self._answering: asyncio.Task[None] | None = None  # the request read here being answered
        self._aiohttp_sink: Http1Sink | None = None  # the answer of the request aiohttp's path is on
        self._is_reading_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._scheme = "http"
        self._client_ip = ""
        self._local_port: int | None = None

    # ------------------------------------------------------------ the connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._server
        if len(server.connections) >= server.max_connections:
            self._is_refused = True
            if not server.at_capacity_logged:  # once per episode, not once per refused client
                server.at_capacity_logged = True
                log.warning(
                    "reached %d open client connections (the limit this process's open-file limit allows); "
                    "answering new ones 503 until some close. Raise `ulimit -n` to allow more.",
                    server.max_connections,
                )
            transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses
            transport.write(_BUSY)
            transport.close()
            return
        if server.at_capacity_logged and len(server.connections) < server.max_connections * 0.9:
            server.at_capacity_logged = False
        super().connection_made(transport)
        self.keep_alive(True)  # stops aiohttp's idle timer: the light path keeps its own (_idle_timer)
        self._scheme = "https" if transport.get_extra_info("sslcontext") is not None else "http"
        peername = transport.get_extra_info("peername")
        self._client_ip = str(peername[0]) if isinstance(peername, (list, tuple)) else ""
        sockname = transport.get_extra_info("sockname")
        self._local_port = sockname[1] if isinstance(sockname, (list, tuple)) else None
        self._idle_since = self._event_loop.time()
        self._idle_timer = self._event_loop.call_at(self._idle_since + IDLE_TIMEOUT, self._idle_too_long)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_deadline()
        self._cancel_idle_timer()
        if self._answering is not None:
            self._answering.cancel()  # the client left: its upstream request goes too, as with aiohttp's handlers
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ClientGone("the client has gone"))
        if not self._is_refused:
            super().connection_lost(exc)

    def close(self) -> None:
        self._is_closing = True
        super().close()

    def force_close(self) -> None:
        self._is_closing = True
        super().force_close()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    async def drain(self) -> None:
        """Wait while the client is not reading what was written; raise ClientGone if it has gone."""
        if not self.writing_paused:
            return
        if self.transport is None:
            raise ClientGone("the client has gone")
        self._drain_waiter = self._event_loop.create_future()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None

    def take_raw_bytes(self, tunnel: ClientTunnel) -> None:
        """After a 101: every byte from the client goes to the tunnel."""
        aiohttp_internals.take_raw_bytes(self, tunnel)

    def data_received(self, data: bytes) -> None:
        if self._is_refused:
            return
        if self._head_reader is not None:
            self._read_here(data)
        else:
            self._read_by_aiohttp(data)

    # ------------------------------------------------------------ the light path

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
            self._answering = self._event_loop.create_task(self._answer_here(head))
        elif self._head_reader.needs_aiohttp or len(self._unanswered) > _READ_AHEAD:
            self._head_reader = None
            unanswered = bytes(self._unanswered)
            self._unanswered.clear()
            self._read_by_aiohttp(unanswered)
        elif self._head_reader.is_reading and self._head_deadline is None:
            self._head_deadline = self._event_loop.call_later(HEAD_TIMEOUT, self._head_too_slow)

    async def _answer_here(self, head: RequestHead) -> None:
        """Answer a request read here; then keep the connection for the next one, or close it."""
        host = next((value for name, value in head.raw_headers if name.lower() == b"host"), b"")  # exactly one (heads.py)
        request = ProxyRequest(
            head.method,
            head.target,
            host.decode("utf-8", "surrogateescape"),
            head.raw_headers,
            None,
            scheme=self._scheme,
            client_ip=self._client_ip,
            local_port=self._local_port,
            protocol="HTTP/1.1" if head.version == (1, 1) else "HTTP/1.0",
        )
        sink = Http1Sink(self, head.method, head.version, head.keep_alive, self._server.writes)
        try:
            await self._server.core.handle(request, sink)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client has gone
        except Exception as exc:  # a bug: log it; the connection closes
            self.log_exception("Unhandled exception", exc_info=exc)
        finally:
            self._answering = None
        if not sink.is_done:  # never leave a client waiting for an answer that will not come
            sink.abort()
        if not sink.keep_alive or self._is_closing or self.transport is None:
            self._server.writes.flush()  # an answer waiting to be written goes before the close
            self.force_close()
            return
        self._idle_since = self._event_loop.time()  # the idle timer reads this when it fires: no timer per request
        if self._is_reading_paused:
            self._is_reading_paused = False
            self.transport.resume_reading()
        if self._unanswered:
            waiting = bytes(self._unanswered)
            self._unanswered.clear()
            self.data_received(waiting)

    def _idle_too_long(self) -> None:
        """Close a connection read by the light path that has sat idle for IDLE_TIMEOUT; else look again when it could have."""
        self._idle_timer = None
        if self._head_reader is None:
            return  # aiohttp's path reads it now, with aiohttp's own idle timer
        if self._answering is not None or self._head_reader.is_reading:  # busy, or the head deadline watches it
            self._idle_timer = self._event_loop.call_later(IDLE_TIMEOUT, self._idle_too_long)
            return
        due = self._idle_since + IDLE_TIMEOUT
        if self._event_loop.time() >= due:
            self.force_close()
        else:
            self._idle_timer = self._event_loop.call_at(due, self._idle_too_long)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    # ------------------------------------------------------------ aiohttp's path

    def _read_by_aiohttp(self, data: bytes) -> None:
        self._cancel_idle_timer()
        queued = aiohttp_internals.queued_count(self)
        super().data_received(data)
        sink = self._aiohttp_sink
        if sink is not None and aiohttp_internals.has_queued_parse_error(self, queued):
            self._end_malformed_body(sink)
            return
        if sink is not None or self._is_closing:
            self._cancel_head_deadline()  # a request is being answered (its body may be streaming in)
        elif self._head_deadline is None:
            self._head_deadline = self._event_loop.call_later(HEAD_TIMEOUT, self._head_too_slow)

    async def answer_by_aiohttp(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer a request aiohttp's parser read; return what tells aiohttp's server it is sent."""
        self._cancel_head_deadline()
        version = (request.version.major, request.version.minor)
        sink = Http1Sink(self, request.method, version, request.keep_alive)
        authority, target = authority_and_target(request.raw_path, request.headers.get("Host", ""))
        # RFC 9110 10.1.1: an HTTP/1.0 client never waits for 100 Continue, so it gets none.
        expects_continue = version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue"
        proxy_request = ProxyRequest(
            request.method,
            target,
            authority,
            request.raw_headers,
            _AiohttpBody(request, sink, expects_continue) if request.body_exists else None,
            scheme=self._scheme,
            client_ip=self._client_ip,
            local_port=self._local_port,
            protocol=f"HTTP/{version[0]}.{version[1]}",
            upgrade="websocket" if is_websocket_upgrade(request.method, request.raw_headers) else None,
        )
        self._aiohttp_sink = sink
        try:
            await self._server.core.handle(proxy_request, sink)
        finally:
            self._aiohttp_sink = None
        if not sink.is_done:
            sink.abort()
        return aiohttp_internals.already_sent(keep_alive=sink.keep_alive)

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        transport = self.transport
        if transport is not None and self._aiohttp_sink is None and self._answering is None and aiohttp_internals.queued_count(self) == 0:
            transport.write(_SLOW)
            self.force_close()
            transport.close()

    def _end_malformed_body(self, sink: Http1Sink) -> None:
        """A request body broke its framing while streaming upstream: answer 400 if nothing was sent yet, and close.

        aiohttp queues the parse error for after the current request, whose body stream would
        then wait forever; closing the connection cancels the request and its upstream request.
        """
        transport = self.transport
        if transport is None:
            return
        log.info("closed a connection from %s: its request body broke its chunked framing", self._client_ip or "?")
        if not sink.is_started and not sink.wrote_interim:
            transport.write(_MALFORMED_BODY)
        self.force_close()
        transport.close()

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None) -> web.StreamResponse:
        """Answer a request aiohttp could not parse (or a bug's 500) in HTTP/1.1 and close (RFC 9110 6.2: a server sends its own version)."""
        self.log_exception("Error handling request", exc_info=exc)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            phrase = _phrase(status)
            body = f"{status} {phrase}\n" + (f"\n{message}\n" if message else "")
            data = body.encode("utf-8", "replace")
            framing = b"Content-Length: %d\r\nConnection: close\r\n" % len(data)
            transport.write(response_head((1, 1), status, "", [(b"Content-Type", b"text/plain; charset=utf-8")], framing) + data)
        return aiohttp_internals.already_sent(keep_alive=False)

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """Malformed requests get one line; anything else keeps its traceback."""
        exc = kwargs.get("exc_info")
        if isinstance(exc, web.HTTPException) or type(exc).__module__ == "aiohttp.http_exceptions":
            message = " ".join(str(getattr(exc, "message", exc)).split())
            log.info("refused a malformed request from %s: %s", self._client_ip or "?", message[:200])
            return
        super().log_exception(*args, **kwargs)


class _AiohttpBody(RequestBody):
    """A request body as aiohttp's parser delivers it; asks for it with 100 Continue on the first pull when the client waits for that."""

    def __init__(self, request: web.BaseRequest, sink: Http1Sink, expects_continue: bool) -> None:
        super().__init__(request.content_length)
        self._request = request
        self._sink = sink
        self._expects_continue = expects_continue

    async def chunks(self) -> AsyncIterator[bytes]:
        self.is_started = True
        if self._expects_continue and not self._sink.is_started:
            self._sink.send_interim(100)  # the upstream is reached: now the body may come (RFC 9110 10.1.1)
        try:
            async for chunk in self._request.content.iter_any():
                yield chunk
        except Exception as exc:  # the connection broke, or the body broke its framing
            raise ClientGone(f"the request body was cut off ({exc})") from exc


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
