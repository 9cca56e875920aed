"""Forwarding one request to its upstream: streams HTTP bodies both ways, pipes WebSockets,
and turns failures into UpstreamFailure for the error pages.

Never reads a whole body: every byte moves through bounded buffers with backpressure. Once
bytes have reached the client no error page is possible: the response is aborted instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from proxy.config.model import Upstream, Upstreams
from proxy.diagnostics.inspector import Exchange
from proxy.forwarding.headers import ClientFields, Field, request_fields_for_upstream, response_fields_for_client, serialize_fields
from proxy.forwarding.health import UpstreamBook
from proxy.frontends.http1.heads import ClientRequest, aiohttp_request
from proxy.frontends.http1.relay import RelayedResponse
from proxy.routing.table import RouteMatch
from proxy.upstream.client import (
    IDEMPOTENT_METHODS,
    UPSTREAM_IDLE_TIMEOUT,
    ResponseHead,
    UpstreamClosed,
    UpstreamConnection,
    UpstreamError,
    UpstreamPool,
    UpstreamProtocolError,
)

log = logging.getLogger("proxy")
T = TypeVar("T")

# Close code for "going away": the proxy is shutting down (RFC 6455 7.4.1).
WS_GOING_AWAY = 1001
# Codes that may not be sent in a close frame (RFC 6455 7.4.1); replaced by a normal close.
_UNSENDABLE_CLOSE_CODES = {None, 1004, 1005, 1006, 1015}


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """Why a request could not reach its upstream, in words for the error page and log."""

    status: int  # 502, 504
    reason: str  # "connection refused"
    hint: str
    tried: tuple[str, ...]  # "127.0.0.1:3000", "[::1]:3000"
    upstream: Upstream | None = None  # the last one tried

    @property
    def is_refused(self) -> bool:
        return self.reason == "connection refused"


class LoopbackResolver(AbstractResolver):
    """Resolves "localhost" to both loopback addresses without asking the system.

    /etc/hosts varies (some list only 127.0.0.1, some ::1 first); dev servers bind either.
    Other names go to aiohttp's default resolver.
    """

    def __init__(self) -> None:
        self._default = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if host == "localhost":
            return [
                ResolveResult(hostname=host, host=addr, port=port, family=fam, proto=0, flags=socket.AI_NUMERICHOST)
                for addr, fam in (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6))
            ]
        return await self._default.resolve(host, port, family)

    async def close(self) -> None:
        await self._default.close()


def new_upstream_session() -> aiohttp.ClientSession:
    """Return the client WebSocket handshakes go through (plain HTTP uses upstream_client.UpstreamPool)."""
    connector = aiohttp.TCPConnector(
        limit=0,  # a dev server behind a busy page gets as many connections as the browser opens
        resolver=LoopbackResolver(),
        keepalive_timeout=UPSTREAM_IDLE_TIMEOUT,
        ttl_dns_cache=None,
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,  # bodies pass through untouched, Content-Encoding and all
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),  # never remember one user's cookies for another request
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        read_bufsize=2**16,
    )


@dataclass(eq=False)
class OpenStream:
    """A long-lived exchange the shutdown must end rather than wait for: an SSE stream or a WebSocket."""

    end: Callable[[], Awaitable[None]]
    is_ending: bool = False


class _RequestBody:
    """The client's request body as an async iterator, sending 100 Continue on first pull.

    Every chunk also passes the exchange's tap, which keeps the start for the inspector.
    """

    def __init__(self, request: web.BaseRequest, exchange: Exchange) -> None:
        self._request = request
        self._tap = exchange.request_body
        self.started = False

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        if self._request.headers.get("Expect", "").lower() == "100-continue":
            # The upstream connection is up: now ask the client for its body (RFC 9110 10.1.1).
            await self._request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        async for chunk in self._request.content.iter_any():
            self._tap.feed(chunk)
            yield chunk
        self._tap.is_complete = True


def _aiohttp_headers(raw: Iterable[Field]) -> list[tuple[str, str]]:
    """Decode fields for aiohttp's WebSocket client, whose writer encodes UTF-8."""
    return [(n.decode("latin-1"), _field_value(v)) for n, v in raw]


def _field_value(raw: bytes) -> str:
    """Decode a field value so that aiohttp's writer (which encodes UTF-8) sends the same bytes on.

    Valid UTF-8 (the common obs-text) passes byte for byte; other bytes cannot and fall back to Latin-1.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


@dataclass(slots=True)
class _Sent:
    """A request on its way: the connection it went out on, the answer's head, the body still being sent."""

    connection: UpstreamConnection
    head: ResponseHead
    body_task: asyncio.Task[None] | None


def _request_head(method: str, target: str, fields: list[Field], *, chunked: bool) -> bytes:
    # aiohttp hands the target over decoded as UTF-8 with surrogate escapes: this gives back the bytes received.
    request_line = f"{method} {target} HTTP/1.1\r\n".encode("utf-8", "surrogateescape")
    return request_line + serialize_fields(fields) + (b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"\r\n")


async def _send_body(connection: UpstreamConnection, body: _RequestBody, chunked: bool) -> None:
    """Stream the client's body upstream; an app that stops reading (it answered early) just ends it."""
    try:
        async for chunk in body.chunks():
            if chunked:
                if chunk:
                    await connection.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                await connection.write(chunk)
        if chunked:
            await connection.write(b"0\r\n\r\n")
    except (UpstreamError, OSError):
        connection.is_broken = True


def describe_failure(exc: BaseException, upstream: Upstream, timeout: float) -> UpstreamFailure:
    """Return the user-facing reason an attempt on `upstream` failed."""
    tried = upstream.tried_addresses
    port = upstream.port
    if isinstance(exc, (aiohttp.ConnectionTimeoutError, asyncio.TimeoutError)):
        return UpstreamFailure(
            504,
            f"no answer within {timeout:g} s while connecting",
            f"Is the app on port {port} stuck, or is a firewall dropping the connection? Raise connect_timeout in sites.yaml if it is just slow to start.",
            tried,
        )
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | ssl.SSLCertVerificationError):
        why = exc.certificate_error if isinstance(exc, aiohttp.ClientConnectorCertificateError) else exc.verify_message
        return UpstreamFailure(
            502,
            f"the app's TLS certificate was not accepted ({why})",
            "Set `verify: false` on this site, or give the app a certificate this machine trusts.",
            tried,
        )
    if isinstance(exc, (aiohttp.ClientConnectorSSLError, ssl.SSLError)):
        if upstream.scheme == "https":
            hint = f"Does the app on port {port} speak plain HTTP? Then write http://{upstream.authority} in sites.yaml."
        else:
            hint = f"Does the app on port {port} speak HTTPS? Then write https://{upstream.authority} in sites.yaml."
        return UpstreamFailure(502, "the TLS handshake failed", hint, tried)
    if isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError) or (isinstance(exc, OSError) and not isinstance(exc, aiohttp.ClientError)):
        os_error = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
        if isinstance(os_error, ConnectionRefusedError) or getattr(os_error, "errno", None) == 111:
            return UpstreamFailure(502, "connection refused", f"Nothing is listening on port {port}: start your app, or change the port in sites.yaml.", tried)
        return UpstreamFailure(
            502, f"cannot connect: {os_error.strerror or os_error}", f"Check that the app is running and reachable at {upstream.authority}.", tried
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError | UpstreamClosed):
        hint = "The app closed the connection without answering: check its own log."
        if upstream.scheme == "http":
            hint += f" If it speaks HTTPS, write https://{upstream.authority} in sites.yaml."
        return UpstreamFailure(502, "the app closed the connection without answering", hint, tried)
    if isinstance(exc, aiohttp.ClientResponseError | UpstreamProtocolError):
        hint = "The app answered with something that is not valid HTTP."
        if upstream.scheme == "http":
            hint += f" If it speaks HTTPS, write https://{upstream.authority} in sites.yaml."
        message = exc.message if isinstance(exc, aiohttp.ClientResponseError) else str(exc)
        return UpstreamFailure(502, f"invalid response from the app ({message})", hint, tried)
    if isinstance(exc, aiohttp.ClientError | OSError | UpstreamError):
        return UpstreamFailure(502, f"upstream error: {exc}", "Check the app's own log.", tried)
    raise exc


def _is_retryable(failure: UpstreamFailure) -> bool:
    """Return whether the next upstream of a list may take the request instead."""
    return failure.is_refused or failure.status == 504


def is_websocket_upgrade(request: ClientRequest) -> bool:
    """Return whether a request asks to become a WebSocket (the only upgrade the proxy tunnels)."""
    if request.method != "GET" or "Upgrade" not in request.headers:
        return False
    upgrade = request.headers.get("Upgrade", "").lower()
    connection = {t.strip().lower() for t in request.headers.get("Connection", "").split(",")}
    return upgrade == "websocket" and "upgrade" in connection


class Forwarder:
    """Sends requests to upstreams through one pooled session and records their health."""

    def __init__(self, session: aiohttp.ClientSession, book: UpstreamBook) -> None:
        self.session = session  # WebSockets
        self.pool = UpstreamPool()  # everything else
        self.book = book
        self.open_streams: set[OpenStream] = set()

    async def end_open_streams(self) -> None:
        """End every event stream and close every WebSocket with 1001, for shutdown."""
        streams = list(self.open_streams)
        for stream in streams:
            stream.is_ending = True
        await asyncio.gather(*(s.end() for s in streams), return_exceptions=True)

    def _headers(
        self, request: ClientRequest, routed_host: str, upstreams: Upstreams, upstream: Upstream, via: list[str], proto: str, *, websocket: bool = False
    ) -> list[Field]:
        return request_fields_for_upstream(
            request.raw_headers,
            client_ip=request.remote or "",
            proto=proto,
            host_header=routed_host,
            upstream_host=None if upstreams.preserve_host else upstream.authority,
            via=via,
            websocket=websocket,
        )

    async def _first_reachable(
        self, upstreams: Upstreams, attempt: Callable[[Upstream], Awaitable[T]], *, may_retry: Callable[[], bool] = lambda: True
    ) -> tuple[Upstream, T] | UpstreamFailure:
        """Return the first upstream, in turn, that `attempt` reaches and what it returned; else the last failure.

        A refused or timed-out upstream passes the request to the next one in the list, as long as
        `may_retry()` says nothing of the request is gone yet.
        """
        failure: UpstreamFailure | None = None
        for upstream in self.book.attempt_order(upstreams):
            try:
                result = await attempt(upstream)
            except (TimeoutError, UpstreamError, aiohttp.ClientError, OSError) as exc:
                failure = dataclasses.replace(describe_failure(exc, upstream, upstreams.connect_timeout), upstream=upstream)
                self.book.mark_down(upstream, failure.reason)
                log.info("%s: %s (tried %s)", upstream, failure.reason, ", ".join(failure.tried))
                if _is_retryable(failure) and may_retry():
                    continue
                break
            self.book.mark_up(upstream)
            return upstream, result
        assert failure is not None
        return failure

    async def forward_http(
        self, request: ClientRequest, match: RouteMatch, upstreams: Upstreams, exchange: Exchange, *, via: list[str], proto: str
    ) -> web.StreamResponse | UpstreamFailure:
        """Return the streamed response, or the failure when no upstream could be reached."""
        body = _RequestBody(aiohttp_request(request), exchange) if request.body_exists else None
        method = request.method
        # Without a Content-Length the client sent it chunked (its Transfer-Encoding is hop-by-hop): so does the proxy.
        chunked = body is not None and "Content-Length" not in request.headers

        async def send(upstream: Upstream) -> _Sent:
            headers = self._headers(request, exchange.host_header, upstreams, upstream, via, proto)
            head = _request_head(method, match.target, headers, chunked=chunked)
            verify = upstreams.should_verify(upstream)
            connection = self.pool.take_idle(upstream, verify=verify) or await self.pool.connect(
                upstream, verify=verify, connect_timeout=upstreams.connect_timeout
            )
            while True:
                answer = connection.send_head(head, is_head_request=method == "HEAD")
                body_task = asyncio.create_task(_send_body(connection, body, chunked)) if body is not None else None
                try:
                    return _Sent(connection, await answer, body_task)
                except BaseException as exc:
                    if body_task is not None:
                        body_task.cancel()
                    self.pool.release(connection)
                    # A pooled connection the app had closed meanwhile: once more on a new one, when that cannot repeat a side effect.
                    if not (isinstance(exc, UpstreamClosed) and exc.before_response and connection.reused and body is None and method in IDEMPOTENT_METHODS):
                        raise
                connection = await self.pool.connect(upstream, verify=verify, connect_timeout=upstreams.connect_timeout)

        # Once part of the body has gone upstream it cannot be sent to another one.
        reached = await self._first_reachable(upstreams, send, may_retry=lambda: body is None or not body.started)
        if isinstance(reached, UpstreamFailure):
            return reached
        upstream, sent = reached
        exchange.upstream = upstream.authority
        try:
            fields = response_fields_for_client(sent.head.status, sent.head.headers)
            if isinstance(fields, str):
                sent.connection.close()  # what follows on it cannot be trusted
                return UpstreamFailure(
                    502,
                    f"the app sent {fields}",
                    "The proxy does not pass on a response it cannot frame unambiguously; check the app's response code.",
                    upstream.tried_addresses,
                    upstream,
                )
            return await self._relay_response(request, sent, fields, exchange)
        finally:
            if sent.body_task is not None and not sent.body_task.done():
                sent.connection.close()  # the app answered before taking the whole body: the rest cannot follow on this connection
                sent.body_task.cancel()
            self.pool.release(sent.connection)

    async def _relay_response(self, request: ClientRequest, sent: _Sent, fields: ClientFields, exchange: Exchange) -> web.StreamResponse:
        head, connection = sent.head, sent.connection
        exchange.response_started(head.status, head.reason, tuple(head.headers))
        tap = exchange.response_body
        whole_body = connection.whole_body() if head.has_body else b""
        response = RelayedResponse(
            head.status,
            head.reason,
            fields.lines,
            content_length=head.content_length,
            has_date=fields.has_date,
        )
        if whole_body is not None:  # the common small response: one write, head and body together
            tap.feed(whole_body)
            try:
                response.send_whole(request, whole_body)
            except ConnectionResetError:
                exchange.note = "client went away"
                return response
            tap.is_complete = True
            return response
        stream: OpenStream | None = None
        if fields.is_event_stream:
            exchange.is_stream = True

            async def end_event_stream() -> None:
                connection.close()  # the relay loop below sees the end and finishes cleanly

            stream = OpenStream(end=end_event_stream)
            self.open_streams.add(stream)
        try:
            await response.prepare(aiohttp_request(request))
            async for chunk in connection.body():
                await response.write(chunk)
                tap.feed(chunk)
        except ConnectionResetError:  # raised by writes to a client that has gone
            exchange.note = "client went away; upstream request cancelled"
            connection.close()
            return response
        except UpstreamError as exc:
            if not (stream and stream.is_ending):  # else shutdown ended it on purpose: finish cleanly
                # Never re-frame a cut-off body as complete: abort so the client sees the break.
                exchange.note = f"upstream broke off mid-response ({exc})"
                _abort(request)
                return response
        finally:
            if stream:
                self.open_streams.discard(stream)
        await response.write_eof()
        tap.is_complete = True
        return response

    async def forward_websocket(
        self, request: web.BaseRequest, match: RouteMatch, upstreams: Upstreams, exchange: Exchange, *, via: list[str], proto: str
    ) -> web.StreamResponse | UpstreamFailure:
        """Return the client-side WebSocket once both sides have closed, or why the upstream refused."""
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]

        async def connect(upstream: Upstream) -> aiohttp.ClientWebSocketResponse | web.Response:
            scheme = "wss" if upstream.scheme == "https" else "ws"
            try:
                # ws_connect has no connect timeout of its own; the handshake counts as connecting.
                async with asyncio.timeout(upstreams.connect_timeout):
                    return await self.session.ws_connect(
                        URL(f"{scheme}://{upstream.authority}{match.target}", encoded=True),
                        headers=_aiohttp_headers(self._headers(request, exchange.host_header, upstreams, upstream, via, proto, websocket=True)),
                        protocols=offered,
                        autoclose=False,
                        autoping=False,  # pings and pongs travel end to end
                        max_msg_size=0,
                        ssl=upstreams.should_verify(upstream),
                        timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                    )
            except aiohttp.WSServerHandshakeError as exc:  # the app answered, just not with 101
                exchange.note = "upstream refused the WebSocket upgrade"
                text = f"The app at {upstream.authority} refused the WebSocket upgrade ({exc.status} {exc.message}).\n"
                return web.Response(status=exc.status if exc.status >= 400 else 502, text=text)

        reached = await self._first_reachable(upstreams, connect)
        if isinstance(reached, UpstreamFailure):
            return reached
        upstream, result = reached
        exchange.upstream = upstream.authority
        if isinstance(result, web.Response):
            return result
        return await self._pipe_websocket(request, result, exchange)

    async def _pipe_websocket(self, request: web.BaseRequest, upstream_ws: aiohttp.ClientWebSocketResponse, exchange: Exchange) -> web.StreamResponse:
        client_ws = web.WebSocketResponse(
            protocols=(upstream_ws.protocol,) if upstream_ws.protocol else (),
            autoclose=False,
            autoping=False,
            max_msg_size=0,
        )
        async with upstream_ws:
            await client_ws.prepare(request)
            exchange.status, exchange.reason, exchange.is_stream = 101, "Switching Protocols", True

            async def going_away() -> None:
                bye = b"proxy shutting down"
                await asyncio.gather(
                    client_ws.close(code=WS_GOING_AWAY, message=bye), upstream_ws.close(code=WS_GOING_AWAY, message=bye), return_exceptions=True
                )

            stream = OpenStream(end=going_away)
            self.open_streams.add(stream)
            try:
                to_upstream = asyncio.create_task(_pump(client_ws, upstream_ws, stream))
                to_client = asyncio.create_task(_pump(upstream_ws, client_ws, stream))
                try:
                    await asyncio.wait({to_upstream, to_client}, return_when=asyncio.FIRST_COMPLETED)
                    # One side closed and the pump passed its close on; let the other finish the handshake.
                    await asyncio.wait({to_upstream, to_client}, timeout=5.0)
                finally:
                    for task in (to_upstream, to_client):
                        task.cancel()
                    await asyncio.gather(to_upstream, to_client, return_exceptions=True)
            finally:
                self.open_streams.discard(stream)
            if not client_ws.closed:
                await client_ws.close(code=upstream_ws.close_code or 1000)
        return client_ws


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    stream: OpenStream,
) -> None:
    """Copy messages from source to sink until source closes, then pass the close on."""
    while True:
        msg = await source.receive()
        if msg.type == aiohttp.WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type == aiohttp.WSMsgType.PING:
            await sink.ping(msg.data)
        elif msg.type == aiohttp.WSMsgType.PONG:
            await sink.pong(msg.data)
        elif msg.type == aiohttp.WSMsgType.CLOSE:
            code = msg.data if msg.data not in _UNSENDABLE_CLOSE_CODES else 1000
            reason = (msg.extra or "").encode("utf-8")
            if not sink.closed:
                await sink.close(code=code, message=reason)
            if not source.closed:
                await source.close(code=code, message=reason)
            return
        else:  # CLOSING, CLOSED, ERROR: the source is gone without a close frame
            if not sink.closed:
                code = WS_GOING_AWAY if stream.is_ending else 1011 if msg.type == aiohttp.WSMsgType.ERROR else 1000
                await sink.close(code=code)
            return


def _abort(request: ClientRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()
