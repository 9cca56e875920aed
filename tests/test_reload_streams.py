"""Reload never interrupts work in flight: concurrent requests across a broken and a good save,
a WebSocket and an event stream held open across five reloads, a response mid-body while its
site is removed, and pooled upstream connections kept.

Real proxy process, real upstreams on 127.0.0.1; waits are polls with deadlines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from tests.support.proxies import ProxyFactory
from tests.support.rawhttp import EchoUpstream, echo_upstream
from tests.support.reloading import (
    addr,
    api_sites,
    assert_healthy,
    assert_routed,
    fetch,
    save_in_place,
    save_rename_over,
    site_hosts,
    sites_text,
    wait_config_error,
    wait_config_ok,
    wait_routed,
)
from tests.support.waiting import DEADLINE, until, until_true

WORKERS = 200


# ---------------------------------------------------------------- concurrent requests


@dataclass
class Traffic:
    """Counts of requests that WORKERS loops send to app1 until told to stop."""

    ok: int = 0
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def test_no_request_fails_while_a_broken_then_a_good_file_is_saved(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    """200 requests are always in flight to app1 (its upstream takes 20 ms each) while the file is
    broken and then fixed; every one gets the upstream's answer."""

    async def slowish(request: web.Request) -> web.Response:
        await asyncio.sleep(0.02)
        return web.Response(text="from a", headers={"X-Upstream": "a"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", slowish)
    async with TestServer(app, host="127.0.0.1") as slow, echo_upstream("b") as upstream_b:
        proxy = await start_proxy(sites_text({"app1": f"127.0.0.1:{slow.port}"}))
        traffic = Traffic()

        async def worker(session: aiohttp.ClientSession, n: int) -> None:
            for _ in range(100_000):  # bounded
                if traffic.stop.is_set():
                    return
                try:
                    async with session.get(f"{proxy.base}/w{n}", headers={"Host": "app1.localhost"}) as resp:
                        body = await resp.text()
                        if resp.status == 200 and body == "from a":
                            traffic.ok += 1
                        else:
                            traffic.failures.append(f"{resp.status} {body[:200]!r}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    traffic.failures.append(repr(exc))

        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=15)) as session:
            workers = [asyncio.create_task(worker(session, n)) for n in range(WORKERS)]
            try:
                await until_true(lambda: traffic.ok >= WORKERS or traffic.failures, "the first 200 requests")
                await save_in_place(proxy.config, sites_text({"app1": f"127.0.0.1:{slow.port}", "app2": "300o"}))
                await wait_config_error(client, proxy)
                during_broken = traffic.ok
                await until_true(lambda: traffic.ok >= during_broken + WORKERS or traffic.failures, "200 more requests while the file is broken")

                await save_in_place(proxy.config, sites_text({"app1": f"127.0.0.1:{slow.port}", "app2": addr(upstream_b)}))
                await wait_routed(client, proxy, "app2.localhost", upstream_b)
                after_good = traffic.ok
                await until_true(lambda: traffic.ok >= after_good + WORKERS or traffic.failures, "200 more requests after the good save")
            finally:
                traffic.stop.set()
                await asyncio.wait_for(asyncio.gather(*workers), timeout=20)

        assert traffic.failures == [], f"{len(traffic.failures)} of {traffic.ok + len(traffic.failures)} failed, first: {traffic.failures[:5]}"
        assert traffic.ok >= 3 * WORKERS
        await wait_config_ok(client, proxy)
        assert_healthy(proxy)


# ---------------------------------------------------------------- streams across reloads


class StreamingUpstream:
    """A WebSocket echo at /ws and an event stream at /events fed by the test, counting connections."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[str] = asyncio.Queue()
        self.ws_connections = 0
        self.event_streams = 0
        app = web.Application()
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/events", self.stream)
        self.app = app

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        self.ws_connections += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for _ in range(1000):  # bounded
            msg = await ws.receive()
            if msg.type != WSMsgType.TEXT:
                break
            await ws.send_str(f"echo {msg.data}")
        return ws

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.event_streams += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(b"data: hello\n\n")
        for _ in range(1000):  # bounded
            event = await asyncio.wait_for(self.events.get(), timeout=30)
            await response.write(f"data: {event}\n\n".encode())
        return response


async def read_event(resp: aiohttp.ClientResponse, buffer: bytearray, event: str) -> None:
    """Read from the stream until `data: event` has arrived; fail if it does not within DEADLINE."""
    marker = f"data: {event}\n\n".encode()

    async def read() -> None:
        while marker not in buffer:
            chunk = await resp.content.readany()
            if not chunk:
                raise AssertionError(f"event stream ended before {marker!r}; got {bytes(buffer)!r}")
            buffer.extend(chunk)

    try:
        await asyncio.wait_for(read(), timeout=DEADLINE)
    except TimeoutError:
        raise AssertionError(f"{marker!r} did not arrive within {DEADLINE} s; got {bytes(buffer)!r}") from None
    del buffer[: buffer.index(marker) + len(marker)]


async def test_websocket_and_event_stream_stay_open_across_five_reloads(
    start_proxy: ProxyFactory, client: aiohttp.ClientSession, upstream_a: EchoUpstream, upstream_b: EchoUpstream
) -> None:
    streaming = StreamingUpstream()
    async with TestServer(streaming.app, host="127.0.0.1") as server:
        sites = {"ws": f"127.0.0.1:{server.port}", "sse": f"127.0.0.1:{server.port}"}
        proxy = await start_proxy(sites_text(sites))
        ws = await asyncio.wait_for(client.ws_connect(f"{proxy.base}/ws", headers={"Host": "ws.localhost"}), DEADLINE)
        async with client.get(f"{proxy.base}/events", headers={"Host": "sse.localhost", "Accept": "text/event-stream"}) as events:
            assert events.status == 200
            buffer = bytearray()
            await read_event(events, buffer, "hello")

            async def gone(host: str) -> bool:
                return (await fetch(client, proxy.base, host)).status == 404

            reloads: list[tuple[dict[str, str | None], Callable[[], Awaitable[object]]]] = [
                ({"extra1": addr(upstream_a)}, lambda: wait_routed(client, proxy, "extra1.localhost", upstream_a)),
                ({"extra2": addr(upstream_a)}, lambda: wait_routed(client, proxy, "extra2.localhost", upstream_a)),
                ({"extra1": addr(upstream_b)}, lambda: wait_routed(client, proxy, "extra1.localhost", upstream_b)),  # changed
                ({"extra2": None}, lambda: until(lambda: gone("extra2.localhost"), "extra2 removed")),
                ({"extra3": addr(upstream_b)}, lambda: wait_routed(client, proxy, "extra3.localhost", upstream_b)),
            ]
            for i, (change, in_effect) in enumerate(reloads, start=1):
                for name, target in change.items():
                    if target is None:
                        del sites[name]
                    else:
                        sites[name] = target
                await (save_rename_over if i % 2 else save_in_place)(proxy.config, sites_text(sites))
                await in_effect()

                await ws.send_str(f"after reload {i}")
                msg = await ws.receive(timeout=DEADLINE)
                assert (msg.type, msg.data) == (WSMsgType.TEXT, f"echo after reload {i}"), f"reload {i}: {msg}\n{proxy.stderr()}"
                streaming.events.put_nowait(f"after reload {i}")
                await read_event(events, buffer, f"after reload {i}")

            assert not ws.closed
            await ws.close()
        assert (streaming.ws_connections, streaming.event_streams) == (1, 1)
        assert_healthy(proxy)


async def test_a_response_in_flight_completes_when_its_site_is_removed(
    start_proxy: ProxyFactory, client: aiohttp.ClientSession, upstream_b: EchoUpstream
) -> None:
    """One response is mid-body and another has not started when the reload removes their site;
    both finish in full once the upstream goes on."""
    go_on = asyncio.Event()
    chunk = b"x" * 65536

    async def halfway(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(2 * len(chunk))})
        await response.prepare(request)
        await response.write(chunk)
        await asyncio.wait_for(go_on.wait(), timeout=30)
        await response.write(chunk)
        await response.write_eof()
        return response

    async def late(request: web.Request) -> web.Response:
        await asyncio.wait_for(go_on.wait(), timeout=30)
        return web.Response(body=chunk)

    arrived = {"late": asyncio.Event()}

    async def late_marked(request: web.Request) -> web.Response:
        arrived["late"].set()
        return await late(request)

    app = web.Application()
    app.router.add_get("/halfway", halfway)
    app.router.add_get("/late", late_marked)
    async with TestServer(app, host="127.0.0.1") as slow:
        proxy = await start_proxy(sites_text({"slow": f"127.0.0.1:{slow.port}"}))

        async def get_late() -> tuple[int, bytes]:
            async with client.get(f"{proxy.base}/late", headers={"Host": "slow.localhost"}) as resp:
                return resp.status, await resp.read()

        late_request = asyncio.create_task(get_late())
        async with client.get(f"{proxy.base}/halfway", headers={"Host": "slow.localhost"}) as resp:
            assert resp.status == 200
            first = await asyncio.wait_for(resp.content.readexactly(len(chunk)), DEADLINE)
            await asyncio.wait_for(arrived["late"].wait(), DEADLINE)

            await save_rename_over(proxy.config, sites_text({"app2": addr(upstream_b)}))
            await wait_routed(client, proxy, "app2.localhost", upstream_b)
            assert (await fetch(client, proxy.base, "slow.localhost")).status == 404

            go_on.set()
            rest = await asyncio.wait_for(resp.content.read(), DEADLINE)
        assert first + rest == chunk * 2
        status, body = await asyncio.wait_for(late_request, DEADLINE)
        assert (status, body) == (200, chunk)
        assert_healthy(proxy)


async def test_pooled_upstream_connection_of_an_unchanged_site_is_reused_after_a_reload(
    start_proxy: ProxyFactory, client: aiohttp.ClientSession, upstream_b: EchoUpstream
) -> None:
    """The upstream sees the proxy's requests for app1 arrive on the same TCP connection before and after."""
    peers: list[object] = []

    async def who(request: web.Request) -> web.Response:
        transport = request.transport
        peers.append(transport.get_extra_info("peername") if transport else None)
        return web.Response(text="a", headers={"X-Upstream": "a"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", who)
    async with TestServer(app, host="127.0.0.1") as server:
        sites = {"app1": f"127.0.0.1:{server.port}"}
        proxy = await start_proxy(sites_text(sites))
        for _ in range(2):
            assert (await fetch(client, proxy.base, "app1.localhost")).status == 200
        assert peers[0] == peers[1], f"the proxy does not reuse upstream connections at all: {peers}"

        await save_rename_over(proxy.config, sites_text({**sites, "app2": addr(upstream_b)}))
        await wait_routed(client, proxy, "app2.localhost", upstream_b)
        assert "app1.localhost" in site_hosts(await api_sites(client, proxy))

        assert (await fetch(client, proxy.base, "app1.localhost")).status == 200
        assert peers[-1] == peers[0], f"app1's pooled connection was dropped by the reload: {peers}"
        await assert_routed(client, proxy, "app2.localhost", upstream_b)
        assert_healthy(proxy)
