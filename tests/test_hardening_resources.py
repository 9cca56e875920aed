"""Bounded resources: slow request heads, the connection cap, the open-file limit, the upstream pool.

Everything drives the real proxy process over raw loopback sockets. Cases: 20 slowloris
connections, 100 connections against a cap of 68, the limit raised from soft to hard, pooled
upstream connections closed after their idle timeout, a stale pooled connection retried for GET
and never for POST.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from proxy.frontends.http1.connection import HEAD_TIMEOUT, connection_cap
from proxy.upstream.connection import UPSTREAM_IDLE_TIMEOUT
from tests.support.proxies import ProxyFactory
from tests.support.rawhttp import TIMEOUT, canned, exchange, http_request, raw_upstream
from tests.support.waiting import until_true

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_slowloris_heads_get_408_in_time_while_others_are_served(start_proxy: ProxyFactory) -> None:
    async with raw_upstream(canned(OK)) as port:
        proxy = await start_proxy({"app1": f"127.0.0.1:{port}"})
        head = http_request("GET", "/slow")

        async def trickle() -> tuple[bytes, float]:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            started = time.monotonic()
            try:
                for byte in head[:-4]:  # never the final blank line
                    writer.write(bytes([byte]))
                    await writer.drain()
                    try:
                        answer = await asyncio.wait_for(reader.read(200), 0.5)
                    except TimeoutError:
                        continue
                    return answer, time.monotonic() - started
                return b"", time.monotonic() - started
            finally:
                writer.close()

        slow = [asyncio.create_task(trickle()) for _ in range(20)]
        await asyncio.sleep(1)
        normal = await exchange(proxy.port, http_request("GET", "/normal"))  # served while the slow ones hang
        assert normal.status == 200
        async with asyncio.timeout(HEAD_TIMEOUT + 10):
            results = await asyncio.gather(*slow)
    for answer, seconds in results:
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert HEAD_TIMEOUT - 0.5 <= seconds <= HEAD_TIMEOUT + 3, seconds
    assert proxy.process.poll() is None


async def test_beyond_the_connection_cap_new_clients_get_503_and_one_log_line(start_proxy: ProxyFactory) -> None:
    limit = 200
    cap = connection_cap(limit)
    async with raw_upstream(canned(OK)) as port:
        proxy = await start_proxy({"app1": f"127.0.0.1:{port}"}, open_file_limit=(limit, limit))
        opened = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(cap + 30)]
        await asyncio.sleep(0.5)
        busy = 0
        for reader, _ in opened:
            try:
                answer = await asyncio.wait_for(reader.read(100), 0.05)
            except TimeoutError:
                continue
            busy += answer.startswith(b"HTTP/1.1 503 ")
        assert busy == 30, f"{busy} of {cap + 30} connections were refused; the cap is {cap}"
        for _, writer in opened:
            writer.close()
        await asyncio.sleep(0.5)
        again = await exchange(proxy.port, http_request("GET", "/after"))
        assert again.status == 200
    assert proxy.stderr().count(f"reached {cap} open client connections") == 1, proxy.stderr()


async def test_the_open_file_limit_is_raised_from_soft_to_hard(start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy({"app1": 1}, open_file_limit=(256, 4096))
    limits = Path(f"/proc/{proxy.process.pid}/limits").read_text()
    soft, hard = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits).groups()  # type: ignore[union-attr]
    assert (soft, hard) == ("4096", "4096")


async def test_idle_pooled_upstream_connections_close_before_dev_servers_drop_them(start_proxy: ProxyFactory) -> None:
    closed_at: list[float] = []
    answered_at: list[float] = []

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                closed_at.append(time.monotonic())
                return
            writer.write(OK)
            await writer.drain()
            answered_at.append(time.monotonic())

    async with raw_upstream(keep_alive) as port:
        proxy = await start_proxy({"app1": f"127.0.0.1:{port}"})
        assert (await exchange(proxy.port, http_request("GET", "/"))).status == 200
        await until_true(lambda: closed_at, "the proxy closing its idle upstream connection", UPSTREAM_IDLE_TIMEOUT + 5)
    idle = closed_at[0] - answered_at[0]
    assert UPSTREAM_IDLE_TIMEOUT - 0.5 <= idle < 5.0, f"the proxy closed its idle upstream connection after {idle:.1f} s"


def stale_after_first_answer(requests_seen: list[bytes]) -> object:
    """An upstream whose keep-alive connection dies silently after one answer, as when a dev server restarts."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        requests_seen.append(head.split(b"\r\n")[0])
        if b"content-length: 4" in head.lower():
            await reader.readexactly(4)
        writer.write(OK[: -len(b"ok")] if head.startswith(b"HEAD ") else OK)  # no body after HEAD
        await writer.drain()
        try:  # the next request on this connection is read and dropped without an answer
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            requests_seen.append(head.split(b"\r\n")[0] + b" (dropped)")
        except asyncio.IncompleteReadError:
            pass

    return handle


@pytest.mark.parametrize(
    ("method", "body", "retried"),
    [
        ("GET", None, True),
        ("HEAD", None, True),
        ("DELETE", None, True),
        ("OPTIONS", None, True),
        ("POST", None, False),
        ("POST", b"data", False),
        ("PATCH", b"data", False),
        # Idempotent, but its body streamed through and is gone: resending it would need a copy.
        ("PUT", b"data", False),
    ],
)
async def test_a_stale_pooled_connection_is_retried_once_for_idempotent_methods_only(
    start_proxy: ProxyFactory, method: str, body: bytes | None, retried: bool
) -> None:
    seen: list[bytes] = []
    async with raw_upstream(stale_after_first_answer(seen)) as port:  # type: ignore[arg-type]
        proxy = await start_proxy({"app1": f"127.0.0.1:{port}"})
        assert (await exchange(proxy.port, http_request("GET", "/first"))).status == 200
        assert seen == [b"GET /first HTTP/1.1"]
        second = await exchange(proxy.port, http_request(method, "/second", body=body))
    line = f"{method} /second HTTP/1.1".encode()
    if retried:
        assert second.status == 200, (second, seen, proxy.stderr()[-1500:])
        assert seen == [b"GET /first HTTP/1.1", line + b" (dropped)", line], seen
    else:
        assert second.status == 502, second
        assert seen == [b"GET /first HTTP/1.1", line + b" (dropped)"], "a non-idempotent request was sent twice"
