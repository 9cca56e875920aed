"""One client connection carrying many requests: the ones the connection reads itself (bodyless)
and the ones it leaves to aiohttp, in any order, answered in order, through the real proxy process.

Raw sockets on the client side, the recording backend behind app1.localhost; what is asserted is
what crossed each socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.rawhttp import connection, raw_upstream, read_response
from tests.support.recording import Received, Rig, app1_rig, fresh, proxy_process, read_for, send

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    async with app1_rig(tmp_path_factory.mktemp("client-connections")) as rig:
        yield rig


@pytest.fixture
def rig(shared: Rig) -> Rig:
    rig = fresh(shared)
    rig.backend.answer = echo_target
    return rig


def echo_target(request: Received) -> bytes:
    """Answer with the request's method, target and body, so each response names its request."""
    body = f"{request.request_line.split(' ')[0]} {request.target} {request.body.decode('latin-1')}".encode("latin-1")
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def get(target: str, *fields: str, version: str = "1.1") -> bytes:
    return "\r\n".join([f"GET {target} HTTP/{version}", "Host: app1.localhost", *fields, "", ""]).encode("latin-1")


def post(target: str, body: bytes) -> bytes:
    return f"POST {target} HTTP/1.1\r\nHost: app1.localhost\r\nContent-Length: {len(body)}\r\n\r\n".encode("latin-1") + body


async def test_requests_one_after_another_on_one_connection_are_each_answered(rig: Rig) -> None:
    async with connection(rig.proxy.port) as (reader, writer):
        for n in range(20):
            writer.write(get(f"/{n}"))
            await writer.drain()
            response = await read_response(reader)
            assert (response.status, response.body) == (200, f"GET /{n} ".encode())
    assert rig.backend.targets == [f"/{n}" for n in range(20)]


async def test_bodyless_and_body_requests_mixed_on_one_connection_are_answered_in_order(rig: Rig) -> None:
    requests = [get("/a"), post("/form", b"x=1"), get("/b"), post("/upload", b"y" * 5000), get("/c")]
    async with connection(rig.proxy.port) as (reader, writer):
        bodies = []
        for request in requests:
            writer.write(request)
            await writer.drain()
            bodies.append((await read_response(reader)).body)
    assert bodies == [b"GET /a ", b"POST /form x=1", b"GET /b ", b"POST /upload " + b"y" * 5000, b"GET /c "]
    assert [r.body for r in rig.backend.requests] == [b"", b"x=1", b"", b"y" * 5000, b""]


async def test_pipelined_requests_in_one_write_are_answered_in_order(rig: Rig) -> None:
    reply = await send(rig.proxy.port, get("/1") + get("/2") + post("/3", b"three") + get("/4"), responses=4)
    assert [r.body for r in reply.responses] == [b"GET /1 ", b"GET /2 ", b"POST /3 three", b"GET /4 "]
    assert rig.backend.targets == ["/1", "/2", "/3", "/4"]


async def test_a_head_trickled_in_pieces_is_answered_once_whole(rig: Rig) -> None:
    request = get("/slowly", "Accept: text/html", "X-Trace: 1")
    parts = [request[:5], request[5:19], request[19:40], request[40:-1], request[-1:]]
    reply = await send(rig.proxy.port, parts, pause=0.05, responses=1)
    assert [r.body for r in reply.responses] == [b"GET /slowly "]
    assert rig.backend.requests[0].values("X-Trace") == ["1"]


async def test_connection_close_and_http10_end_the_connection_after_the_answer(rig: Rig) -> None:
    for request in (get("/bye", "Connection: close"), get("/old", version="1.0")):
        reply = await send(rig.proxy.port, request)
        assert [r.status for r in reply.responses] == [200], reply.data[:300]
        assert reply.closed
    assert rig.backend.targets == ["/bye", "/old"]


async def test_http10_keep_alive_stays_open(rig: Rig) -> None:
    async with connection(rig.proxy.port) as (reader, writer):
        for n in range(2):
            writer.write(get(f"/{n}", "Connection: keep-alive", version="1.0"))
            await writer.drain()
            response = await read_response(reader)
            assert response.body == f"GET /{n} ".encode()
            assert response.values("Connection") == ["keep-alive"]


async def test_a_head_larger_than_the_read_ahead_is_still_served(rig: Rig) -> None:
    """Three 30 KiB fields: within the header limits, though no single read holds the head."""
    fields = [f"X-Big-{n}: {'v' * 30_000}" for n in range(3)]
    reply = await send(rig.proxy.port, get("/big", *fields), responses=1)
    assert [r.status for r in reply.responses] == [200]
    assert [len(rig.backend.requests[0].values(f"X-Big-{n}")[0]) for n in range(3)] == [30_000] * 3


async def test_a_request_sent_while_the_previous_is_answered_waits_its_turn(tmp_path: Path) -> None:
    """The first answer takes 0.5 s; the second request, written meanwhile, must be answered after it."""
    arrived: list[bytes] = []

    async def slow_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            target = head.split(b" ")[1]
            arrived.append(target)
            if target == b"/slow":
                await asyncio.sleep(0.5)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(target), target))
            await writer.drain()

    async with raw_upstream(slow_first) as port, proxy_process(tmp_path, {"app1": f"127.0.0.1:{port}"}) as proxy:
        async with connection(proxy.port) as (reader, writer):
            writer.write(get("/slow"))
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(get("/fast"))
            await writer.drain()
            first, second = await read_response(reader), await read_response(reader)
        assert (first.body, second.body) == (b"/slow", b"/fast")
        assert arrived == [b"/slow", b"/fast"]


async def test_a_client_that_leaves_mid_request_cancels_it_and_the_proxy_keeps_serving(tmp_path: Path) -> None:
    upstream_closed = asyncio.Event()

    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if await reader.read(1) == b"":  # the proxy closed the upstream connection
            upstream_closed.set()

    async with raw_upstream(never_answers) as port, proxy_process(tmp_path, {"app1": f"127.0.0.1:{port}"}) as proxy:
        async with connection(proxy.port) as (_, writer):
            writer.write(get("/hang"))
            await writer.drain()
            await asyncio.sleep(0.3)
        await asyncio.wait_for(upstream_closed.wait(), 5)
        reply = await send(proxy.port, b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert reply.status == 200
        await asyncio.sleep(0.3)
        assert "GET /hang - " in proxy.stderr() and "(client went away; upstream request cancelled)" in proxy.stderr()


async def test_an_idle_connection_between_requests_is_not_closed_early(rig: Rig) -> None:
    async with connection(rig.proxy.port) as (reader, writer):
        writer.write(get("/1"))
        await writer.drain()
        await read_response(reader)
        await asyncio.sleep(1.0)
        writer.write(get("/2"))
        await writer.drain()
        assert (await read_response(reader)).body == b"GET /2 "
        _, closed = await read_for(reader, 0.2)
        assert not closed


async def test_many_connections_at_once_each_get_their_own_answers_in_order(rig: Rig) -> None:
    """Answers written together in one pass of the event loop must each reach their own connection, in order."""

    async def client(n: int) -> list[bytes]:
        async with connection(rig.proxy.port) as (reader, writer):
            bodies = []
            for k in range(10):
                writer.write(get(f"/{n}/{k}"))
                await writer.drain()
                bodies.append((await read_response(reader)).body)
            return bodies

    results = await asyncio.gather(*(client(n) for n in range(30)))
    for n, bodies in enumerate(results):
        assert bodies == [f"GET /{n}/{k} ".encode() for k in range(10)]
    assert len(rig.backend.requests) == 300
