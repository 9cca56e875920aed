"""`run --loop`: the proxy works the same on asyncio's own event loop and on uvloop.

The rest of the suite runs on the default (uvloop when installed); this module drives the main
paths on each loop explicitly: a small response, a streamed one, a request body, a WebSocket,
HTTPS, and an upstream that is down.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.proxies import ProxyFactory
from tests.support.system import free_port

LOOPS = [
    "asyncio",
    pytest.param("uvloop", marks=pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed")),
]


@pytest.fixture
async def app_server() -> AsyncIterator[TestServer]:
    async def small(request: web.Request) -> web.Response:
        return web.Response(text="small")

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(3):
            await response.write(f"part{i};".encode())
            await asyncio.sleep(0.05)
        await response.write_eof()
        return response

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            await socket.send_str(f"echo {message.data}")
        return socket

    app = web.Application()
    app.router.add_get("/small", small)
    app.router.add_get("/stream", stream)
    app.router.add_post("/echo", echo)
    app.router.add_get("/ws", ws)
    server = TestServer(app, host="127.0.0.1")
    async with server:
        yield server


@pytest.mark.parametrize("loop_name", LOOPS)
async def test_main_paths_work_on_each_event_loop(start_proxy: ProxyFactory, app_server: TestServer, loop_name: str) -> None:
    proxy = await start_proxy({"app1": f"127.0.0.1:{app_server.port}", "down": f"127.0.0.1:{free_port()}"}, "--loop", loop_name, https=True)
    assert f"event loop: {loop_name}" in proxy.stderr()
    app1 = {"Host": "app1.localhost"}
    async with aiohttp.ClientSession() as session:
        for base in (proxy.base, proxy.https_urls[0]):
            async with session.get(f"{base}/small", headers=app1, ssl=False) as resp:
                assert (resp.status, await resp.text()) == (200, "small")
            async with session.get(f"{base}/stream", headers=app1, ssl=False) as resp:
                assert resp.headers.get("Transfer-Encoding") == "chunked"
                assert await resp.text() == "part0;part1;part2;"
            body = bytes(range(256)) * 1024
            async with session.post(f"{base}/echo", headers=app1, data=body, ssl=False) as resp:
                assert await resp.read() == body
            async with session.ws_connect(f"{base.replace('http', 'ws', 1)}/ws", headers=app1, ssl=False) as socket:
                await socket.send_str("hi")
                assert (await socket.receive(timeout=5)).data == "echo hi"
            async with session.get(f"{base}/", headers={"Host": "down.localhost", "Accept": "text/plain"}, ssl=False) as resp:
                assert resp.status == 502
                assert "connection refused" in await resp.text()
    assert proxy.process.poll() is None


def test_asking_for_uvloop_when_it_is_missing_says_how_to_get_it(tmp_path: Path) -> None:
    config = tmp_path / "sites.yaml"
    config.write_text("sites:\n  app1: 3000\n")
    hide_uvloop = "import sys; sys.modules['uvloop'] = None; from proxy.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", hide_uvloop, "run", "--config", str(config), "--http", "127.0.0.1:0", "--no-https", "--loop", "uvloop"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 2, result
    assert "uvloop is not installed" in result.stderr and "--loop asyncio" in result.stderr, result.stderr
    assert "listening on" not in result.stdout
