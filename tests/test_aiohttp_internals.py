"""Each way the HTTP/1.1 front-end relies on aiohttp's server beyond its documented API
(proxy/frontends/http1/aiohttp_internals.py), checked against the installed aiohttp.

When one of these fails after an aiohttp upgrade, that release changed something the front-end
depends on: fix aiohttp_internals.py before widening the aiohttp range in pyproject.toml.
Real sockets on 127.0.0.1; the core behind the front-end is a small stand-in per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web, web_protocol

from proxy.forwarding.contract import ProxyRequest, ResponseSink
from proxy.frontends.http1 import aiohttp_internals
from proxy.frontends.http1.connection import MAX_HEADER_FIELD, Http1Connection, Http1Server

WAIT = 5.0
Handler = Callable[[ProxyRequest, ResponseSink], Awaitable[None]]


class StandIn:
    """The core, as far as one test needs it."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[ProxyRequest] = []

    async def handle(self, request: ProxyRequest, sink: ResponseSink) -> None:
        self.requests.append(request)
        await self.handler(request, sink)


@asynccontextmanager
async def front_end(handler: Handler) -> AsyncIterator[tuple[int, StandIn]]:
    core = StandIn(handler)
    runner = web.ServerRunner(Http1Server(core, max_connections=50), handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield runner.addresses[0][1], core
    finally:
        await runner.cleanup()


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), WAIT)


async def ok(request: ProxyRequest, sink: ResponseSink) -> None:
    body = b""
    if request.body is not None:
        async for chunk in request.body.chunks():
            body += chunk
    sink.send_whole(200, "", [(b"Content-Type", b"text/plain")], b"got %d" % len(body))


# ---------------------------------------------------------------- 1. the connection class


async def test_connections_are_our_request_handler_made_with_our_limits() -> None:
    """aiohttp's RequestHandler takes the keyword arguments the front-end passes, and honours the field limit."""
    async with front_end(ok) as (port, core):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        big = b"x" * (MAX_HEADER_FIELD - 100)  # over aiohttp's default 8 KiB, under ours
        # A body sends the request down aiohttp's path, where its parser applies the limits it was made with.
        writer.write(b"POST / HTTP/1.1\r\nHost: a.localhost\r\nX-Big: " + big + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
        answer = await read_until_closed(reader)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert answer.endswith(b"got 2")
    assert core.requests[0].field(b"x-big") == big
    assert isinstance(aiohttp_internals.new_connection(Http1Connection, Http1Server(core, max_connections=1)), web.RequestHandler)


# ---------------------------------------------------------------- 2. an answer already written


async def test_aiohttp_writes_nothing_after_an_answer_the_front_end_wrote_and_keeps_the_connection() -> None:
    """Two requests with bodies on one connection (aiohttp's path): exactly two answers, nothing more, still open."""
    async with front_end(ok) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for size in (3, 5):
            writer.write(b"POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: %d\r\n\r\n" % size + b"z" * size)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
            assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 5\r\n" in head, head
            assert await asyncio.wait_for(reader.readexactly(5), WAIT) == b"got %d" % size
        extra = b""
        with contextlib.suppress(TimeoutError):
            extra = await asyncio.wait_for(reader.read(100), 0.2)  # nothing of aiohttp's own may follow
        writer.write(b"GET / HTTP/1.1\r\nHost: a.localhost\r\nConnection: close\r\n\r\n")
        rest = await read_until_closed(reader)
        writer.close()
    assert extra == b""
    assert rest.count(b"HTTP/1.1 ") == 1 and rest.endswith(b"got 0"), rest


async def test_an_answer_that_closes_makes_aiohttp_close_the_connection() -> None:
    async def last(request: ProxyRequest, sink: ResponseSink) -> None:
        sink.send_whole(400, "", [], b"no", last=True)

    async with front_end(last) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 1\r\n\r\nx")
        answer = await read_until_closed(reader)  # returns only once the server has closed
        writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Connection: close\r\n" in answer


# ---------------------------------------------------------------- 3. raw bytes after a 101


async def test_bytes_sent_with_and_after_an_upgrade_head_reach_the_tunnel() -> None:
    received = bytearray()
    done = asyncio.Event()

    async def tunnel(request: ProxyRequest, sink: ResponseSink) -> None:
        assert request.upgrade == "websocket"
        raw = await sink.upgrade("Switching Protocols", [(b"Sec-WebSocket-Accept", b"x")])
        while len(received) < 10 and (data := await raw.read()):
            received.extend(data)
        await raw.write(b"echo:" + bytes(received))
        done.set()
        raw.close()

    async with front_end(tunnel) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (
            b"GET /ws HTTP/1.1\r\nHost: a.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        writer.write(head + b"early")  # read together with the head, before the tunnel exists
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        writer.write(b"later")
        await asyncio.wait_for(done.wait(), WAIT)
        rest = await read_until_closed(reader)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 101 ") and b"Upgrade: websocket\r\n" in answer
    assert bytes(received) == b"earlylater" and rest == b"echo:earlylater"


# ---------------------------------------------------------------- 4. a body that breaks its framing


async def test_a_chunked_body_that_breaks_mid_stream_is_seen_at_once() -> None:
    """aiohttp queues the parse error behind the request whose body broke; the front-end finds it there."""
    started = asyncio.Event()

    async def streaming(request: ProxyRequest, sink: ResponseSink) -> None:
        assert request.body is not None
        started.set()
        async for _ in request.body.chunks():
            pass
        sink.send_whole(200, "", [], b"whole")

    async with front_end(streaming) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await asyncio.wait_for(started.wait(), WAIT)
        writer.write(b"zz\r\nnot a chunk\r\n")
        answer = await asyncio.wait_for(reader.read(), WAIT)  # at once, not after a timeout
        writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ") and b"chunked" in answer, answer


def test_the_parse_error_queue_is_where_the_front_end_looks() -> None:
    """The names aiohttp_internals reads: the queue slot of each connection and the parse error's type."""
    assert "_messages" in web_protocol.RequestHandler.__slots__
    assert isinstance(web_protocol._ErrInfo, type)


# ---------------------------------------------------------------- 5. which request parser runs


def test_the_c_parser_is_recognised_and_so_is_its_absence() -> None:
    """The proxy warns at start when aiohttp fell back to its Python parser; both answers must be reachable."""
    probe = "from proxy.frontends.http1.aiohttp_internals import parses_in_c; print(parses_in_c())"
    with_c = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env={**os.environ, "AIOHTTP_NO_EXTENSIONS": ""})
    without_c = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env={**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"})
    assert (with_c.stdout.strip(), without_c.stdout.strip()) == ("True", "False")
