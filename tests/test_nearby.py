"""What listens near a refused upstream: pure sentences from a list of listeners, then the real
502 page and its wait-and-reload probe against listeners the tests start."""

from __future__ import annotations

import asyncio
import os
import socket

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.config.model import Upstream
from proxy.diagnostics.nearby import explain_nearby
from proxy.diagnostics.ports import ListeningSocket
from tests.support.proxies import ProxyFactory
from tests.support.system import free_port

APP = Upstream("http", "localhost", 5173)
APP_V4 = Upstream("http", "127.0.0.1", 3000)


@pytest.mark.parametrize(
    ("upstream", "listeners", "expected"),
    [
        (APP, [], None),
        (
            APP,
            [ListeningSocket("127.0.0.1", 5174, 4121, "node", ("node", "node_modules/.bin/vite"))],
            "port 5173 is free, but 5174 is taken by vite (pid 4121): did the dev server move?",
        ),
        (APP, [ListeningSocket("0.0.0.0", 5172, 7, "node", ("node", "server.js"))], "but 5172 is taken by node (pid 7)"),
        (APP, [ListeningSocket("127.0.0.1", 5177, 1, "node", ("vite",))], None),  # too far to be the same app
        (APP, [ListeningSocket("10.1.2.3", 5174, 1, "node", ("vite",))], None),  # not reachable on loopback
        (APP, [ListeningSocket("127.0.0.1", 5175, 1, "far"), ListeningSocket("127.0.0.1", 5174, 2, "near")], "5174 is taken by near"),
        (APP_V4, [ListeningSocket("::1", 3000, 4121, "node")], "nothing on 127.0.0.1:3000, but node (pid 4121) listens on [::1]:3000: write just 3000"),
        (APP_V4, [ListeningSocket("127.0.0.1", 3001, None, None)], "3001 is taken by another process"),
    ],
    ids=["nothing", "moved-up", "moved-down-any-interface", "too-far", "not-loopback", "nearest-wins", "other-loopback", "unknown-owner"],
)
def test_explain_nearby(upstream: Upstream, listeners: list[ListeningSocket], expected: str | None) -> None:
    sentence = explain_nearby(upstream, listeners)
    if expected is None:
        assert sentence is None
    else:
        assert sentence is not None and expected in sentence


def test_the_proxy_itself_is_never_the_suggestion() -> None:
    assert explain_nearby(APP, [ListeningSocket("127.0.0.1", 5174, 99, "python3")], own_pid=99) is None


async def test_502_page_names_the_process_on_the_next_port(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    """The test process itself listens one port up, so the page must name it and its pid."""
    with socket.socket() as moved:
        moved.bind(("127.0.0.1", 0))
        moved.listen()
        port = moved.getsockname()[1]
        proxy = await start_proxy({"app1": port - 1})
        async with client.get(proxy.base, headers={"Host": "app1.localhost", "Accept": "application/json"}) as resp:
            assert resp.status == 502
            problem = await resp.json()
    assert f"{port} is taken by" in problem["hint"] and f"pid {os.getpid()}" in problem["hint"], problem


async def test_html_502_page_waits_and_the_probe_turns_200_once_the_app_starts(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    port = free_port()
    proxy = await start_proxy({"app1": f"127.0.0.1:{port}"})
    async with client.get(proxy.base, headers={"Host": "app1.localhost", "Accept": "text/html"}) as resp:
        assert resp.status == 502
        page = await resp.text()
    assert "X-Localhost-Proxy-Probe" in page and "location.reload()" in page

    probe = {"Host": "app1.localhost", "X-Localhost-Proxy-Probe": "ready"}
    async with client.get(proxy.base, headers=probe) as resp:
        assert resp.status == 503

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="the app")

    app = web.Application()
    app.router.add_get("/", hello)
    async with TestServer(app, host="127.0.0.1", port=port):
        async with client.get(proxy.base, headers=probe) as resp:
            assert resp.status == 200
        async with client.get(proxy.base, headers={"Host": "app1.localhost"}) as resp:
            assert await resp.text() == "the app"
    await asyncio.sleep(0)


async def test_unknown_site_page_gives_the_exact_add_command(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    proxy = await start_proxy({"app1": free_port()})
    async with client.get(proxy.base, headers={"Host": "shop.localhost", "Accept": "application/json"}) as resp:
        assert resp.status == 404
        problem = await resp.json()
    assert problem["add"] == f"localhost-proxy add shop 3000 --config {proxy.config}"
