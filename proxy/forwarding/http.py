"""Forwarding one request to its upstream through the pooled client, the response streamed back
through the front-end's sink; failures come back as UpstreamFailure for the error pages.

Never reads a whole body: every byte moves through bounded buffers with backpressure. Once
the answer has started no error page is possible: a break is passed on as an abort.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from proxy.config.model import Upstream
from proxy.diagnostics.inspector import Exchange
from proxy.forwarding.answer import date_field
from proxy.forwarding.contract import ClientGone, ProxyRequest, RequestBody, ResponseSink
from proxy.forwarding.decide import Forward
from proxy.forwarding.failures import FAILURES, UpstreamFailure, describe_failure
from proxy.forwarding.headers import ClientFields, request_fields_for_upstream, response_fields_for_client
from proxy.forwarding.health import UpstreamHealth
from proxy.forwarding.websocket import WebSocketTunnel
from proxy.upstream.connection import IDEMPOTENT_METHODS, ResponseHead, UpstreamClosed, UpstreamConnection, UpstreamError, request_head
from proxy.upstream.pool import UpstreamPool

log = logging.getLogger("proxy")
T = TypeVar("T")


@dataclass(eq=False)
class OpenStream:
    """A long-lived exchange the shutdown must end rather than wait for: an event stream or a WebSocket."""

    end: Callable[[], Awaitable[None]]
    is_ending: bool = False


@dataclass(slots=True)
class _Sent:
    """A request on its way: the connection it went out on, the answer's head, the body still being sent."""

    connection: UpstreamConnection
    head: ResponseHead
    body_task: asyncio.Task[None] | None


async def _send_body(connection: UpstreamConnection, body: RequestBody, exchange: Exchange, chunked: bool) -> None:
    """Stream the client's body upstream; an app that stops reading (it answered early) just ends it."""
    tap = exchange.request_body
    try:
        async for chunk in body.chunks():
            tap.feed(chunk)
            if chunked:
                if chunk:
                    await connection.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                await connection.write(chunk)
        tap.is_complete = True
        if chunked:
            await connection.write(b"0\r\n\r\n")
    except (UpstreamError, OSError):
        connection.is_broken = True


class Forwarder:
    """Sends requests to upstreams through one pool, records their health, and knows the streams still open."""

    def __init__(self, pool: UpstreamPool, health: UpstreamHealth) -> None:
        self.pool = pool
        self.health = health
        self.open_streams: set[OpenStream] = set()

    async def end_open_streams(self) -> None:
        """End every event stream and close every WebSocket with 1001, for shutdown."""
        streams = list(self.open_streams)
        for stream in streams:
            stream.is_ending = True
        await asyncio.gather(*(s.end() for s in streams), return_exceptions=True)

    async def forward(self, request: ProxyRequest, sink: ResponseSink, decision: Forward, exchange: Exchange) -> UpstreamFailure | None:
        """Forward a request and stream the answer back; return the failure when no upstream could take it.

        The upstreams are tried in turn: a refused or timed-out one passes the request to the next,
        as long as none of its body has gone upstream yet.
        """
        upstreams, body = decision.upstreams, request.body
        failure: UpstreamFailure | None = None
        for upstream in self.health.attempt_order(upstreams):
            try:
                sent = await self._send(request, upstream, decision, exchange)
            except FAILURES as exc:
                failure = dataclasses.replace(describe_failure(exc, upstream, upstreams.connect_timeout), upstream=upstream)
                self.health.mark_down(upstream, failure.reason)
                log.info("%s: %s (tried %s)", upstream, failure.reason, ", ".join(failure.tried))
                if failure.may_try_next and (body is None or not body.is_started):
                    continue
                return failure
            self.health.mark_up(upstream)
            break
        else:
            assert failure is not None
            return failure
        exchange.upstream = upstream.authority
        try:
            is_tunnel = sent.connection.is_tunnel
            # A 101 that switched to what the client asked for is judged like any other head.
            fields = response_fields_for_client(200 if is_tunnel else sent.head.status, sent.head.headers)
            if isinstance(fields, str):
                sent.connection.close()  # what follows on it cannot be trusted
                return UpstreamFailure(
                    502,
                    f"the app sent {fields}",
                    "The proxy does not pass on a response it cannot frame unambiguously; check the app's response code.",
                    upstream.tried_addresses,
                    upstream,
                )
            if is_tunnel:
                await self._tunnel(sink, sent, fields, exchange)
            else:
                await self._relay_response(sink, sent, fields, exchange)
            return None
        finally:
            if sent.body_task is not None and not sent.body_task.done():
                sent.connection.close()  # the app answered before taking the whole body: the rest cannot follow on this connection
                sent.body_task.cancel()
            self.pool.release(sent.connection)

    async def _send(self, request: ProxyRequest, upstream: Upstream, decision: Forward, exchange: Exchange) -> _Sent:
        """Send the request to one upstream (its body streaming on in a task) and return once the answer's head is in."""
        upstreams, body, method = decision.upstreams, request.body, request.method
        # Without a length the client's body ends when the client says (HTTP/1.1 chunked): so does the proxy's.
        chunked = body is not None and body.length is None
        asks_upgrade = request.upgrade is not None
        fields = request_fields_for_upstream(
            request.fields,
            client_ip=request.client_ip,
            proto=request.scheme,
            host_header=exchange.host_header,
            upstream_host=None if upstreams.preserve_host else upstream.authority,
            via=decision.via,
            upgrade=request.upgrade,
        )
        head = request_head(method, decision.match.target, fields, chunked=chunked)
        verify = upstreams.should_verify(upstream)
        connection = self.pool.take_idle(upstream, verify=verify) or await self.pool.connect(upstream, verify=verify, connect_timeout=upstreams.connect_timeout)
        while True:
            answer = connection.send_head(head, is_head_request=method == "HEAD", asks_upgrade=asks_upgrade)
            body_task = asyncio.create_task(_send_body(connection, body, exchange, chunked)) if body is not None else None
            try:
                if asks_upgrade:  # a WebSocket handshake counts as connecting: an app that never answers it is a 504
                    async with asyncio.timeout(upstreams.connect_timeout):
                        return _Sent(connection, await answer, body_task)
                return _Sent(connection, await answer, body_task)
            except BaseException as exc:
                if body_task is not None:
                    body_task.cancel()
                self.pool.release(connection)
                # A pooled connection the app had closed meanwhile: once more on a new one, when that cannot repeat a side effect.
                if not (isinstance(exc, UpstreamClosed) and exc.before_response and connection.reused and body is None and method in IDEMPOTENT_METHODS):
                    raise
            connection = await self.pool.connect(upstream, verify=verify, connect_timeout=upstreams.connect_timeout)

    async def _relay_response(self, sink: ResponseSink, sent: _Sent, client: ClientFields, exchange: Exchange) -> None:
        head, connection = sent.head, sent.connection
        exchange.response_started(head.status, head.reason, tuple(head.headers))
        tap = exchange.response_body
        # RFC 9110 6.6.1: a response passed on without a Date gets one.
        fields = client.fields if client.has_date else [*client.fields, date_field()]
        whole_body = connection.whole_body() if head.has_body else b""
        if whole_body is not None:  # the common small response: one step, head and body together
            tap.feed(whole_body)
            try:
                sink.send_whole(head.status, head.reason, fields, whole_body, length=head.content_length)
            except ClientGone:
                exchange.note = "client went away"
                return
            tap.is_complete = True
            return
        stream: OpenStream | None = None
        if client.is_event_stream:
            exchange.is_stream = True

            async def end_event_stream() -> None:
                connection.close()  # the relay loop below sees the end and finishes cleanly

            stream = OpenStream(end=end_event_stream)
            self.open_streams.add(stream)
        try:
            await sink.start(head.status, head.reason, fields, length=head.content_length)
            async for chunk in connection.body():
                await sink.write(chunk)
                tap.feed(chunk)
            await sink.end()
        except ClientGone:  # raised by writes to a client that has gone
            exchange.note = "client went away; upstream request cancelled"
            connection.close()
            return
        except UpstreamError as exc:
            if not (stream and stream.is_ending):  # else shutdown ended it on purpose: finish cleanly
                # Never re-frame a cut-off body as complete: abort so the client sees the break.
                exchange.note = f"upstream broke off mid-response ({exc})"
                sink.abort()
                return
            await sink.end()
        finally:
            if stream:
                self.open_streams.discard(stream)
        tap.is_complete = True

    async def _tunnel(self, sink: ResponseSink, sent: _Sent, client: ClientFields, exchange: Exchange) -> None:
        """Relay a 101 and pipe both directions until either side closes (or the proxy stops)."""
        head = sent.head
        exchange.response_started(101, head.reason, tuple(head.headers))
        exchange.is_stream = True
        try:
            tunnel = WebSocketTunnel(await sink.upgrade(head.reason, client.fields), sent.connection)
        except ClientGone:
            exchange.note = "client went away"
            return
        stream = OpenStream(end=tunnel.going_away)
        self.open_streams.add(stream)
        try:
            await tunnel.run()
        finally:
            self.open_streams.discard(stream)


async def keep_unread_body(request: ProxyRequest, exchange: Exchange, limit: int) -> None:
    """Read a small body no upstream took (all refused), so the inspector can replay it once the app is up."""
    body = request.body
    if body is None or not exchange.is_inspected or exchange.request_body.size or not body.length or body.length > limit:
        return
    if request.field(b"expect") is not None:  # pulling it would ask the client for a body nobody takes
        return
    try:
        async with asyncio.timeout(2.0):
            async for chunk in body.chunks():
                exchange.request_body.feed(chunk)
        exchange.request_body.is_complete = exchange.request_body.size == body.length
    except (TimeoutError, ClientGone):
        pass
