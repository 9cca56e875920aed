"""SIGTERM on the real proxy process, watched from both wires: a raw client and a raw (or real
WebSocket) backend that records when the proxy hangs up on it.

What must hold: every listener (127.0.0.1, ::1, HTTPS) refuses new connections within a second;
requests in flight (slow answer, streamed body, body still uploading) finish whole with exit 0;
a request still running after the 5 s grace is cut, the backend sees its connection closed, and
the process is gone within 5 + 2 s; an idle keep-alive connection does not hold the exit; a request
sent on an old keep-alive connection after the signal is answered whole or the connection closed,
never left hanging or cut mid-body; open WebSockets get close code 1001 on both sides; a second
signal stops at once.

Cases: 8.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from tests.support.proxies import Proxy, ProxyFactory
from tests.support.rawhttp import TIMEOUT, RawHandler, RawResponse, connection, http_request, raw_upstream, read_response
from tests.support.system import needs_ipv6
from tests.support.waiting import is_refused, wait_exit, wait_until

GRACE = 5.0  # server.SHUTDOWN_GRACE: what the proxy promises in-flight requests
SLACK = 2.0


# ---------------------------------------------------------------- helpers


def listener_addresses(proxy: Proxy) -> list[tuple[str, int]]:
    found = []
    for url in proxy.urls + proxy.https_urls:
        host, _, port = url.split("://", 1)[1].rpartition(":")
        found.append((host.strip("[]"), int(port)))
    return found


async def timed_exit(proxy: Proxy, timeout: float) -> tuple[int, float]:
    """Return (exit code, seconds waited) for a proxy already signalled; fail if it outlives timeout."""
    started = time.monotonic()
    code = await wait_exit(proxy, timeout)
    return code, time.monotonic() - started


@dataclass
class Seen:
    """What a raw backend saw: requests as raw bytes, and when the proxy closed each connection."""

    requests: list[bytes] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    closed_at: list[float] = field(default_factory=list)


def slow_backend(seen: Seen, seconds: float, body: bytes = b"slow done") -> RawHandler:
    """Read one request (with its Content-Length body), answer 200 after `seconds`, or note the proxy hanging up first."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        seen.arrived.set()
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
        payload = await asyncio.wait_for(reader.readexactly(length), TIMEOUT) if length else b""
        seen.requests.append(head + payload)
        try:
            eof = await asyncio.wait_for(reader.read(1), seconds)
            if eof == b"":
                seen.closed_at.append(time.monotonic())
                return
        except TimeoutError:
            pass
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    return handle


async def send(
    proxy: Proxy, target: str, *, host: str = "app1.localhost", headers: list[tuple[str, str]] | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", proxy.port), TIMEOUT)
    writer.write(http_request("GET", target, host=host, headers=headers or []))
    await writer.drain()
    return reader, writer


# ---------------------------------------------------------------- stop accepting, finish what is in flight


@needs_ipv6
async def test_every_listener_refuses_at_once_while_the_in_flight_request_finishes_with_200(start_proxy: ProxyFactory) -> None:
    seen = Seen()
    async with raw_upstream(slow_backend(seen, 1.0)) as port:
        proxy = await start_proxy({"app1": f"127.0.0.1:{port}"}, http="0", https=True)
        addresses = listener_addresses(proxy)
        assert {host for host, _ in addresses} == {"127.0.0.1", "::1"} and len(addresses) == 3, addresses
        reader, writer = await send(proxy, "/slow")
        await asyncio.wait_for(seen.arrived.wait(), TIMEOUT)
        signalled = time.monotonic()
        proxy.process.send_signal(signal.SIGTERM)

        pending = set(addresses)

        async def all_refused() -> bool:
            nonlocal pending
            pending = {a for a in pending if not await is_refused(*a)}
            return not pending

        await wait_until(all_refused, 1.0, interval=0.02)
        assert not pending, f"still accepting {pending} {time.monotonic() - signalled:.2f} s after SIGTERM"
        assert proxy.process.poll() is None, "the proxy should still be finishing the slow request"
        for _ in range(5):  # and it stays that way while the request finishes
            for address in addresses:
                assert await is_refused(*address), f"{address} accepted a connection after SIGTERM"
            await asyncio.sleep(0.05)

        response = await read_response(reader)
        writer.close()
        assert (response.status, response.body, response.complete) == (200, b"slow done", True)
        code = await wait_exit(proxy, GRACE + SLACK)
    assert code == 0, proxy.stderr()
    assert len(seen.requests) == 1 and seen.requests[0].startswith(b"GET /slow HTTP/1.1\r\n")
    assert "Traceback" not in proxy.stderr()


async def test_a_streamed_body_in_flight_arrives_whole(start_proxy: ProxyFactory) -> None:
    started = asyncio.Event()

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(10):  # 1.5 s of chunks
            writer.write(b"7\r\npart %d\n\r\n" % i)
            await writer.drain()
            started.set()
            await asyncio.sleep(0.15)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with raw_upstream(stream) as port:
        proxy = await start_proxy({"app1": f"127.0.0.1:{port}"})
        reader, writer = await send(proxy, "/stream")
        await asyncio.wait_for(started.wait(), TIMEOUT)
        proxy.process.send_signal(signal.SIGTERM)
        response = await read_response(reader)
        writer.close()
        assert response.status == 200 and response.complete, response
        assert response.body == b"".join(b"part %d\n" % i for i in range(10))
        code = await wait_exit(proxy, GRACE + SLACK)
    assert code == 0, proxy.stderr()


async def test_a_body_still_uploading_at_the_signal_is_forwarded_and_answered(start_proxy: ProxyFactory) -> None:
    seen = Seen()
    async with raw_upstream(slow_backend(seen, 0.0, b"got it")) as port:
        proxy = await start_proxy({"app1": f"127.0.0.1:{port}"})
        async with connection(proxy.port) as (reader, writer):
            writer.write(http_request("POST", "/upload", headers=[("Content-Length", "10")]) + b"01234")
            await writer.drain()
            await asyncio.wait_for(seen.arrived.wait(), TIMEOUT)
            proxy.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            writer.write(b"56789")
            await writer.drain()
            response = await read_response(reader, method="POST")
        assert (response.status, response.body, response.complete) == (200, b"got it", True)
        code = await wait_exit(proxy, GRACE + SLACK)
    assert code == 0
    assert len(seen.requests) == 1 and seen.requests[0].endswith(b"\r\n\r\n0123456789"), seen.requests


# ---------------------------------------------------------------- past the grace period


async def test_a_request_past_the_grace_is_cut_on_both_sides_and_the_proxy_exits(start_proxy: ProxyFactory) -> None:
    seen = Seen()
    async with raw_upstream(slow_backend(seen, 30.0)) as port:
        proxy = await start_proxy({"app1": f"127.0.0.1:{port}"})
        reader, writer = await send(proxy, "/hang")
        await asyncio.wait_for(seen.arrived.wait(), TIMEOUT)
        signalled = time.monotonic()
        proxy.process.send_signal(signal.SIGTERM)
        code, took = await timed_exit(proxy, GRACE + SLACK)
        assert code == 0, proxy.stderr()
        assert took >= GRACE - 1, f"exited after {took:.1f} s: the request deserved its {GRACE:g} s grace"
        # The client learns its request ended: no complete 200, and the connection is closed.
        try:
            response: RawResponse | None = await read_response(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            response = None
        writer.close()
        assert response is None or response.status >= 500 or not response.complete, response
        # The backend sees the proxy hang up, no later than the exit.
        await wait_until(lambda: seen.closed_at, 2.0, interval=0.02)
        assert seen.closed_at, "the backend never saw the proxy close its connection"
        assert seen.closed_at[0] - signalled < GRACE + SLACK
    assert "Traceback" not in proxy.stderr()


# ---------------------------------------------------------------- keep-alive connections


async def test_an_idle_keep_alive_connection_does_not_hold_the_exit(start_proxy: ProxyFactory) -> None:
    seen = Seen()
    async with raw_upstream(slow_backend(seen, 0.0, b"quick")) as port:
        proxy = await start_proxy({"app1": f"127.0.0.1:{port}"})
        reader, writer = await send(proxy, "/quick")
        assert (await read_response(reader)).status == 200
        proxy.process.send_signal(signal.SIGTERM)
        code, took = await timed_exit(proxy, GRACE + SLACK)
        assert code == 0
        assert took < 3, f"an idle keep-alive connection held the exit for {took:.1f} s"
        assert await asyncio.wait_for(reader.read(1), TIMEOUT) == b"", "the idle connection should be closed"
        writer.close()


async def test_a_request_on_an_old_keep_alive_connection_after_the_signal_is_answered_whole_or_closed(start_proxy: ProxyFactory) -> None:
    slow_seen, quick_seen = Seen(), Seen()
    async with raw_upstream(slow_backend(slow_seen, 2.0)) as slow_port, raw_upstream(slow_backend(quick_seen, 0.5, b"late but whole")) as quick_port:
        proxy = await start_proxy({"slow": f"127.0.0.1:{slow_port}", "quick": f"127.0.0.1:{quick_port}"})
        idle_reader, idle_writer = await send(proxy, "/first", host="quick.localhost")
        assert (await read_response(idle_reader)).status == 200
        busy_reader, busy_writer = await send(proxy, "/slow", host="slow.localhost")
        await asyncio.wait_for(slow_seen.arrived.wait(), TIMEOUT)
        proxy.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        started = time.monotonic()
        try:
            idle_writer.write(http_request("GET", "/after-signal", host="quick.localhost"))
            await idle_writer.drain()
            late: RawResponse | None = await asyncio.wait_for(read_response(idle_reader), GRACE + SLACK)
        except (asyncio.IncompleteReadError, ConnectionError):
            late = None  # closed before answering: fine
        except TimeoutError:
            raise AssertionError(f"the request sent after SIGTERM hung for {time.monotonic() - started:.1f} s") from None
        if late is not None:
            assert late.complete and (late.status, late.body) == (200, b"late but whole"), late
        busy = await read_response(busy_reader)
        assert (busy.status, busy.body) == (200, b"slow done")
        idle_writer.close()
        busy_writer.close()
        code = await wait_exit(proxy, GRACE + SLACK)
    assert code == 0, proxy.stderr()


# ---------------------------------------------------------------- WebSockets and a second signal


@dataclass
class WsBackend:
    server: TestServer
    close_codes: list[int | None]
    opened: asyncio.Event


@pytest.fixture
async def ws_backend() -> AsyncIterator[WsBackend]:
    close_codes: list[int | None] = []
    opened = asyncio.Event()

    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket_ = web.WebSocketResponse()
        await socket_.prepare(request)
        opened.set()
        async for msg in socket_:
            if msg.type == WSMsgType.TEXT:
                await socket_.send_str("echo " + msg.data)
        close_codes.append(socket_.close_code)
        return socket_

    app = web.Application()
    app.router.add_get("/ws", ws)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield WsBackend(server, close_codes, opened)
    finally:
        await asyncio.wait_for(server.close(), 10)


def masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return first & 0x0F, await asyncio.wait_for(reader.readexactly(length), TIMEOUT)


async def test_open_websocket_gets_1001_on_both_sides_and_the_proxy_exits_promptly(start_proxy: ProxyFactory, ws_backend: WsBackend) -> None:
    proxy = await start_proxy({"app1": f"127.0.0.1:{ws_backend.server.port}"})
    key = base64.b64encode(os.urandom(16)).decode()
    async with connection(proxy.port) as (reader, writer):
        writer.write(
            http_request(
                "GET", "/ws", headers=[("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]
            )
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101 "), head
        writer.write(masked_frame(0x1, b"hi"))
        assert await read_frame(reader) == (0x1, b"echo hi")
        signalled = time.monotonic()
        proxy.process.send_signal(signal.SIGTERM)
        opcode, payload = await read_frame(reader)
        assert opcode == 0x8, f"expected a close frame, got opcode {opcode}: {payload!r}"
        assert int.from_bytes(payload[:2], "big") == 1001, payload
        assert time.monotonic() - signalled < 3
        writer.write(masked_frame(0x8, payload[:2]))
    code = await wait_exit(proxy, GRACE + SLACK)
    assert code == 0, proxy.stderr()
    await wait_until(lambda: ws_backend.close_codes, 2.0, interval=0.02)
    assert ws_backend.close_codes == [1001], f"the backend saw close codes {ws_backend.close_codes}"


async def test_a_second_signal_stops_at_once(start_proxy: ProxyFactory) -> None:
    seen = Seen()
    async with raw_upstream(slow_backend(seen, 30.0)) as port:
        proxy = await start_proxy({"app1": f"127.0.0.1:{port}"})
        _, writer = await send(proxy, "/hang")
        await asyncio.wait_for(seen.arrived.wait(), TIMEOUT)
        proxy.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        proxy.process.send_signal(signal.SIGTERM)
        code, took = await timed_exit(proxy, SLACK)
        writer.close()
    assert took < 1.5, f"the second signal took {took:.1f} s to stop the proxy"
    assert code != 0, "an interrupted shutdown should not report success"
    assert "stopping now" in proxy.stderr()
