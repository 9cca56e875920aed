"""WebSocket upgrades through the real proxy process, as Vite and webpack hot reload use them.

The upstream is an aiohttp app that records what its side of the socket saw; clients are
aiohttp and, independently, the `websockets` library.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer
from websockets.asyncio.client import connect as WebsocketsConnect

from tests.support.certs import self_signed_context
from tests.support.proxies import ProxyFactory
from tests.support.system import free_port
from tests.support.waiting import wait_until

HOST = {"Host": "app1.localhost"}
ORIGIN = "http://app1.localhost:5173"
WAIT = 5.0  # seconds any single message or close may take


@dataclass
class Seen:
    """What the upstream's side of one WebSocket observed."""

    path: str
    scheme: str
    origin: str | None
    offered_protocols: str | None
    selected_protocol: str | None = None
    pings: list[bytes] = field(default_factory=list)
    pongs: list[bytes] = field(default_factory=list)
    close: asyncio.Future[tuple[int | None, str]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class WsUpstream:
    """An aiohttp app with a WebSocket echo at every path except /plain (HTTP) and /refuse (403)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.connected = asyncio.Event()
        app = web.Application()
        app.router.add_get("/plain", self.plain)
        app.router.add_get("/refuse", self.refuse)
        app.router.add_get("/{tail:.*}", self.websocket)
        self.app = app

    async def plain(self, request: web.Request) -> web.Response:
        return web.Response(text="plain ok")

    async def refuse(self, request: web.Request) -> web.Response:
        return web.Response(status=403, text="no sockets for you")

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        seen = Seen(
            path=request.path_qs,
            scheme=request.scheme,
            origin=request.headers.get("Origin"),
            offered_protocols=request.headers.get("Sec-WebSocket-Protocol"),
        )
        self.seen.append(seen)
        ws = web.WebSocketResponse(protocols=("vite-hmr", "other"), autoping=False, max_msg_size=0)
        await ws.prepare(request)
        seen.selected_protocol = ws.ws_protocol
        self.connected.set()
        for _ in range(100_000):  # bounded; tests send far fewer messages
            msg = await ws.receive()
            if msg.type == WSMsgType.TEXT:
                if msg.data == "close-me":
                    await ws.close(code=4001, message=b"bye")
                    break
                if msg.data == "ping-me":
                    await ws.ping(b"from-upstream")
                    continue
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type == WSMsgType.PING:
                seen.pings.append(msg.data)
                await ws.pong(msg.data)
            elif msg.type == WSMsgType.PONG:
                seen.pongs.append(msg.data)
                await ws.send_str(f"got-pong:{msg.data.decode()}")
            elif msg.type == WSMsgType.CLOSE:
                if not seen.close.done():
                    seen.close.set_result((msg.data, msg.extra or ""))
                break
            else:  # CLOSING, CLOSED, ERROR
                break
        if not seen.close.done():
            seen.close.set_result((None, ""))
        return ws

    async def first_seen(self) -> Seen:
        await asyncio.wait_for(self.connected.wait(), timeout=WAIT)
        return self.seen[0]


@pytest.fixture
async def ws_upstream() -> AsyncIterator[tuple[TestServer, WsUpstream]]:
    upstream = WsUpstream()
    server = TestServer(upstream.app, host="127.0.0.1")
    async with server:
        yield server, upstream


async def receive(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    return await ws.receive(timeout=WAIT)


async def ws_connect(
    client: aiohttp.ClientSession,
    port: int,
    path: str = "/",
    *,
    headers: dict[str, str] | None = None,
    protocols: tuple[str, ...] = (),
    autoping: bool = True,
    max_msg_size: int = 4 * 1024 * 1024,
) -> aiohttp.ClientWebSocketResponse:
    """Connect with aiohttp to the proxy on 127.0.0.1, naming the site in Host."""
    connecting = client.ws_connect(
        f"ws://127.0.0.1:{port}{path}", headers={**HOST, **(headers or {})}, protocols=protocols, autoping=autoping, max_msg_size=max_msg_size
    )
    return await asyncio.wait_for(connecting, timeout=WAIT)


def websockets_connect(port: int, path: str = "/", **kwargs: Any) -> WebsocketsConnect:
    """Connect with the websockets library: the URI names the site, the socket goes to 127.0.0.1."""
    return WebsocketsConnect(f"ws://app1.localhost:{port}{path}", host="127.0.0.1", port=port, proxy=None, open_timeout=WAIT, close_timeout=WAIT, **kwargs)


# ---------------------------------------------------------------- messages


async def test_text_and_binary_echo_through_aiohttp_client(
    start_proxy: ProxyFactory, ws_upstream: tuple[TestServer, WsUpstream], client: aiohttp.ClientSession
) -> None:
    server, upstream = ws_upstream
    proxy = await start_proxy({"app1": server.port})
    ws = await ws_connect(client, proxy.port, "/hmr?token=abc")
    try:
        await ws.send_str("hello ✓")
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.TEXT, "hello ✓")
        await ws.send_bytes(b"\x00\x01\xffbinary")
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.BINARY, b"\x00\x01\xffbinary")
    finally:
        await asyncio.wait_for(ws.close(), timeout=WAIT)
    seen = await upstream.first_seen()
    assert seen.path == "/hmr?token=abc"


async def test_text_and_binary_echo_through_websockets_library(start_proxy: ProxyFactory, ws_upstream: tuple[TestServer, WsUpstream]) -> None:
    server, upstream = ws_upstream
    proxy = await start_proxy({"app1": server.port})
    async with websockets_connect(proxy.port, "/socket") as ws:
        await ws.send("héllo")
        assert await asyncio.wait_for(ws.recv(), timeout=WAIT) == "héllo"
        await ws.send(b"\x00bin\xff")
        assert await asyncio.wait_for(ws.recv(), timeout=WAIT) == b"\x00bin\xff"
    seen = await upstream.first_seen()
    assert seen.path == "/socket"


async def test_5_mib_binary_message_arrives_whole(start_proxy: ProxyFactory, ws_upstream: tuple[TestServer, WsUpstream], client: aiohttp.ClientSession) -> None:
    server, _ = ws_upstream
    proxy = await start_proxy({"app1": server.port})
    payload = os.urandom(5 * 1024 * 1024)
    ws = await ws_connect(client, proxy.port, max_msg_size=0)
    try:
        await ws.send_bytes(payload)
        msg = await ws.receive(timeout=15)
        assert msg.type == WSMsgType.BINARY, msg
        assert len(msg.data) == len(payload)
        assert msg.data == payload
    finally:
        await asyncio.wait_for(ws.close(), timeout=WAIT)
    async with websockets_connect(proxy.port, max_size=None) as ws2:
        await ws2.send(payload)
        assert await asyncio.wait_for(ws2.recv(), timeout=15) == payload


async def test_1000_messages_round_trip_in_order(start_proxy: ProxyFactory, ws_upstream: tuple[TestServer, WsUpstream], client: aiohttp.ClientSession) -> None:
    server, _ = ws_upstream
    proxy = await start_proxy({"app1": server.port})
    ws = await ws_connect(client, proxy.port)
    try:
        for i in range(1000):
            await ws.send_str(f"message {i}")
        got = []
        for _ in range(1000):
            msg = await receive(ws)
            assert msg.type == WSMsgType.TEXT, msg
            got.append(msg.data)
        assert got == [f"message {i}" for i in range(1000)]
    finally:
        await asyncio.wait_for(ws.close(), timeout=WAIT)


# ---------------------------------------------------------------- control frames


async def test_client_ping_reaches_upstream_and_its_pong_comes_back(
    start_proxy: ProxyFactory, ws_upstream: tuple[TestServer, WsUpstream], client: aiohttp.ClientSession
) -> None:
    server, upstream = ws_upstream
    proxy = await start_proxy({"app1": server.port})
    ws = await ws_connect(client, proxy.port, autoping=False)
    try:
        await ws.ping(b"are-you-there")
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.PONG, b"are-you-there")
    finally:
        await asyncio.wait_for(ws.close(), timeout=WAIT)
    seen = await upstream.first_seen()
    assert seen.pings == [b"are-you-there"]


async def test_websockets_library_ping_is_answered_end_to_end(start_proxy: ProxyFactory, ws_upstream: tuple[TestServer, WsUpstream]) -> None:
    server, upstream = ws_upstream
    proxy = await start_proxy({"app1": server.port})
    async with websockets_connect(proxy.port, ping_interval=None) as ws:
        pong = await ws.ping(b"lib-ping")
        await asyncio.wait_for(pong, timeout=WAIT)
    seen = await upstream.first_seen()
    assert seen.pings == [b"lib-ping"]


async def test_upstream_ping_reaches_client_and_its_pong_reaches_upstream(start_proxy: ProxyFactory, ws_upstream: tuple[TestServer, WsUpstream]) -> None:
    server, upstream = ws_upstream
    proxy = await start_proxy({"app1": server.port})
    async with websockets_connect(proxy.port, ping_interval=None) as ws:  # answers pings on its own
        await ws.send("ping-me")
        assert await asyncio.wait_for(ws.recv(), timeout=WAIT) == "got-pong:from-upstream"
    seen = await upstream.first_seen()
    assert seen.pongs == [b"from-upstream"]


# ---------------------------------------------------------------- handshake headers


async def test_subprotocol_offered_by_client_is_negotiated_with_upstream(
    start_proxy: ProxyFactory, ws_upstream: tuple[TestServer, WsUpstream], client: aiohttp.ClientSession
) -> None:
    server, upstream = ws_upstream
    proxy = await start_proxy({"app1": server.port})
    ws = await ws_connect(client, proxy.port, protocols=("vite-hmr",))
    try:
        assert ws.protocol == "vite-hmr"
        await ws.send_str("x")
        assert (await receive(ws)).data == "x"
    finally:
        await asyncio.wait_for(ws.close(), timeout=WAIT)
    seen = await upstream.first_seen()
    assert seen.offered_protocols == "vite-hmr"
    assert seen.selected_protocol == "vite-hmr"


async def test_subprotocol_through_websockets_library(start_proxy: ProxyFactory, ws_upstream: tuple[TestServer, WsUpstream]) -> None:
    server, upstream = ws_upstream
    proxy = await start_proxy({"app1": server.port})
    async with websockets_connect(proxy.port, subprotocols=["unknown-proto", "vite-hmr"]) as ws:
        assert ws.subprotocol == "vite-hmr"
    seen = await upstream.first_seen()
    assert seen.offered_protocols is not None
    assert [p.strip() for p in seen.offered_protocols.split(",")] == ["unknown-proto", "vite-hmr"]


async def test_no_subprotocol_offered_means_none_selected(
    start_proxy: ProxyFactory, ws_upstream: tuple[TestServer, WsUpstream], client: aiohttp.ClientSession
) -> None:
    server, upstream = ws_upstream
    proxy = await start_proxy({"app1": server.port})
    ws = await ws_connect(client, proxy.port)
    try:
        assert ws.protocol is None
    finally:
        await asyncio.wait_for(ws.close(), timeout=WAIT)
    seen = await upstream.first_seen()
    assert seen.offered_protocols is None


async def test_origin_reaches_upstream_unchanged(start_proxy: ProxyFactory, ws_upstream: tuple[TestServer, WsUpstream], client: aiohttp.ClientSession) -> None:
    server, upstream = ws_upstream
    proxy = await start_proxy({"app1": server.port})
    ws = await ws_connect(client, proxy.port, headers={"Origin": ORIGIN})
    await asyncio.wait_for(ws.close(), timeout=WAIT)
    async with websockets_connect(proxy.port, origin=ORIGIN):
        pass
    await asyncio.wait_for(upstream.connected.wait(), timeout=WAIT)
    await wait_until(lambda: len(upstream.seen) == 2, 2.0, interval=0.02)  # the second connection is recorded as its handshake arrives
    assert [s.origin for s in upstream.seen] == [ORIGIN, ORIGIN]


# ---------------------------------------------------------------- closing


async def test_client_close_code_and_reason_reach_upstream(
    start_proxy: ProxyFactory, ws_upstream: tuple[TestServer, WsUpstream], client: aiohttp.ClientSession
) -> None:
    server, upstream = ws_upstream
    proxy = await start_proxy({"app1": server.port})
    ws = await ws_connect(client, proxy.port)
    await ws.send_str("before close")
    assert (await receive(ws)).data == "before close"
    await asyncio.wait_for(ws.close(code=4000, message=b"done"), timeout=WAIT)
    seen = await upstream.first_seen()
    assert await asyncio.wait_for(seen.close, timeout=WAIT) == (4000, "done")


async def test_client_close_through_websockets_library_reaches_upstream(start_proxy: ProxyFactory, ws_upstream: tuple[TestServer, WsUpstream]) -> None:
    server, upstream = ws_upstream
    proxy = await start_proxy({"app1": server.port})
    async with websockets_connect(proxy.port) as ws:
        await ws.close(code=4000, reason="done")
    seen = await upstream.first_seen()
    assert await asyncio.wait_for(seen.close, timeout=WAIT) == (4000, "done")


async def test_upstream_close_code_and_reason_reach_client(
    start_proxy: ProxyFactory, ws_upstream: tuple[TestServer, WsUpstream], client: aiohttp.ClientSession
) -> None:
    server, _ = ws_upstream
    proxy = await start_proxy({"app1": server.port})
    ws = await ws_connect(client, proxy.port)
    try:
        await ws.send_str("close-me")
        msg = await receive(ws)
        assert msg.type == WSMsgType.CLOSE, msg
        assert (msg.data, msg.extra) == (4001, "bye")
        assert ws.close_code == 4001
    finally:
        await asyncio.wait_for(ws.close(), timeout=WAIT)


async def test_upstream_close_through_websockets_library_reaches_client(start_proxy: ProxyFactory, ws_upstream: tuple[TestServer, WsUpstream]) -> None:
    server, _ = ws_upstream
    proxy = await start_proxy({"app1": server.port})
    async with websockets_connect(proxy.port) as ws:
        await ws.send("close-me")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), timeout=WAIT)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "bye")


# ---------------------------------------------------------------- failures


async def test_upstream_refusing_the_upgrade_gives_the_client_an_error_status(
    start_proxy: ProxyFactory, ws_upstream: tuple[TestServer, WsUpstream], client: aiohttp.ClientSession
) -> None:
    server, _ = ws_upstream
    proxy = await start_proxy({"app1": server.port})
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await ws_connect(client, proxy.port, "/refuse")
    assert refused.value.status == 403
    with pytest.raises(websockets.InvalidStatus) as refused_lib:
        async with websockets_connect(proxy.port, "/refuse"):
            pass
    assert refused_lib.value.response.status_code == 403


async def test_dead_upstream_fails_the_handshake_with_502_quickly(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    port = free_port()
    proxy = await start_proxy({"app1": port})
    started = time.monotonic()
    with pytest.raises(aiohttp.WSServerHandshakeError) as failed:
        await ws_connect(client, proxy.port, "/hmr")
    assert failed.value.status == 502
    assert time.monotonic() - started < 3.0
    with pytest.raises(websockets.InvalidStatus) as failed_lib:
        async with websockets_connect(proxy.port, "/hmr"):
            pass
    assert failed_lib.value.response.status_code == 502
    assert str(port) in failed_lib.value.response.body.decode("utf-8", "replace")


# ---------------------------------------------------------------- routes and the rest of the proxy


async def test_websocket_through_a_path_route(
    start_proxy: ProxyFactory, ws_upstream: tuple[TestServer, WsUpstream], echo_server: TestServer, client: aiohttp.ClientSession
) -> None:
    """/ws goes to the socket app, / to another app; the route's upstream gets the full path."""
    server, upstream = ws_upstream
    proxy = await start_proxy({"app1": {"routes": {"/ws": server.port, "/": echo_server.port}}})
    ws = await ws_connect(client, proxy.port, "/ws/hmr", protocols=("vite-hmr",))
    try:
        assert ws.protocol == "vite-hmr"
        await ws.send_str("routed")
        assert (await receive(ws)).data == "routed"
    finally:
        await asyncio.wait_for(ws.close(), timeout=WAIT)
    seen = await upstream.first_seen()
    assert seen.path == "/ws/hmr"
    async with client.get(f"{proxy.base}/page", headers=HOST) as resp:
        assert resp.status == 200
        assert (await resp.json())["target"] == "/page"


async def test_proxy_still_serves_http_after_websockets(
    start_proxy: ProxyFactory, ws_upstream: tuple[TestServer, WsUpstream], client: aiohttp.ClientSession
) -> None:
    server, _ = ws_upstream
    proxy = await start_proxy({"app1": server.port})
    for i in range(3):
        ws = await ws_connect(client, proxy.port)
        await ws.send_str(f"round {i}")
        assert (await receive(ws)).data == f"round {i}"
        if i == 1:
            await ws.send_str("close-me")  # one closed by the upstream
            assert (await receive(ws)).type == WSMsgType.CLOSE
        await asyncio.wait_for(ws.close(), timeout=WAIT)
    async with websockets_connect(proxy.port) as lib_ws:
        await lib_ws.send("lib")
        assert await asyncio.wait_for(lib_ws.recv(), timeout=WAIT) == "lib"
    open_ws = await ws_connect(client, proxy.port)  # and one left open while HTTP goes on
    try:
        for _ in range(3):
            async with client.get(f"{proxy.base}/plain", headers=HOST) as resp:
                assert resp.status == 200
                assert await resp.text() == "plain ok"
        await open_ws.send_str("still here")
        assert (await receive(open_ws)).data == "still here"
    finally:
        await asyncio.wait_for(open_ws.close(), timeout=WAIT)
    assert proxy.process.poll() is None
    assert "Traceback" not in proxy.stderr()


# ---------------------------------------------------------------- HTTPS upstream


async def test_websocket_to_https_upstream_goes_over_wss(start_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path) -> None:
    """The client speaks plain ws to the proxy; the proxy speaks wss to an app with a self-signed certificate."""
    upstream = WsUpstream()
    server = TestServer(upstream.app, host="127.0.0.1")
    await server.start_server(ssl=self_signed_context(tmp_path))
    try:
        proxy = await start_proxy({"app1": f"https://127.0.0.1:{server.port}"})
        ws = await ws_connect(client, proxy.port, "/secure", protocols=("vite-hmr",))
        try:
            assert ws.protocol == "vite-hmr"
            await ws.send_str("over tls")
            assert (await receive(ws)).data == "over tls"
            await ws.send_bytes(b"\x01\x02")
            assert (await receive(ws)).data == b"\x01\x02"
        finally:
            await asyncio.wait_for(ws.close(code=4000, message=b"done"), timeout=WAIT)
        seen = await upstream.first_seen()
        assert (seen.scheme, seen.path) == ("https", "/secure")
        assert await asyncio.wait_for(seen.close, timeout=WAIT) == (4000, "done")
    finally:
        await server.close()


# ---------------------------------------------------------------- the app's close reply reaches the client


@pytest.fixture
async def replying_upstream() -> AsyncIterator[TestServer]:
    """A WebSocket app that answers a client's close with a close of its own: code 4002, reason "app reply"."""

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoclose=False, autoping=False)
        await ws.prepare(request)
        for _ in range(1000):  # bounded; each test sends a message or two, then closes
            msg = await ws.receive()
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.CLOSE:
                await ws.close(code=4002, message=b"app reply")
                break
            else:
                break
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", websocket)
    server = TestServer(app, host="127.0.0.1")
    async with server:
        yield server


async def test_a_client_that_closes_gets_the_apps_own_close_reply(start_proxy: ProxyFactory, replying_upstream: TestServer) -> None:
    """The close the client gets back is the app's (code and reason), never one the proxy made up. Twenty
    times over: a proxy that answered closes itself would do so only when it won a race."""
    proxy = await start_proxy({"app1": replying_upstream.port})
    for round_ in range(20):
        async with websockets_connect(proxy.port, "/hmr") as ws:
            await ws.send(f"round {round_}")
            assert await asyncio.wait_for(ws.recv(), timeout=WAIT) == f"round {round_}"
            await asyncio.wait_for(ws.close(4000, "done"), timeout=WAIT)
        # The code and reason of the close frame the client received (1006 when none came).
        assert (ws.close_code, ws.close_reason) == (4002, "app reply"), f"round {round_}"


async def test_aiohttp_client_that_closes_gets_the_apps_own_close_code(
    start_proxy: ProxyFactory, replying_upstream: TestServer, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy({"app1": replying_upstream.port})
    ws = await ws_connect(client, proxy.port, "/hmr")
    await ws.send_str("x")
    assert (await receive(ws)).data == "x"
    await asyncio.wait_for(ws.close(code=4000, message=b"done"), timeout=WAIT)
    assert ws.close_code == 4002
