"""Raw HTTP on the wire for tests: requests written byte by byte, responses read without a client
library's help, and small upstreams (an echo app that tags its answers, raw canned answers) with
the record of a request as an app saw it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


async def echo(request: web.Request) -> web.StreamResponse:
    """Answer with what arrived: method, raw target, headers (all, in order) and the body length."""
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "target": request.raw_path,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
            "body_length": len(body),
            "body": body.decode("utf-8", "replace") if len(body) < 4096 else "",
        }
    )


TIMEOUT = 5.0  # seconds any single read, connect or request may take


# ---------------------------------------------------------------- raw HTTP on the wire


@dataclass
class RawResponse:
    """One HTTP response as it crossed the socket."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool  # the framing (Content-Length, final chunk, close) says the body ended normally

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(method: str, target: str, *, host: str = "app1.localhost", headers: Sequence[tuple[str, str]] = (), body: bytes | None = None) -> bytes:
    """Return request bytes exactly as written; a body gets a Content-Length unless headers frame it."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers)]
    framed = any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers)
    if body is not None and not framed:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


async def read_response(reader: asyncio.StreamReader, *, method: str = "GET") -> RawResponse:
    """Read one response; a cut-off body comes back with complete=False instead of raising."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    _, status, reason = ([*status_line.split(" ", 2), ""])[:3]
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in header_lines if line)]
    response = RawResponse(int(status), reason, headers, b"", True)
    if method == "HEAD" or response.status in (204, 304) or response.status < 200:
        return response
    try:
        if "chunked" in ",".join(response.values("Transfer-Encoding")).lower():
            response.complete = False
            while size := int((await asyncio.wait_for(reader.readuntil(b"\r\n"), TIMEOUT)).split(b";")[0], 16):
                response.body += (await asyncio.wait_for(reader.readexactly(size + 2), TIMEOUT))[:-2]
            while await asyncio.wait_for(reader.readuntil(b"\r\n"), TIMEOUT) != b"\r\n":
                pass  # trailer fields
            response.complete = True
        elif lengths := response.values("Content-Length"):
            response.body = await asyncio.wait_for(reader.readexactly(int(lengths[0])), TIMEOUT)
        else:
            while chunk := await asyncio.wait_for(reader.read(65536), TIMEOUT):
                response.body += chunk
    except asyncio.IncompleteReadError as exc:
        response.body += exc.partial
        response.complete = False
    except (ConnectionError, ValueError):
        response.complete = False
    return response


@contextlib.asynccontextmanager
async def connection(port: int, host: str = "127.0.0.1") -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw TCP connection to host:port, closed on exit."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), TIMEOUT)


async def exchange(port: int, request: bytes) -> RawResponse:
    """Send one raw request on a new connection and read its response."""
    async with connection(port) as (reader, writer):
        writer.write(request)
        await writer.drain()
        return await read_response(reader, method=request.split(b" ", 1)[0].decode())


def header_values(echoed: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echoed["headers"] if k.lower() == name.lower()]


# ---------------------------------------------------------------- upstreams


@dataclass(frozen=True)
class AppRequest:
    """One request as an upstream app saw it: method, raw target, headers (all, in order), body."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @classmethod
    async def read(cls, request: web.Request) -> AppRequest:
        """Return what the request carried, its body read whole."""
        body = await request.read()
        return cls(request.method, request.raw_path, [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers], body)


@dataclass
class EchoUpstream:
    """A running echo app that tags its answers with X-Upstream and remembers every target."""

    server: TestServer
    name: str
    targets: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port


@contextlib.asynccontextmanager
async def echo_upstream(name: str, *, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[EchoUpstream]:
    """Run the echo app on host, port 0, answering with `X-Upstream: name`."""
    targets: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        targets.append(request.raw_path)
        response = await echo(request)
        response.headers["X-Upstream"] = name
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host=host)
    await server.start_server(ssl=ssl_context)
    try:
        yield EchoUpstream(server, name, targets)
    finally:
        await server.close()


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_upstream(handle: RawHandler) -> AsyncIterator[int]:
    """Run a hand-written TCP upstream on 127.0.0.1, port 0; yields the port. For misbehaving apps."""
    tasks: set[asyncio.Task[None]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), TIMEOUT)
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)


def canned(response: bytes) -> RawHandler:
    """Return a raw handler that reads one request head, writes `response` and closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        writer.write(response)
        await writer.drain()

    return handle
