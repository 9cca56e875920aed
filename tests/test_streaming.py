"""Bodies stream through the real proxy process both ways, with backpressure, never buffered whole.

Memory is measured on the proxy subprocess (/proc/PID/statm) while a fast sender meets a slow
reader on the other side: a proxy that buffered would have to hold the difference.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.proxies import Proxy, ProxyFactory

MiB = 1024 * 1024
CHUNK = 64 * 1024
# A proxy that streams holds a few socket and parser buffers; one that buffers holds most of the body.
RSS_GROWTH_LIMIT = 24 * MiB


class RssSampler:
    """Samples the proxy's resident memory every few milliseconds and keeps the peak."""

    def __init__(self, proxy: Proxy, interval: float = 0.02) -> None:
        self.proxy = proxy
        self.interval = interval
        self.baseline = proxy.rss()
        self.peak = self.baseline
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    async def _run(self) -> None:
        for _ in range(100_000):  # bounded: ~30 minutes at 20 ms; the test timeout ends it long before
            self.peak = max(self.peak, self.proxy.rss())
            self.samples += 1
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.peak = max(self.peak, self.proxy.rss())


class Pacer:
    """Sleeps so that bytes counted through it move at no more than `rate` bytes a second."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.count = 0
        self.started = asyncio.get_running_loop().time()

    async def add(self, n: int) -> None:
        self.count += n
        ahead = self.count / self.rate - (asyncio.get_running_loop().time() - self.started)
        if ahead > 0:
            await asyncio.sleep(ahead)


def numbered_chunk(pool: bytes, i: int) -> bytes:
    """Return chunk i of a stream: its number, then a slice of random bytes that varies with i."""
    offset = (i * 4099) % (len(pool) - CHUNK)
    return i.to_bytes(8, "big") + pool[offset : offset + CHUNK - 8]


async def warm_up(client: aiohttp.ClientSession, proxy: Proxy) -> None:
    """Send a few small requests so lazily imported code and pools are in the baseline."""
    for _ in range(3):
        async with client.post(f"{proxy.base}/warmup", data=b"x" * 1000, headers={"Host": "app1.localhost"}) as resp:
            await resp.read()
    await asyncio.sleep(0.2)


# ---------------------------------------------------------------- upload


@pytest.mark.timeout(60)
@pytest.mark.parametrize("framing", ["chunked", "content-length"])
async def test_100_mib_upload_to_slow_upstream_streams_with_bounded_memory(start_proxy: ProxyFactory, client: aiohttp.ClientSession, framing: str) -> None:
    """A 100 MiB body sent faster than the upstream reads it passes in full while the proxy stays small."""
    total = 100 * MiB
    upstream_rate = 16 * MiB  # ~6 s for the whole body
    received_bytes = 0

    async def slow_sink(request: web.Request) -> web.Response:
        if request.path == "/warmup":
            await request.read()
            return web.Response(text="warm")
        nonlocal received_bytes
        digest = hashlib.sha256()
        pacer = Pacer(upstream_rate)
        for _ in range(10 * total // 1024 + 10):  # bounded: chunks are at least a few bytes each
            chunk = await request.content.read(CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            received_bytes += len(chunk)
            await pacer.add(len(chunk))
        return web.json_response({"bytes": received_bytes, "sha256": digest.hexdigest()})

    app = web.Application(client_max_size=2 * total)
    app.router.add_route("POST", "/{tail:.*}", slow_sink)
    async with TestServer(app, host="127.0.0.1") as upstream:
        proxy = await start_proxy({"app1": upstream.port})
        await warm_up(client, proxy)

        pool = os.urandom(2 * MiB)
        sent = hashlib.sha256()

        async def body() -> AsyncIterator[bytes]:
            for i in range(total // CHUNK):
                chunk = numbered_chunk(pool, i)
                sent.update(chunk)
                yield chunk

        headers = {"Host": "app1.localhost", "Content-Type": "application/octet-stream"}
        if framing == "content-length":
            headers["Content-Length"] = str(total)
        sampler = RssSampler(proxy)
        sampler.start()
        try:
            async with client.post(f"{proxy.base}/upload", data=body(), headers=headers, timeout=aiohttp.ClientTimeout(total=45)) as resp:
                assert resp.status == 200, await resp.text()
                answer = await resp.json()
        finally:
            await sampler.stop()

    print(
        f"\n100 MiB upload ({framing}): proxy RSS baseline {sampler.baseline / MiB:.1f} MiB, peak growth {sampler.growth / MiB:.1f} MiB over {sampler.samples} samples"
    )
    assert answer["bytes"] == total
    assert answer["sha256"] == sent.hexdigest()
    assert sampler.samples > 20, "the transfer was too quick to observe"
    assert sampler.growth < RSS_GROWTH_LIMIT, f"proxy grew by {sampler.growth / MiB:.1f} MiB while relaying a 100 MiB upload"


# ---------------------------------------------------------------- download


@pytest.mark.timeout(60)
async def test_200_mib_download_to_slow_client_streams_with_bounded_memory(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    """A 200 MiB body produced faster than the client reads it arrives whole while the proxy stays small."""
    total = 200 * MiB
    client_rate = 28 * MiB  # ~7 s for the whole body
    pool = os.urandom(2 * MiB)
    produced = hashlib.sha256()

    async def fast_source(request: web.Request) -> web.StreamResponse:
        if request.path == "/warmup":
            await request.read()
            return web.Response(text="warm")
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        for i in range(total // CHUNK):
            chunk = numbered_chunk(pool, i)
            produced.update(chunk)
            await response.write(chunk)  # waits while the proxy is not reading
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fast_source)
    async with TestServer(app, host="127.0.0.1") as upstream:
        proxy = await start_proxy({"app1": upstream.port})
        await warm_up(client, proxy)

        got = hashlib.sha256()
        count = 0
        sampler = RssSampler(proxy)
        sampler.start()
        try:
            async with client.get(f"{proxy.base}/big", headers={"Host": "app1.localhost"}, timeout=aiohttp.ClientTimeout(total=45)) as resp:
                assert resp.status == 200
                pacer = Pacer(client_rate)
                for _ in range(10 * total // 1024 + 10):  # bounded
                    chunk = await resp.content.read(CHUNK)
                    if not chunk:
                        break
                    got.update(chunk)
                    count += len(chunk)
                    await pacer.add(len(chunk))
        finally:
            await sampler.stop()

    print(f"\n200 MiB download: proxy RSS baseline {sampler.baseline / MiB:.1f} MiB, peak growth {sampler.growth / MiB:.1f} MiB over {sampler.samples} samples")
    assert count == total
    assert got.hexdigest() == produced.hexdigest()
    assert sampler.samples > 20, "the transfer was too quick to observe"
    assert sampler.growth < RSS_GROWTH_LIMIT, f"proxy grew by {sampler.growth / MiB:.1f} MiB while relaying a 200 MiB download"


# ---------------------------------------------------------------- events and chunks as they happen


async def read_until(resp: aiohttp.ClientResponse, marker: bytes, timeout: float, already: bytes = b"") -> bytes:
    """Return what arrived on resp up to and including marker; fail if it is not there within timeout."""
    data = already
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for _ in range(10_000):  # bounded
        if marker in data:
            return data
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            chunk = await asyncio.wait_for(resp.content.readany(), timeout=left)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    raise AssertionError(f"{marker!r} did not arrive within {timeout} s; got {data!r}")


@pytest.fixture
async def sse_upstream() -> AsyncIterator[tuple[TestServer, dict[str, asyncio.Event]]]:
    """An event stream that sends event 1, waits for the test's go-ahead, sends event 2, then
    stays quiet for 3 s before event 3."""
    signals = {"go": asyncio.Event(), "sent_2": asyncio.Event(), "sent_3": asyncio.Event()}

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(b"data: 1\n\n")
        await asyncio.wait_for(signals["go"].wait(), timeout=15)
        await response.write(b"data: 2\n\n")
        signals["sent_2"].set()
        await asyncio.sleep(3.0)  # a quiet stream, as between two hot-reload events
        await response.write(b"data: 3\n\n")
        signals["sent_3"].set()
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/events", events)
    server = TestServer(app, host="127.0.0.1")
    async with server:
        yield server, signals


async def test_server_sent_events_arrive_one_by_one_and_survive_a_quiet_stream(
    start_proxy: ProxyFactory, client: aiohttp.ClientSession, sse_upstream: tuple[TestServer, dict[str, asyncio.Event]]
) -> None:
    """Event 1 reaches the client before the upstream sends event 2; after 3 s of silence event 3 still comes."""
    upstream, signals = sse_upstream
    proxy = await start_proxy({"app1": upstream.port})
    async with client.get(f"{proxy.base}/events", headers={"Host": "app1.localhost", "Accept": "text/event-stream"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        data = await read_until(resp, b"data: 1\n\n", timeout=5)
        assert not signals["sent_2"].is_set()
        assert b"data: 2" not in data
        signals["go"].set()
        data = await read_until(resp, b"data: 2\n\n", timeout=5, already=data)
        assert not signals["sent_3"].is_set()
        data = await read_until(resp, b"data: 3\n\n", timeout=10, already=data)
        assert data == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"
        rest = await asyncio.wait_for(resp.content.read(), timeout=5)
        assert rest == b""


async def test_event_stream_without_traffic_for_3_s_is_not_closed(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    """No read timeout: the proxy keeps a silent stream open and relays the next event."""
    sent_second = asyncio.Event()

    async def quiet(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: hello\ndata: first\n\n")
        await asyncio.sleep(3.5)
        await response.write(b"data: after-silence\n\n")
        sent_second.set()
        await asyncio.sleep(0.5)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/quiet", quiet)
    async with TestServer(app, host="127.0.0.1") as upstream:
        proxy = await start_proxy({"app1": upstream.port})
        async with client.get(f"{proxy.base}/quiet", headers={"Host": "app1.localhost"}) as resp:
            assert resp.status == 200
            data = await read_until(resp, b"data: first\n\n", timeout=5)
            data = await read_until(resp, b"data: after-silence\n\n", timeout=10, already=data)
            assert sent_second.is_set()
            assert data == b"event: hello\ndata: first\n\ndata: after-silence\n\n"


async def test_chunked_response_reaches_client_chunk_by_chunk(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    """A raw upstream writes one chunk and waits: the client must see it before the second is sent."""
    go = asyncio.Event()
    second_sent = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            writer.write(b"b\r\nfirst chunk\r\n")
            await writer.drain()
            await asyncio.wait_for(go.wait(), timeout=15)
            writer.write(b"c\r\nsecond chunk\r\n0\r\n\r\n")
            await writer.drain()
            second_sent.set()
        finally:
            writer.close()

    def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(on_connect(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        proxy = await start_proxy({"app1": port})
        async with client.get(f"{proxy.base}/chunks", headers={"Host": "app1.localhost"}) as resp:
            assert resp.status == 200
            data = await read_until(resp, b"first chunk", timeout=5)
            assert data == b"first chunk"
            assert not second_sent.is_set()
            go.set()
            data = await read_until(resp, b"second chunk", timeout=5, already=data)
            rest = await asyncio.wait_for(resp.content.read(), timeout=5)
            assert data + rest == b"first chunksecond chunk"
    finally:
        go.set()
        server.close()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=5)
        await server.wait_closed()


# ---------------------------------------------------------------- inspector memory


# The inspector keeps 500 requests with at most 64 KiB of each body both ways: 62.5 MiB at worst.
INSPECTOR_WORST_CASE = 500 * 2 * 64 * 1024


@pytest.mark.timeout(90)
async def test_the_inspector_keeps_memory_bounded_over_many_large_requests(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    """700 requests with 256 KiB each way: the ring keeps 500 and only their first 64 KiB per body."""
    answer = os.urandom(256 * 1024)

    async def sink(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=answer, content_type="application/octet-stream")

    app = web.Application(client_max_size=MiB)
    app.router.add_route("*", "/{tail:.*}", sink)
    async with TestServer(app, host="127.0.0.1") as upstream:
        proxy = await start_proxy({"app1": f"127.0.0.1:{upstream.port}"})
        await warm_up(client, proxy)
        sampler = RssSampler(proxy)
        sampler.start()
        upload = os.urandom(256 * 1024)

        async def send(i: int) -> None:
            async with client.post(f"{proxy.base}/item/{i}", data=upload, headers={"Host": "app1.localhost"}) as resp:
                assert resp.status == 200 and len(await resp.read()) == len(answer)

        for batch in range(0, 700, 10):
            await asyncio.gather(*(send(i) for i in range(batch, batch + 10)))
        await sampler.stop()
        async with client.get(f"{proxy.base}/api/requests?limit=500") as resp:
            listed = (await resp.json())["requests"]
        async with client.get(f"{proxy.base}/api/requests/{listed[0]['id']}") as resp:
            newest = await resp.json()
    assert len(listed) == 500 and {r["path"] for r in listed} == {f"/item/{i}" for i in range(200, 700)}
    assert newest["request"]["body"]["captured"] == 64 * 1024 and newest["request"]["body"]["size"] == len(upload)
    # Generous: the worst case of the ring plus allocator slack; whole bodies would need 350 MiB.
    print(f"inspector ring of 500: proxy RSS grew {sampler.growth / MiB:.1f} MiB")
    assert sampler.growth < INSPECTOR_WORST_CASE + 40 * MiB, f"proxy RSS grew {sampler.growth / MiB:.1f} MiB"
