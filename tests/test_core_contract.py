"""The forwarding core driven by a front-end that is not HTTP/1.1: a small in-memory one written here.

It hands the core ProxyRequests and collects what the core sends through its ResponseSink, as
an HTTP/2 front-end will. The upstreams are real servers on 127.0.0.1; only the client side is
in memory. Each test proves the contract carries something a front-end needs: a streamed
request body, a streamed response, a client that leaves mid-response, an upstream that fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.config.parse import parse_config
from proxy.diagnostics.accesslog import AccessLog
from proxy.diagnostics.inspector import RequestLog
from proxy.forwarding.contract import ClientGone, Field, ProxyRequest, RequestBody, Tunnel
from proxy.forwarding.core import Core
from proxy.forwarding.health import UpstreamHealth
from proxy.forwarding.http import Forwarder
from proxy.routing.snapshot import Snapshot, private_paths
from proxy.routing.table import RoutingTable
from proxy.upstream.pool import UpstreamPool
from tests.support.system import free_port

WAIT = 5.0


# ---------------------------------------------------------------- the in-memory front-end


class MemoryBody(RequestBody):
    """A request body the test feeds piece by piece, as a client's frames would arrive."""

    def __init__(self, *, length: int | None = None) -> None:
        super().__init__(length)
        self.pieces: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def chunks(self) -> AsyncIterator[bytes]:
        self.is_started = True
        while (piece := await self.pieces.get()) is not None:
            yield piece


class MemorySink:
    """Collects what the core sends; can stall like a slow client or leave like a closed tab."""

    def __init__(self, *, leave_after: int | None = None) -> None:
        self.status = 0
        self.fields: list[Field] = []
        self.length: int | None = None
        self.chunks: list[bytes] = []
        self.ended = self.aborted = False
        self.is_started = False
        self.first_chunk = asyncio.Event()
        self._leave_after = leave_after  # bytes after which writes fail, as to a client that has gone

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def field(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.fields if n.lower() == name), None)

    def send_whole(self, status: int, reason: str, fields: list[Field], body: bytes, *, length: int | None = None, last: bool = False) -> None:
        self.status, self.fields, self.length, self.is_started = status, fields, length, True
        self.chunks.append(body)
        self.ended = True

    async def start(self, status: int, reason: str, fields: list[Field], *, length: int | None = None) -> None:
        self.status, self.fields, self.length, self.is_started = status, fields, length, True

    async def write(self, data: bytes) -> None:
        if self._leave_after is not None and len(self.body) >= self._leave_after:
            raise ClientGone("the in-memory client left")
        self.chunks.append(data)
        self.first_chunk.set()

    async def end(self) -> None:
        self.ended = True

    def abort(self) -> None:
        self.aborted = True

    async def upgrade(self, reason: str, fields: list[Field]) -> Tunnel:
        raise ClientGone("this front-end has no tunnels")


def memory_request(method: str, target: str, *, fields: Sequence[Field] = (), body: RequestBody | None = None) -> ProxyRequest:
    """Return a request as this front-end hands it over: the site named by authority, no HTTP/1 Host needed."""
    return ProxyRequest(method, target, "app1.localhost", list(fields), body, scheme="https", client_ip="::1", local_port=None, protocol="in-memory")


def core_for(upstream_port: int, tmp_path: Path) -> Core:
    config = parse_config(f"sites:\n  app1: 127.0.0.1:{upstream_port}\n", str(tmp_path / "sites.yaml"))
    snapshot = Snapshot(config, RoutingTable(config.sites), {}, private_paths(config, None))
    return Core(snapshot, forwarder=Forwarder(UpstreamPool(), UpstreamHealth()), requests=RequestLog(), access_log=AccessLog(logging.getLogger("test.access")))


@pytest.fixture
async def core_pool() -> AsyncIterator[list[Core]]:
    """Cores made by a test; their pooled upstream connections are closed at the end."""
    cores: list[Core] = []
    yield cores
    for core in cores:
        await core.forwarder.pool.close()


# ---------------------------------------------------------------- the tests


async def test_a_request_body_streams_to_the_app_before_the_client_has_sent_all_of_it(tmp_path: Path, core_pool: list[Core]) -> None:
    first_piece_arrived = asyncio.Event()

    async def upload(request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for piece in request.content.iter_any():
            first_piece_arrived.set()
            digest.update(piece)
            size += len(piece)
        return web.json_response({"size": size, "sha256": digest.hexdigest(), "chunked": request.headers.get("Transfer-Encoding")})

    app = web.Application()
    app.router.add_post("/upload", upload)
    async with TestServer(app, host="127.0.0.1") as upstream:
        port = upstream.port
        assert port is not None
        core = core_for(port, tmp_path)
        core_pool.append(core)
        body, sink = MemoryBody(), MemorySink()
        answering = asyncio.create_task(core.handle(memory_request("POST", "/upload", body=body), sink))
        sent = hashlib.sha256()
        piece = b"x" * 65536
        await body.pieces.put(piece)
        sent.update(piece)
        await asyncio.wait_for(first_piece_arrived.wait(), WAIT)  # the app reads while the client is still sending
        for i in range(15):
            more = bytes([i]) * 65536
            sent.update(more)
            await body.pieces.put(more)
        await body.pieces.put(None)
        exchange = await asyncio.wait_for(answering, WAIT)
    assert sink.status == 200 and sink.ended
    assert exchange.upstream == f"127.0.0.1:{port}"
    answer = json.loads(sink.body)
    assert answer == {"size": 16 * 65536, "sha256": sent.hexdigest(), "chunked": "chunked"}, "no length given: the proxy sends it chunked"


async def test_a_streamed_response_reaches_the_front_end_piece_by_piece(tmp_path: Path, core_pool: list[Core]) -> None:
    release = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain", "X-App": "yes"})
        await response.prepare(request)
        await response.write(b"first;")
        await asyncio.wait_for(release.wait(), WAIT)  # the rest only once the front-end has the first part
        await response.write(b"second")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/stream", stream)
    async with TestServer(app, host="127.0.0.1") as upstream:
        assert upstream.port is not None
        core = core_for(upstream.port, tmp_path)
        core_pool.append(core)
        sink = MemorySink()
        answering = asyncio.create_task(core.handle(memory_request("GET", "/stream"), sink))
        await asyncio.wait_for(sink.first_chunk.wait(), WAIT)
        assert sink.body == b"first;" and not sink.ended
        release.set()
        await asyncio.wait_for(answering, WAIT)
    assert sink.status == 200 and sink.ended and sink.body == b"first;second"
    assert sink.field(b"x-app") == b"yes" and sink.field(b"date") is not None
    assert sink.field(b"transfer-encoding") is None, "framing is the front-end's: the core hands over fields only"
    assert sink.length is None


async def test_a_client_that_leaves_mid_response_cancels_the_upstream_request(tmp_path: Path, core_pool: list[Core]) -> None:
    upstream_saw_the_close = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(10_000):  # bounded: the proxy should hang up long before
                await response.write(b"y" * 16384)
                await asyncio.sleep(0.001)
        except (ConnectionError, asyncio.CancelledError):
            upstream_saw_the_close.set()
            raise
        return response

    app = web.Application(handler_args={"handler_cancellation": True})
    app.router.add_get("/endless", endless)
    async with TestServer(app, host="127.0.0.1") as upstream:
        assert upstream.port is not None
        core = core_for(upstream.port, tmp_path)
        core_pool.append(core)
        sink = MemorySink(leave_after=64 * 1024)
        exchange = await asyncio.wait_for(core.handle(memory_request("GET", "/endless"), sink), WAIT)
        await asyncio.wait_for(upstream_saw_the_close.wait(), WAIT)
    assert exchange.note.startswith("client went away")
    assert not sink.ended


async def test_an_app_that_is_not_there_gets_a_502_page_through_the_sink(tmp_path: Path, core_pool: list[Core]) -> None:
    port = free_port()
    core = core_for(port, tmp_path)
    core_pool.append(core)
    sink = MemorySink()
    exchange = await asyncio.wait_for(core.handle(memory_request("GET", "/", fields=[(b"Accept", b"application/json")]), sink), WAIT)
    assert sink.status == 502 and sink.ended
    assert sink.field(b"content-type") == b"application/json; charset=utf-8"
    problem = json.loads(sink.body)
    assert problem["tried"] == [f"127.0.0.1:{port}"] and "connection refused" in problem["detail"]
    assert exchange.status == 502 and exchange.note == "connection refused"


async def test_an_app_that_breaks_off_mid_response_is_aborted_never_ended(tmp_path: Path, core_pool: list[Core]) -> None:
    async def cut_off(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"z" * 70000)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(cut_off, "127.0.0.1", 0)
    try:
        core = core_for(server.sockets[0].getsockname()[1], tmp_path)
        core_pool.append(core)
        sink = MemorySink()
        exchange = await asyncio.wait_for(core.handle(memory_request("GET", "/"), sink), WAIT)
    finally:
        server.close()
        await server.wait_closed()
    assert sink.status == 200 and sink.length == 100000
    assert sink.aborted and not sink.ended, "a cut-off body must reach the client cut off"
    assert exchange.note.startswith("upstream broke off")
