"""Load: 1000 client connections at once, all answered, and the proxy's descriptors and memory
back near their baseline afterwards; 200 requests in flight across a reload, none lost.

Every loop is bounded in count and time, and all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.upstream.connection import UPSTREAM_IDLE_TIMEOUT
from tests.support.proxies import Proxy, ProxyFactory, write_sites
from tests.support.rawhttp import http_request, read_response
from tests.support.waiting import wait_until

MiB = 1024 * 1024
CONNECTIONS = 1000
ARRIVED = web.AppKey("arrived", list[str])


@pytest.fixture(autouse=True)
def enough_descriptors() -> Iterator[None]:
    """This test process holds both ends' sockets of 1000 connections: raise its own soft limit (not the machine's)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192
    if wanted < 3 * CONNECTIONS:
        pytest.skip(f"this process may open only {hard} files; the load test needs {3 * CONNECTIONS}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
async def slow_upstream() -> AsyncIterator[TestServer]:
    """Answers every request after `?wait=` seconds, so many requests are in flight at once."""

    async def answer(request: web.Request) -> web.Response:
        request.app[ARRIVED].append(request.path_qs)
        await asyncio.sleep(float(request.query.get("wait", "0")))
        return web.Response(text=f"old {request.path_qs}")

    app = web.Application()
    app[ARRIVED] = []
    app.router.add_get("/{tail:.*}", answer)
    server = TestServer(app, host="127.0.0.1")
    async with server:
        yield server


def open_descriptors(proxy: Proxy) -> int:
    return len(os.listdir(f"/proc/{proxy.process.pid}/fd"))


async def wait_for_descriptors(proxy: Proxy, at_most: int, timeout: float) -> int:
    """Return the proxy's open descriptors once they are down to at_most, or as they are after timeout."""
    await wait_until(lambda: open_descriptors(proxy) <= at_most, timeout, interval=0.25)
    return open_descriptors(proxy)


@pytest.mark.timeout(120)
async def test_1000_concurrent_connections_are_all_answered_and_resources_return(start_proxy: ProxyFactory, slow_upstream: TestServer) -> None:
    proxy = await start_proxy({"app1": f"127.0.0.1:{slow_upstream.port}"})
    warm = await asyncio.open_connection("127.0.0.1", proxy.port)
    warm[1].write(http_request("GET", "/warm", headers=[("Connection", "close")]))
    assert (await read_response(warm[0])).status == 200
    warm[1].close()
    await asyncio.sleep(UPSTREAM_IDLE_TIMEOUT + 1)  # the warm-up's pooled upstream connection has closed
    descriptors_before, rss_before = open_descriptors(proxy), proxy.rss()

    opened = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(CONNECTIONS)))
    held = 0

    async def sample_descriptors() -> None:
        nonlocal held
        for _ in range(1000):  # bounded; cancelled once every answer is in
            held = max(held, open_descriptors(proxy))
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample_descriptors())
    for i, (_, writer) in enumerate(opened):
        writer.write(http_request("GET", f"/load/{i}?wait=1.5", headers=[("Connection", "close")]))

    async def answer(i: int, reader: asyncio.StreamReader) -> bytes:
        response = await read_response(reader)
        assert response.status == 200, response
        return response.body

    async with asyncio.timeout(60):
        bodies = await asyncio.gather(*(answer(i, reader) for i, (reader, _) in enumerate(opened)))
    sampler.cancel()
    for _, writer in opened:
        writer.close()
    assert bodies == [f"old /load/{i}?wait=1.5".encode() for i in range(CONNECTIONS)]
    rss_peak = proxy.rss()

    # Client sockets close at once; pooled upstream ones after their idle timeout.
    descriptors_after = await wait_for_descriptors(proxy, descriptors_before, timeout=30)
    rss_after = proxy.rss()
    print(
        f"{CONNECTIONS} connections: descriptors {descriptors_before} before, {held} while held, {descriptors_after} after; "
        f"RSS {rss_before / MiB:.1f} MiB before, {rss_peak / MiB:.1f} MiB at the peak, {rss_after / MiB:.1f} MiB after"
    )
    # Each request holds a client and an upstream socket while the upstream waits.
    assert held >= descriptors_before + 2 * CONNECTIONS * 0.9, f"only {held} descriptors at the peak: the requests were not in flight together"
    assert descriptors_after <= descriptors_before, f"{descriptors_after - descriptors_before} descriptors leaked"
    assert rss_after - rss_before < 48 * MiB, f"RSS grew {(rss_after - rss_before) / MiB:.1f} MiB"
    assert proxy.process.poll() is None


@pytest.mark.timeout(60)
async def test_200_requests_in_flight_across_a_reload_are_all_answered(
    start_proxy: ProxyFactory, slow_upstream: TestServer, client: aiohttp.ClientSession
) -> None:
    new_app = web.Application()

    async def answer_new(request: web.Request) -> web.Response:
        return web.Response(text=f"new {request.path_qs}")

    new_app.router.add_get("/{tail:.*}", answer_new)
    async with TestServer(new_app, host="127.0.0.1") as new_upstream:
        proxy = await start_proxy({"app1": f"127.0.0.1:{slow_upstream.port}"})
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as many:

            async def fetch(i: int) -> tuple[int, str]:
                async with many.get(f"{proxy.base}/flight/{i}?wait=3", headers={"Host": "app1.localhost"}) as resp:
                    return resp.status, await resp.text()

            in_flight = [asyncio.create_task(fetch(i)) for i in range(200)]
            arrived = slow_upstream.app[ARRIVED]
            async with asyncio.timeout(10):
                while len(arrived) < 200:  # wait until all 200 are held by the old upstream, however slow the machine
                    await asyncio.sleep(0.02)
            write_sites(proxy.config, {"app1": f"127.0.0.1:{new_upstream.port}"})
            async with asyncio.timeout(10):
                while True:  # the reload has happened once a new request reaches the new upstream
                    async with client.get(f"{proxy.base}/probe", headers={"Host": "app1.localhost"}) as resp:
                        if (await resp.text()).startswith("new"):
                            break
                    await asyncio.sleep(0.05)
            assert not any(task.done() for task in in_flight), "the reload came after the requests finished: this proves nothing"
            async with asyncio.timeout(20):
                results = await asyncio.gather(*in_flight)
    assert results == [(200, f"old /flight/{i}?wait=3") for i in range(200)]
