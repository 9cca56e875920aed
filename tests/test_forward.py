"""Forwarding through the real proxy process: what the upstream sees, what the client gets back."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.proxies import ProxyFactory
from tests.support.rawhttp import header_values


async def test_site_by_name_reaches_its_upstream(start_proxy: ProxyFactory, echo_server: TestServer, client: aiohttp.ClientSession) -> None:
    proxy = await start_proxy({"app1": echo_server.port})
    async with client.get(f"{proxy.base}/hello?x=1", headers={"Host": "app1.localhost"}) as resp:
        assert resp.status == 200
        echoed = await resp.json()
    assert echoed["target"] == "/hello?x=1"
    assert header_values(echoed, "Host") == ["app1.localhost"]
    assert header_values(echoed, "X-Forwarded-Host") == ["app1.localhost"]
    assert header_values(echoed, "X-Forwarded-Proto") == ["http"]
    assert header_values(echoed, "X-Forwarded-For") == ["127.0.0.1"]


async def test_upstream_connections_are_pooled_and_kept_alive(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    """Twenty requests in a row reuse one upstream connection instead of dialing twenty times."""
    peers: set[tuple[str, int]] = set()

    async def remember_peer(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername")[:2])
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", remember_peer)
    async with TestServer(app, host="127.0.0.1") as upstream:
        proxy = await start_proxy({"app1": f"127.0.0.1:{upstream.port}"})
        for _ in range(20):
            async with client.get(f"{proxy.base}/", headers={"Host": "app1.localhost"}) as resp:
                assert await resp.text() == "ok"
    assert len(peers) == 1, f"upstream saw {len(peers)} connections"
