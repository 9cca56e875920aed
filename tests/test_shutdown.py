"""Graceful stop on SIGTERM and SIGINT, driven against a real `python -m proxy run`.

In-flight requests get up to 5 s, WebSockets close with 1001 (going away), event streams end
cleanly, new connections are refused, and the process exits 0 within 10 s whatever hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from tests.support.proxies import Proxy, ProxyFactory
from tests.support.waiting import is_refused, wait_exit, wait_until

SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]
EXIT_WITHIN = 10.0
T = TypeVar("T")


@dataclass
class Upstream:
    """A real aiohttp app on 127.0.0.1 with slow, WebSocket and event-stream endpoints."""

    server: TestServer
    arrived: dict[str, asyncio.Event] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def wait_arrived(self, path: str, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self.arrived[path].wait(), timeout)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    arrived = {path: asyncio.Event() for path in ("/slow", "/hang", "/ws", "/events")}
    release = asyncio.Event()  # set at teardown so no handler outlives the test

    async def slow(request: web.Request) -> web.Response:
        arrived["/slow"].set()
        await asyncio.sleep(2)
        return web.Response(text="finished after 2 s")

    async def hang(request: web.Request) -> web.Response:
        arrived["/hang"].set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 30)
        return web.Response(text="finished after 30 s")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket_ = web.WebSocketResponse()
        await socket_.prepare(request)
        arrived["/ws"].set()
        async for msg in socket_:
            if msg.type == WSMsgType.TEXT:
                await socket_.send_str("echo " + msg.data)
        return socket_

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        arrived["/events"].set()
        n = 0
        try:
            while not release.is_set() and n < 300:
                await response.write(f"data: tick {n}\n\n".encode())
                n += 1
                await asyncio.sleep(0.1)
        except (ConnectionResetError, ConnectionError):
            pass
        return response

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/hang", hang)
    app.router.add_get("/ws", ws)
    app.router.add_get("/events", events)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Upstream(server, arrived, release)
    finally:
        release.set()
        await asyncio.wait_for(server.close(), 15)


async def start(start_proxy: ProxyFactory, upstream: Upstream) -> Proxy:
    return await start_proxy({"app1": upstream.address})


async def stop_and_time(proxy: Proxy, sig: int) -> tuple[int, float]:
    """Send sig and return (exit code, seconds until exit); fail past EXIT_WITHIN + slack."""
    started = time.monotonic()
    code = await proxy.stop(sig, timeout=EXIT_WITHIN + 3)
    return code, time.monotonic() - started


async def within(awaitable: Awaitable[T], seconds: float, proxy: Proxy, what: str) -> T:
    """Await with a timeout; on timeout fail with what the proxy logged, for diagnosis."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        running = "still running" if proxy.process.poll() is None else f"exited {proxy.process.returncode}"
        raise AssertionError(f"{what} within {seconds:g} s (proxy {running}); its stderr:\n{proxy.stderr()}") from None


def close_code_seen(msg: aiohttp.WSMessage, ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Return the code in the close frame the client received (ws.close_code if none came)."""
    return int(msg.data) if msg.type == WSMsgType.CLOSE else ws.close_code


HOST = {"Host": "app1.localhost"}


# ---------------------------------------------------------------- idle


@pytest.mark.parametrize("sig", SIGNALS)
async def test_idle_proxy_exits_0_promptly(start_proxy: ProxyFactory, upstream: Upstream, sig: int) -> None:
    proxy = await start(start_proxy, upstream)
    code, seconds = await stop_and_time(proxy, sig)
    assert code == 0, proxy.stderr()
    assert seconds < 3, f"an idle proxy took {seconds:.1f} s to stop"
    assert "Traceback" not in proxy.stderr()


# ---------------------------------------------------------------- in-flight requests


@pytest.mark.parametrize("sig", SIGNALS)
async def test_request_in_flight_finishes_with_200(start_proxy: ProxyFactory, upstream: Upstream, client: aiohttp.ClientSession, sig: int) -> None:
    """A request that the upstream answers 2 s after the signal still gets its full answer."""
    proxy = await start(start_proxy, upstream)

    async def fetch() -> tuple[int, str]:
        async with client.get(proxy.base + "/slow", headers=HOST) as resp:
            return resp.status, await resp.text()

    request = asyncio.create_task(fetch())
    try:
        await upstream.wait_arrived("/slow")
        signalled = time.monotonic()
        proxy.process.send_signal(sig)
        status, text = await within(request, EXIT_WITHIN, proxy, "the in-flight request did not finish")
    finally:
        request.cancel()
    assert status == 200
    assert text == "finished after 2 s"
    code = await wait_exit(proxy, EXIT_WITHIN - (time.monotonic() - signalled))
    assert code == 0, proxy.stderr()
    assert "Traceback" not in proxy.stderr()


async def test_new_connections_are_refused_after_sigterm(start_proxy: ProxyFactory, upstream: Upstream, client: aiohttp.ClientSession) -> None:
    """While a request is still finishing, the listening socket is already gone."""
    proxy = await start(start_proxy, upstream)

    async def fetch() -> int:
        async with client.get(proxy.base + "/slow", headers=HOST) as resp:
            await resp.read()
            return resp.status

    request = asyncio.create_task(fetch())
    try:
        await upstream.wait_arrived("/slow")
        signalled = time.monotonic()
        proxy.process.send_signal(signal.SIGTERM)
        refused = await wait_until(lambda: is_refused("127.0.0.1", proxy.port), 1.0)
        assert proxy.process.poll() is None, "the proxy should still be finishing the slow request"
        assert refused, "a new connection was accepted after SIGTERM"
        assert await asyncio.wait_for(request, EXIT_WITHIN) == 200
    finally:
        request.cancel()
    assert await wait_exit(proxy, EXIT_WITHIN - (time.monotonic() - signalled)) == 0


async def test_a_30_second_request_does_not_hold_the_exit(start_proxy: ProxyFactory, upstream: Upstream, client: aiohttp.ClientSession) -> None:
    proxy = await start(start_proxy, upstream)

    async def fetch() -> None:
        async with client.get(proxy.base + "/hang", headers=HOST) as resp:
            await resp.read()

    request = asyncio.create_task(fetch())
    try:
        await upstream.wait_arrived("/hang")
        code, seconds = await stop_and_time(proxy, signal.SIGTERM)
        assert seconds < EXIT_WITHIN, f"took {seconds:.1f} s"
        assert seconds >= 4, f"exited after {seconds:.1f} s: the request should get its 5 s grace"
        assert code == 0, proxy.stderr()
        assert "Traceback" not in proxy.stderr()
        # The client learns that its request ended (an error or a short answer), not a hang.
        await asyncio.wait_for(asyncio.gather(request, return_exceptions=True), 5)
    finally:
        request.cancel()


# ---------------------------------------------------------------- long-lived streams


@pytest.mark.parametrize("sig", SIGNALS)
async def test_websocket_is_closed_with_1001(start_proxy: ProxyFactory, upstream: Upstream, client: aiohttp.ClientSession, sig: int) -> None:
    proxy = await start(start_proxy, upstream)
    async with client.ws_connect(proxy.base + "/ws", headers=HOST) as ws:
        await ws.send_str("hello")
        reply = await asyncio.wait_for(ws.receive(), 5)
        assert reply.type == WSMsgType.TEXT and reply.data == "echo hello"
        signalled = time.monotonic()
        proxy.process.send_signal(sig)
        msg = await within(ws.receive(), EXIT_WITHIN, proxy, "the WebSocket was not closed")
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), msg
        assert close_code_seen(msg, ws) == 1001, f"{msg}, close code {ws.close_code}; proxy stderr:\n{proxy.stderr()}"
        assert time.monotonic() - signalled < 3, "the WebSocket should close at once, not after the grace period"
    code = await wait_exit(proxy, EXIT_WITHIN - (time.monotonic() - signalled))
    assert code == 0, proxy.stderr()
    assert "Traceback" not in proxy.stderr()


@pytest.mark.parametrize("sig", SIGNALS)
async def test_event_stream_ends_cleanly(start_proxy: ProxyFactory, upstream: Upstream, client: aiohttp.ClientSession, sig: int) -> None:
    """The client reading an SSE stream sees a proper end of body, not a cut connection."""
    proxy = await start(start_proxy, upstream)
    async with client.get(proxy.base + "/events", headers={**HOST, "Accept": "text/event-stream"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        assert first.startswith(b"data: tick")
        signalled = time.monotonic()
        proxy.process.send_signal(sig)

        async def drain() -> bytes:
            rest = b""
            async for chunk in resp.content.iter_any():  # raises ClientPayloadError if cut short
                rest += chunk
            return rest

        rest = await within(drain(), EXIT_WITHIN, proxy, "the event stream did not end")
        assert resp.content.at_eof()
        assert time.monotonic() - signalled < 3, "the stream should end at once, not after the grace period"
        assert not rest or rest.endswith(b"\n\n"), f"the stream ended mid-event: {rest[-80:]!r}"
    code = await wait_exit(proxy, EXIT_WITHIN - (time.monotonic() - signalled))
    assert code == 0, proxy.stderr()
    assert "Traceback" not in proxy.stderr()


async def test_open_websocket_and_stream_together_exit_within_10_s(start_proxy: ProxyFactory, upstream: Upstream, client: aiohttp.ClientSession) -> None:
    proxy = await start(start_proxy, upstream)
    async with client.ws_connect(proxy.base + "/ws", headers=HOST) as ws, client.get(proxy.base + "/events", headers=HOST) as events:
        await asyncio.wait_for(events.content.readuntil(b"\n\n"), 5)
        await ws.send_str("hi")
        await asyncio.wait_for(ws.receive(), 5)
        code, seconds = await stop_and_time(proxy, signal.SIGTERM)
        assert code == 0, proxy.stderr()
        assert seconds < EXIT_WITHIN
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
        assert close_code_seen(msg, ws) == 1001, f"{msg}, close code {ws.close_code}; proxy stderr:\n{proxy.stderr()}"
