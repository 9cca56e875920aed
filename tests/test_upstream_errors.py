"""When the upstream cannot answer: refused, hanging, garbage, cut off, a loop, a client that leaves.

Each failure must come back as an explained 502/504/508 page, or, once bytes are on their way,
as a visibly broken response; and the proxy must go on serving the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.support.proxies import Proxy, ProxyFactory
from tests.support.rawhttp import TIMEOUT, canned, connection, exchange, http_request, raw_upstream
from tests.support.system import free_port, unanswering_listener


async def assert_still_serving(proxy: Proxy, client: aiohttp.ClientSession, host: str = "ok.localhost") -> None:
    """The proxy answers a healthy site after whatever the test did to it."""
    async with client.get(f"{proxy.base}/still-there", headers={"Host": host}) as resp:
        assert resp.status == 200
        assert (await resp.json())["target"] == "/still-there"
    assert "Traceback" not in proxy.stderr()


# ---------------------------------------------------------------- nothing listening


def config_mark(proxy: Proxy, line: int) -> str:
    """A regex for FILE:LINE:COL pointing into this proxy's sites.yaml."""
    return re.escape(str(proxy.config)) + rf":{line}:\d+"


async def test_refused_upstream_as_json_names_site_addresses_config_and_hint(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    port = free_port()
    proxy = await start_proxy({"app1": port})
    async with client.get(f"{proxy.base}/", headers={"Host": "app1.localhost", "Accept": "application/json"}) as resp:
        assert resp.status == 502
        assert resp.content_type == "application/json"
        problem = await resp.json()
    assert {"error", "detail", "hint", "tried", "config"} <= set(problem)
    assert "app1.localhost" in problem["detail"] or problem.get("site") == "app1.localhost"
    assert set(problem["tried"]) == {f"127.0.0.1:{port}", f"[::1]:{port}"}
    assert re.fullmatch(config_mark(proxy, 2), problem["config"])
    assert problem["hint"].strip()


async def test_refused_upstream_without_accept_is_plain_text(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    port = free_port()
    proxy = await start_proxy({"app1": port})
    async with client.get(f"{proxy.base}/", headers={"Host": "app1.localhost"}, skip_auto_headers=["Accept"]) as resp:
        assert resp.status == 502
        assert resp.content_type == "text/plain"
        text = await resp.text()
    assert "app1.localhost" in text
    assert f"127.0.0.1:{port}" in text and f"[::1]:{port}" in text
    assert re.search(config_mark(proxy, 2), text)
    async with client.get(f"{proxy.base}/", headers={"Host": "app1.localhost", "Accept": "application/json"}) as resp:
        hint = (await resp.json())["hint"]
    assert hint and hint in text


async def test_refused_upstream_for_browser_is_html_page(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    port = free_port()
    proxy = await start_proxy({"app1": port})
    accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    async with client.get(f"{proxy.base}/", headers={"Host": "app1.localhost", "Accept": accept}) as resp:
        assert resp.status == 502
        assert resp.content_type == "text/html"
        page = await resp.text()
    assert page.lstrip().lower().startswith("<!doctype html")
    assert "app1.localhost" in page
    assert f"127.0.0.1:{port}" in page and f"[::1]:{port}" in page
    assert re.search(config_mark(proxy, 2), page)


async def test_refused_route_names_its_own_config_line(start_proxy: ProxyFactory, echo_server: TestServer, client: aiohttp.ClientSession) -> None:
    port = free_port()
    proxy = await start_proxy({"app1": {"routes": {"/": echo_server.port, "/api": port}}})
    async with client.get(f"{proxy.base}/api/x", headers={"Host": "app1.localhost", "Accept": "application/json"}) as resp:
        assert resp.status == 502
        problem = await resp.json()
    # sites: / app1: / routes: / "/": ... / /api: ...  -> the /api route is on line 5.
    assert re.fullmatch(config_mark(proxy, 5), problem["config"])


# ---------------------------------------------------------------- connect timeout


@pytest.fixture
def unanswering_port() -> Iterator[int]:
    """A 127.0.0.1 port whose listen backlog is full, so a new connection neither completes nor is refused."""
    with unanswering_listener() as port:
        yield port


async def test_connect_timeout_is_504_within_seconds(
    start_proxy: ProxyFactory, unanswering_port: int, echo_server: TestServer, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy({"stuck": {"upstream": f"127.0.0.1:{unanswering_port}", "connect_timeout": 1}, "ok": echo_server.port})
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with client.get(
        f"{proxy.base}/", headers={"Host": "stuck.localhost", "Accept": "application/json"}, timeout=aiohttp.ClientTimeout(total=TIMEOUT)
    ) as resp:
        assert resp.status == 504
        problem = await resp.json()
    assert 0.9 <= loop.time() - started < 4
    assert problem["tried"] == [f"127.0.0.1:{unanswering_port}"]
    await assert_still_serving(proxy, client)


async def test_websocket_connect_timeout_is_504_not_a_hang(
    start_proxy: ProxyFactory, unanswering_port: int, echo_server: TestServer, client: aiohttp.ClientSession
) -> None:
    """A WebSocket upgrade to an upstream that never accepts ends in 504 after connect_timeout."""
    proxy = await start_proxy({"stuck": {"upstream": f"127.0.0.1:{unanswering_port}", "connect_timeout": 1}, "ok": echo_server.port})
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(f"{proxy.base}/hmr", headers={"Host": "stuck.localhost"}, timeout=aiohttp.ClientWSTimeout(ws_close=TIMEOUT))
    assert refused.value.status == 504
    assert 0.9 <= loop.time() - started < 4
    await assert_still_serving(proxy, client)


# ---------------------------------------------------------------- upstreams that are not HTTP


@pytest.mark.parametrize(
    "answer",
    [b"SSH-2.0-OpenSSH_9.6\r\n", b"this is not http at all\r\n\r\n", b"HTTP/1.1 abc Nope\r\n\r\n", b""],
    ids=["ssh-banner", "text", "bad-status", "closes-silently"],
)
async def test_upstream_not_speaking_http_is_502(start_proxy: ProxyFactory, echo_server: TestServer, client: aiohttp.ClientSession, answer: bytes) -> None:
    async with raw_upstream(canned(answer)) as port:
        proxy = await start_proxy({"broken": f"127.0.0.1:{port}", "ok": echo_server.port})
        async with client.get(f"{proxy.base}/", headers={"Host": "broken.localhost"}, skip_auto_headers=["Accept"]) as resp:
            assert resp.status == 502
            text = await resp.text()
        assert "broken.localhost" in text and f"127.0.0.1:{port}" in text
    await assert_still_serving(proxy, client)


# ---------------------------------------------------------------- upstream dies mid-body

CUT_OFF = {
    "content-length": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000000\r\n\r\n0123456789",
    "chunked": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
}


@pytest.mark.parametrize("framing", CUT_OFF)
async def test_upstream_dying_mid_body_aborts_client_response(
    start_proxy: ProxyFactory, echo_server: TestServer, client: aiohttp.ClientSession, framing: str
) -> None:
    async with raw_upstream(canned(CUT_OFF[framing])) as port:
        proxy = await start_proxy({"dies": f"127.0.0.1:{port}", "ok": echo_server.port})
        async with client.get(f"{proxy.base}/", headers={"Host": "dies.localhost"}) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(resp.read(), TIMEOUT)
    await assert_still_serving(proxy, client)


@pytest.mark.parametrize("framing", CUT_OFF)
async def test_upstream_dying_mid_body_never_looks_complete_on_the_wire(start_proxy: ProxyFactory, framing: str) -> None:
    async with raw_upstream(canned(CUT_OFF[framing])) as port:
        proxy = await start_proxy({"dies": f"127.0.0.1:{port}"})
        response = await exchange(proxy.port, http_request("GET", "/", host="dies.localhost"))
    assert response.status == 200
    assert not response.complete, "a cut-off upstream body was re-framed as complete"
    assert response.body.startswith(b"0123456789")


# ---------------------------------------------------------------- loops


async def test_site_whose_upstream_is_the_proxy_gets_508_quickly(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    port = free_port()
    proxy = await start_proxy({"loop": port}, http=f"127.0.0.1:{port}")
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with client.get(
        f"{proxy.base}/", headers={"Host": "loop.localhost"}, skip_auto_headers=["Accept"], timeout=aiohttp.ClientTimeout(total=TIMEOUT)
    ) as resp:
        assert resp.status == 508
        text = await resp.text()
    assert loop.time() - started < 3
    assert "loop" in text.lower() and "loop.localhost" in text
    assert "Traceback" not in proxy.stderr()


# ---------------------------------------------------------------- the client leaves


async def test_client_leaving_mid_response_cancels_upstream_request(start_proxy: ProxyFactory, echo_server: TestServer, client: aiohttp.ClientSession) -> None:
    upstream_saw_close = asyncio.Event()
    ticks_sent = 0

    async def slow_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal ticks_sent
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for i in range(100):  # 10 s of ticks unless the proxy hangs up first
                tick = f"tick {i}\n".encode()
                writer.write(b"%x\r\n%s\r\n" % (len(tick), tick))
                await writer.drain()
                ticks_sent += 1
                with contextlib.suppress(asyncio.TimeoutError):
                    if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                        break  # EOF: the proxy closed its side
        except ConnectionError:
            pass
        upstream_saw_close.set()

    async with raw_upstream(slow_stream) as port:
        proxy = await start_proxy({"slow": f"127.0.0.1:{port}", "ok": echo_server.port})
        async with connection(proxy.port) as (reader, writer):
            writer.write(http_request("GET", "/stream", host="slow.localhost"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert head.startswith(b"HTTP/1.1 200")
            assert b"tick 0" in await asyncio.wait_for(reader.readuntil(b"tick 0"), TIMEOUT)
        await asyncio.wait_for(upstream_saw_close.wait(), TIMEOUT)
        assert ticks_sent < 60, "the upstream kept streaming long after the client left"
        await assert_still_serving(proxy, client)
