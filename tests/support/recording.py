"""Raw-socket rig for the hardening suites: a backend that records every byte it receives and splits
it into requests by their own framing (so "the body held these bytes" differs from "a second request
was smuggled in"), the real proxy process shared by one test module, and the raw client side.
Nothing here parses with an HTTP library: what is asserted is what crossed the socket.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.proxies import Proxy, spawn, write_sites
from tests.support.rawhttp import RawResponse, read_response

WAIT = 2.0  # seconds the proxy gets to answer, or to close, one raw exchange
QUIET = 0.1  # seconds without new bytes after which the backend counts as done receiving
OK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3


# ---------------------------------------------------------------- the recording backend


@dataclass
class Received:
    """One request as the backend read it off its socket."""

    head: bytes  # request line and fields, up to and including the blank line
    connection: int  # which backend connection (0, 1, ...) it came on
    wire_body: bytes = b""  # body bytes exactly as they arrived, chunk framing included
    body: bytes = b""  # the payload, chunk framing removed
    complete: bool = False  # the framing said the message ended; False if the connection broke first

    @property
    def request_line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")

    @property
    def target(self) -> str:
        return ([*self.request_line.split(" "), "", ""])[1]

    @property
    def fields(self) -> list[tuple[str, str]]:
        lines = self.head.decode("latin-1").split("\r\n")[1:]
        return [(name, value.strip(" \t")) for name, _, value in (line.partition(":") for line in lines if line)]

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.fields if k.lower() == name.lower()]


Answer = Callable[[Received], bytes]


class _Wire:
    """A connection's incoming bytes, buffered, with every byte also written to the backend's log."""

    def __init__(self, reader: asyncio.StreamReader, record: Callable[[bytes], None]) -> None:
        self._reader = reader
        self._record = record
        self.buffer = bytearray()

    async def _fill(self) -> None:
        data = await self._reader.read(65536)
        if not data:
            raise EOFError
        self._record(data)
        self.buffer += data

    async def until(self, separator: bytes) -> bytes:
        while (end := self.buffer.find(separator)) < 0:
            await self._fill()
        return self._take(end + len(separator))

    async def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self._fill()
        return self._take(size)

    async def drain_forever(self) -> None:
        while True:
            await self._fill()
            self.buffer.clear()

    def _take(self, size: int) -> bytes:
        taken = bytes(self.buffer[:size])
        del self.buffer[:size]
        return taken


def _is_chunked(request: Received) -> bool:
    return any("chunked" in v.lower() for v in request.values("Transfer-Encoding"))


class RecordingBackend:
    """A raw HTTP/1.1 server on 127.0.0.1, port 0, that keeps every byte and answers `answer`.

    `answer` is fixed bytes or a function of the request. An answer that begins with a 101
    switches the connection to raw mode: whatever arrives after it is logged, never parsed.
    """

    def __init__(self, answer: bytes | Answer = OK_ANSWER) -> None:
        self.answer: bytes | Answer = answer
        self.close_after_answer = False
        self.late: tuple[float, bytes] | None = None  # (delay, bytes) written after each answer, unasked
        self.answer_before_body = False  # answer as soon as the head is in, then read the body
        self.accepts = 0
        self.log: list[tuple[int, bytes]] = []  # (connection, bytes) in arrival order
        self.requests: list[Received] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def received(self) -> bytes:
        """Every byte received since the last clear(), on every connection."""
        return b"".join(data for _, data in self.log)

    @property
    def targets(self) -> list[str]:
        return [r.target for r in self.requests]

    def clear(self) -> None:
        """Forget what arrived so far (connections stay open; accepts keep counting)."""
        self.log.clear()
        self.requests.clear()
        self.answer = OK_ANSWER
        self.close_after_answer = False
        self.late = None
        self.answer_before_body = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()

    async def settle(self, quiet: float = QUIET, limit: float = WAIT) -> None:
        """Return once no byte has arrived for `quiet` seconds (or after `limit` seconds)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                while True:
                    self._changed.clear()
                    try:
                        async with asyncio.timeout(quiet):
                            await self._changed.wait()
                    except TimeoutError:
                        return

    async def wait_for_requests(self, count: int, limit: float = WAIT) -> None:
        """Return once `count` request heads have arrived; fail after `limit` seconds."""
        async with asyncio.timeout(limit):
            while len(self.requests) < count:
                self._changed.clear()
                await self._changed.wait()

    def _on_bytes(self, connection: int, data: bytes) -> None:
        self.log.append((connection, data))
        self._changed.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = self.accepts
        self.accepts += 1
        wire = _Wire(reader, lambda data: self._on_bytes(connection, data))
        try:
            await self._exchange(wire, writer, connection)
        except (EOFError, ConnectionError, ValueError):
            pass  # the peer went away, or sent something this backend cannot frame: keep what arrived
        finally:
            self._changed.set()
            writer.close()
            self._tasks.discard(task)

    async def _exchange(self, wire: _Wire, writer: asyncio.StreamWriter, connection: int) -> None:
        while True:
            request = Received(await wire.until(b"\r\n\r\n"), connection)
            self.requests.append(request)
            self._changed.set()
            early = self.answer_before_body
            if early:
                writer.write(self.answer(request) if callable(self.answer) else self.answer)
                await writer.drain()
            if _is_chunked(request):
                while True:
                    size_line = await wire.until(b"\r\n")
                    request.wire_body += size_line
                    size = int(size_line.split(b";")[0], 16)
                    if size == 0:
                        while (trailer := await wire.until(b"\r\n")) != b"\r\n":
                            request.wire_body += trailer
                        request.wire_body += b"\r\n"
                        break
                    data = await wire.exactly(size + 2)
                    request.wire_body += data
                    request.body += data[:-2]
            elif lengths := request.values("Content-Length"):
                request.body = request.wire_body = await wire.exactly(int(lengths[0]))
            request.complete = True
            self._changed.set()
            answer = self.answer(request) if callable(self.answer) else self.answer
            if not early:
                writer.write(answer)
                await writer.drain()
            if self.late is not None:
                delay, late = self.late
                await asyncio.sleep(delay)
                writer.write(late)
                await writer.drain()
            if answer.startswith(b"HTTP/1.1 101"):
                await wire.drain_forever()
            if self.close_after_answer or b"\r\nconnection: close\r\n" in answer.split(b"\r\n\r\n")[0].lower() + b"\r\n":
                return


@contextlib.asynccontextmanager
async def recording_backend(answer: bytes | Answer = OK_ANSWER) -> AsyncIterator[RecordingBackend]:
    backend = RecordingBackend(answer)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


def websocket_accept(request: Received) -> bytes:
    """Return a correct 101 for a WebSocket handshake request (RFC 6455 4.2.2)."""
    key = request.values("Sec-WebSocket-Key")[0].encode()
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    return b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"


# ---------------------------------------------------------------- the proxy, once per module


@contextlib.asynccontextmanager
async def proxy_process(folder: Path, sites: dict[str, Any]) -> AsyncIterator[Proxy]:
    """Run `python -m proxy run` on sites, HTTP on 127.0.0.1:0 only; killed on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "sites.yaml"
    write_sites(config, sites)
    process = spawn(folder, config, "--http", "127.0.0.1:0", "--no-https")
    proxy = Proxy(folder, config, process)
    try:
        await proxy.wait_listening()
        yield proxy
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ---------------------------------------------------------------- the client side


@dataclass
class Reply:
    """Everything the proxy sent back on one connection, and how that connection ended."""

    data: bytes
    closed: bool  # EOF or reset within the time limit
    responses: list[RawResponse] = field(default_factory=list)

    @property
    def status_line(self) -> str:
        return self.data.split(b"\r\n", 1)[0].decode("latin-1")

    @property
    def status(self) -> int | None:
        return self.responses[0].status if self.responses else None

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


async def read_for(reader: asyncio.StreamReader, limit: float, *, until: Callable[[bytes], bool] | None = None) -> tuple[bytes, bool]:
    """Return what arrived and whether the peer closed: read until EOF or reset, until `until(data)`
    holds, or until `limit` seconds have passed."""
    received = bytearray()
    try:
        async with asyncio.timeout(limit):
            while chunk := await reader.read(65536):
                received += chunk
                if until is not None and until(bytes(received)):
                    return bytes(received), False
            return bytes(received), True
    except TimeoutError:
        return bytes(received), False
    except ConnectionError:
        return bytes(received), True


async def parse_responses(data: bytes, methods: tuple[str, ...] = ()) -> list[RawResponse]:
    """Return the responses in data, in order; a trailing cut-off one comes back complete=False."""
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    responses: list[RawResponse] = []
    while not reader.at_eof() and len(responses) < 100:
        try:
            method = methods[len(responses)] if len(responses) < len(methods) else "GET"
            responses.append(await read_response(reader, method=method))
        except (asyncio.IncompleteReadError, ValueError):
            break
    return responses


async def send(
    port: int, data: bytes | list[bytes], *, wait: float = WAIT, pause: float = 0.2, half_close: bool = False, responses: int | None = None
) -> Reply:
    """Write data (a list: one write each, `pause` apart) and read until the proxy closes or `wait` passes.

    With `responses`, stop reading as soon as that many complete responses have arrived.
    """
    parts = data if isinstance(data, list) else [data]
    received = bytearray()
    closed = False
    async with asyncio.timeout(WAIT + wait + pause * len(parts)):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        try:
            for i, part in enumerate(parts):
                if i:
                    await asyncio.sleep(pause)
                writer.write(part)
                await writer.drain()
            if half_close:
                writer.write_eof()
        except ConnectionError:
            closed = True  # the proxy hung up before taking everything; read what it said first
        try:
            async with asyncio.timeout(wait):
                while chunk := await reader.read(65536):
                    received += chunk
                    if responses is not None and sum(r.complete for r in await parse_responses(bytes(received))) >= responses:
                        break
                else:
                    closed = True
        except TimeoutError:
            pass
        except ConnectionError:
            closed = True
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(WAIT):
                await writer.wait_closed()
    return Reply(bytes(received), closed, await parse_responses(bytes(received)))


@dataclass
class Rig:
    """A module's shared proxy process and the recording backend behind app1.localhost."""

    proxy: Proxy
    backend: RecordingBackend


@contextlib.asynccontextmanager
async def app1_rig(folder: Path) -> AsyncIterator[Rig]:
    """Run a recording backend and a proxy routing app1.localhost to it, for a whole test module."""
    async with recording_backend() as backend, proxy_process(folder, {"app1": f"127.0.0.1:{backend.port}"}) as proxy:
        yield Rig(proxy, backend)


def assert_alive(proxy: Proxy) -> None:
    """Fail a test up front when the module's shared proxy died during an earlier one."""
    assert proxy.process.poll() is None, f"the proxy died during an earlier test:\n{proxy.stderr()[-3000:]}"


def fresh(rig: Rig) -> Rig:
    """Return the shared rig for the next test: the proxy checked alive, the backend's record cleared."""
    assert_alive(rig.proxy)
    rig.backend.clear()
    return rig


async def assert_still_serving(rig: Rig) -> None:
    """A plain request after whatever the test did is forwarded once and answered."""
    rig.backend.clear()
    reply = await send(rig.proxy.port, b"GET /alive HTTP/1.1\r\nHost: app1.localhost\r\n\r\n", responses=1)
    assert reply.status == 200, reply.data[:300]
    assert rig.backend.targets == ["/alive"]
