"""Upstream failures and oddities, end to end: a raw client on one side of the real proxy process,
raw recording backends on the other, every byte checked on both wires.

One proxy serves every case (a site per backend); the backends run on an event loop in a thread
of their own so they outlive each test's loop. What must hold:

- nothing listening -> 502; connect timeout (a listener whose backlog is full) -> 504 in about
  `connect_timeout`; a response that is not HTTP, or whose framing is ambiguous (Content-Length
  with Transfer-Encoding, two lengths), -> 502, never forwarded;
- an upstream that dies mid-body -> the client's response is visibly cut (short of its
  Content-Length, or no last chunk), never re-framed as complete;
- bytes an upstream sends beyond its response (over-long body, a body on HEAD/204) never reach
  the client, and never answer the next request (no desync through the connection pool);
- interim responses (100 Continue, 102, 103 Early Hints) end in one well-formed final response,
  and an upstream answering before reading the request body is relayed;
- after every case the proxy is alive and a healthy site answers 200.

Cases: 33 (1 refused, 1 connect timeout, 12 unparseable or ambiguous responses, 5 tolerated
oddities, 4 mid-body deaths, 3 desync attempts, 4 interim-response sequences, 1 Expect:
100-continue through an upstream's own 100, 1 early answer, 1 final health check).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.proxies import spawn, wait_listening_blocking
from tests.support.rawhttp import TIMEOUT, connection, http_request
from tests.support.system import free_port, unanswering_listener

CONNECT_TIMEOUT = 0.5


# ---------------------------------------------------------------- raw responses, head bytes kept


@dataclass
class Wire:
    """One response as it crossed the client's socket, 1xx responses before it kept apart."""

    interim: list[bytes]  # raw heads of 1xx responses
    head: bytes  # raw head of the final response
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool  # the framing says the body ended normally; False if cut or close-delimited

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


async def read_wire(reader: asyncio.StreamReader, *, method: str = "GET") -> Wire:
    """Read 1xx responses and then the final one; a body without Content-Length or chunked framing counts as incomplete."""
    interim: list[bytes] = []
    for _ in range(20):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        status = int(head.split(b" ", 2)[1])
        if 100 <= status < 200 and status != 101:
            interim.append(head)
            continue
        break
    else:
        raise AssertionError("more than 20 interim responses")
    lines = head.decode("latin-1").split("\r\n")[1:]
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines if line)]
    wire = Wire(interim, head, status, headers, b"", True)
    if method == "HEAD" or status in (101, 204, 304):
        return wire
    try:
        if "chunked" in ",".join(wire.values("Transfer-Encoding")).lower():
            wire.complete = False
            for _ in range(100_000):
                size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), TIMEOUT)).split(b";")[0], 16)
                if size == 0:
                    break
                wire.body += (await asyncio.wait_for(reader.readexactly(size + 2), TIMEOUT))[:-2]
            while await asyncio.wait_for(reader.readuntil(b"\r\n"), TIMEOUT) != b"\r\n":
                pass
            wire.complete = True
        elif lengths := wire.values("Content-Length"):
            wire.body = await asyncio.wait_for(reader.readexactly(int(lengths[0])), TIMEOUT)
        else:
            wire.complete = False  # close-delimited: a cut looks exactly like an end
            for _ in range(100_000):
                chunk = await asyncio.wait_for(reader.read(65536), TIMEOUT)
                if not chunk:
                    break
                wire.body += chunk
    except asyncio.IncompleteReadError as exc:
        wire.body += exc.partial
        wire.complete = False
    except (ConnectionError, ValueError):
        wire.complete = False
    return wire


async def ask(port: int, request: bytes) -> Wire:
    async with connection(port) as (reader, writer):
        writer.write(request)
        await writer.drain()
        return await read_wire(reader, method=request.split(b" ", 1)[0].decode())


# ---------------------------------------------------------------- recording backends on their own loop


class Conn:
    """One upstream connection as the backend sees it; every byte read is recorded."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray) -> None:
        self.reader, self.writer, self.record = reader, writer, record

    async def head(self) -> bytes:
        data = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        self.record += data
        return data

    async def exactly(self, n: int) -> bytes:
        data = await asyncio.wait_for(self.reader.readexactly(n), TIMEOUT)
        self.record += data
        return data

    async def drain_until_eof(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(seconds):
                while data := await self.reader.read(65536):
                    self.record += data

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


Handler = Callable[[Conn], Awaitable[None]]


@dataclass
class Backend:
    port: int
    connections: list[bytearray] = field(default_factory=list)  # bytes received, one entry per connection

    def received(self) -> bytes:
        return b"".join(bytes(c) for c in self.connections)


class Backends:
    """Raw upstreams on 127.0.0.1, each on its own port, served by one event loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="raw-backends", daemon=True)
        self.thread.start()
        self.servers: list[asyncio.Server] = []

    def add(self, handle: Handler) -> Backend:
        return asyncio.run_coroutine_threadsafe(self._start(handle), self.loop).result(TIMEOUT)

    async def _start(self, handle: Handler) -> Backend:
        backend = Backend(0)

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            record = bytearray()
            backend.connections.append(record)
            try:
                await handle(Conn(reader, writer, record))
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.servers.append(server)
        backend.port = server.sockets[0].getsockname()[1]
        return backend

    def close(self) -> None:
        async def shut() -> None:
            for server in self.servers:
                server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


def canned(*segments: bytes) -> Handler:
    """Read one request head, write the segments 0.1 s apart (so the proxy relays the first before the next arrives), close."""

    async def handle(conn: Conn) -> None:
        await conn.head()
        for i, segment in enumerate(segments):
            if i:
                await asyncio.sleep(0.1)
            await conn.send(segment)

    return handle


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


async def healthy(conn: Conn) -> None:
    """Answer every request on the connection with 200 and the target, keep-alive."""
    for _ in range(1000):
        head = await conn.head()
        await conn.exactly(_content_length(head))
        body = b"healthy " + head.split(b" ", 2)[1]
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def by_target(answers: dict[bytes, bytes]) -> Handler:
    """Keep-alive backend: answer each request with the raw bytes listed for its target."""

    async def handle(conn: Conn) -> None:
        for _ in range(100):
            head = await conn.head()
            await conn.exactly(_content_length(head))
            await conn.send(answers[head.split(b" ", 2)[1]])

    return handle


# ---------------------------------------------------------------- the cases

UNPARSEABLE = {
    "cl-not-a-number": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello",
    "cl-negative": b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello",
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-and-cl": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 50\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "length-list": b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
    "status-four-digits": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "header-without-colon": b"HTTP/1.1 200 OK\r\nBad Header Line\r\nContent-Length: 0\r\n\r\n",
    "nul-in-header": b"HTTP/1.1 200 OK\r\nX-Nul: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "cr-injection": b"HTTP/1.1 200 OK\r\nX-Split: a\rSet-Cookie: evil=1\r\nContent-Length: 0\r\n\r\n",
    "tls-bytes": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32),
    "unrequested-101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello",
}
TOLERATED = {
    # RFC 9112 5.2: a proxy MUST replace obs-fold with SP (or reject); 5.1: MUST remove whitespace before the colon (or reject).
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
    "cl-space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\nX-A: 1\r\n\r\nok",
    "te-space-before-colon": b"HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\nX-A: 1\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: 1\n\nok",
    "same-length-twice": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
}
CUT_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
CUT_OFF = {  # segments sent 0.1 s apart, then the upstream closes
    "content-length-1000-sends-10": (CUT_HEAD + b"Content-Length: 1000\r\n\r\n", b"0123456789"),
    "chunked-without-last-chunk": (CUT_HEAD + b"Transfer-Encoding: chunked\r\n\r\n", b"a\r\n0123456789\r\n"),
    "chunk-cut-inside": (CUT_HEAD + b"Transfer-Encoding: chunked\r\n\r\n", b"64\r\n0123456789"),
    "bad-chunk-size-after-data": (CUT_HEAD + b"Transfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n", b"zz\r\nmore\r\n0\r\n\r\n"),
}
INTERIM = {
    "100-then-200": [b"HTTP/1.1 100 Continue\r\n\r\n"],
    "103-then-200": [b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n"],
    "102-103-103-then-200": [
        b"HTTP/1.1 102 Processing\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.js>; rel=preload\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </b.js>; rel=preload\r\n\r\n",
    ],
    "100-after-body-read": [],  # filled in by the handler: 100 only once the body is in
}
SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED"
KNOWN_BUGS: dict[str, str] = {}


def cases(names: Iterable[str]) -> list[object]:
    """Parameters for names, the known bugs marked as strict xfails."""
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[name])) if name in KNOWN_BUGS else name for name in names]


def interim_then_200(interims: list[bytes], *, continue_after_body: bool = False) -> Handler:
    """Send the interim heads, read the body, answer 200 echoing the body; keep-alive."""

    async def handle(conn: Conn) -> None:
        for _ in range(10):
            head = await conn.head()
            for interim in interims:
                await conn.send(interim)
                await asyncio.sleep(0.05)  # separate segments: the proxy's parser sees each on its own
            body = await conn.exactly(_content_length(head))
            if continue_after_body:
                await conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            answer = b"final:" + body
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))

    return handle


async def early_answer(conn: Conn) -> None:
    """Answer 413 as soon as the head is in, then read (and drop) what the proxy still sends."""
    await conn.head()
    await conn.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: text/plain\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
    await conn.drain_until_eof(3.0)


@dataclass
class Rig:
    port: int
    process: subprocess.Popen[bytes]
    folder: Path
    backends: dict[str, Backend]
    stuck_port: int

    def stderr(self) -> str:
        return (self.folder / "proxy.stderr").read_text(errors="replace")

    def host(self, name: str) -> str:
        return f"{name}.localhost"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    backends = Backends()
    try:
        handlers: dict[str, Handler] = {"ok": healthy, "early": early_answer}
        handlers |= {f"bad-{name}": canned(raw) for name, raw in UNPARSEABLE.items()}
        handlers |= {f"odd-{name}": canned(raw) for name, raw in TOLERATED.items()}
        handlers |= {f"cut-{name}": canned(*segments) for name, segments in CUT_OFF.items()}
        handlers |= {f"interim-{name}": interim_then_200(raws, continue_after_body=name == "100-after-body-read") for name, raws in INTERIM.items()}
        handlers["oversend"] = by_target(
            {b"/one": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + SMUGGLED, b"/two": b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nreal-two"}
        )
        handlers["head-body"] = by_target(
            {b"/one": b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n" + SMUGGLED, b"/two": b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nreal-two"}
        )
        handlers["nocontent-body"] = by_target(
            {b"/one": b"HTTP/1.1 204 No Content\r\nContent-Length: 8\r\n\r\n" + SMUGGLED, b"/two": b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nreal-two"}
        )
        started = {name: backends.add(handler) for name, handler in handlers.items()}
        with unanswering_listener() as stuck:
            lines = ["sites:"] + [f"  {name}: 127.0.0.1:{backend.port}" for name, backend in started.items()]
            lines += [f"  refused: 127.0.0.1:{free_port()}", f"  stuck:\n    upstream: 127.0.0.1:{stuck}\n    connect_timeout: {CONNECT_TIMEOUT}"]
            folder = tmp_path_factory.mktemp("upstreams")
            config = folder / "sites.yaml"
            config.write_text("\n".join(lines) + "\n")
            process = spawn(folder, config, "--http", "127.0.0.1:0", "--no-https")
            try:
                urls = wait_listening_blocking(folder, process)
                assert urls, f"the proxy did not start:\n{(folder / 'proxy.stderr').read_text()}"
                yield Rig(int(urls[0].rsplit(":", 1)[1]), process, folder, started, stuck)
            finally:
                process.kill()
                process.wait(5)
    finally:
        backends.close()


async def assert_still_serving(rig: Rig) -> None:
    """The process is alive, a healthy site answers 200 on a new connection, and nothing crashed."""
    assert rig.process.poll() is None, f"the proxy exited {rig.process.returncode}:\n{rig.stderr()}"
    wire = await ask(rig.port, http_request("GET", "/still-there", host="ok.localhost", headers=[("Connection", "close")]))
    assert (wire.status, wire.body, wire.complete) == (200, b"healthy /still-there", True)
    assert "Traceback" not in rig.stderr(), rig.stderr()


def get(name: str, target: str = "/", method: str = "GET", headers: list[tuple[str, str]] | None = None, body: bytes | None = None) -> bytes:
    return http_request(method, target, host=f"{name}.localhost", headers=headers or [], body=body)


# ---------------------------------------------------------------- cannot connect


async def test_nothing_listening_is_502_naming_the_address(rig: Rig) -> None:
    wire = await ask(rig.port, get("refused"))
    assert wire.status == 502 and wire.complete
    assert b"refused" in wire.body.lower()
    await assert_still_serving(rig)


async def test_connect_timeout_is_504_after_about_connect_timeout(rig: Rig) -> None:
    started = time.monotonic()
    wire = await ask(rig.port, get("stuck"))
    took = time.monotonic() - started
    assert wire.status == 504 and wire.complete, wire.head
    assert CONNECT_TIMEOUT * 0.8 <= took < CONNECT_TIMEOUT + 2.5, f"took {took:.2f} s for connect_timeout {CONNECT_TIMEOUT}"
    assert f"127.0.0.1:{rig.stuck_port}".encode() in wire.body
    await assert_still_serving(rig)


# ---------------------------------------------------------------- responses that cannot be forwarded as they are


@pytest.mark.parametrize("name", cases(UNPARSEABLE))
async def test_unparseable_or_ambiguous_response_is_502_and_never_forwarded(rig: Rig, name: str) -> None:
    async with connection(rig.port) as (reader, writer):
        writer.write(get(f"bad-{name}", "/probe"))
        await writer.drain()
        wire = await read_wire(reader)
        assert wire.status == 502, f"{name}: forwarded as {wire.head!r} + {wire.body[:80]!r}"
        assert wire.complete
        # The 502 page may quote what the app sent, as text; nothing of it may become a header.
        for leaked in (b"evil=1", b"Set-Cookie", b"\x00", b"Upgrade"):
            assert leaked not in wire.head, f"{name}: {leaked!r} reached the client's head"
        assert not wire.body.startswith(b"hello"), f"{name}: the app's body was forwarded"
        # Nothing else follows the 502 on this connection (a leftover would answer the next request).
        with contextlib.suppress(TimeoutError, ConnectionError):
            rest = await asyncio.wait_for(reader.read(1024), 0.3)
            assert rest == b"", f"{name}: bytes after the 502: {rest!r}"
    received = rig.backends[f"bad-{name}"].received()
    assert received.startswith(b"GET /probe HTTP/1.1\r\n"), received[:80]
    await assert_still_serving(rig)


@pytest.mark.parametrize("name", cases(TOLERATED))
async def test_tolerated_oddity_is_refused_or_forwarded_cleanly(rig: Rig, name: str) -> None:
    """Either a 502, or a 200 whose head on the client's wire is plain CRLF lines with one Content-Length and no folded or padded names."""
    wire = await ask(rig.port, get(f"odd-{name}"))
    if wire.status == 502:
        assert wire.complete
    else:
        assert wire.status == 200 and wire.complete and wire.body == b"ok", (name, wire.head, wire.body)
        lines = wire.head.split(b"\r\n")[1:-2]
        assert all(b"\n" not in line and b"\r" not in line for line in lines), wire.head
        assert not [line for line in lines if line[:1] in (b" ", b"\t")], f"obs-fold forwarded: {wire.head!r}"
        assert not [line for line in lines if b" :" in line.split(b":", 1)[0] + b":"], f"whitespace before a colon forwarded: {wire.head!r}"
        assert len([line for line in lines if line.lower().startswith(b"content-length")]) <= 1, wire.head
    await assert_still_serving(rig)


# ---------------------------------------------------------------- an upstream dying mid-body


@pytest.mark.parametrize("name", cases(CUT_OFF))
async def test_upstream_dying_mid_body_leaves_the_client_response_visibly_cut(rig: Rig, name: str) -> None:
    try:
        wire = await asyncio.wait_for(ask(rig.port, get(f"cut-{name}")), 3.0)
    except TimeoutError:
        raise AssertionError(f"{name}: the client's response neither ended nor was cut within 3 s of the upstream closing") from None
    assert wire.status == 200, wire.head
    assert not wire.complete, f"{name}: a cut-off body was re-framed as complete: {wire.head!r} {wire.body!r}"
    assert wire.body.startswith(b"0123456789"[: len(wire.body)]), wire.body
    assert b"more" not in wire.body
    lengths = wire.values("Content-Length")
    assert lengths in ([], ["1000"]), f"{name}: Content-Length {lengths} does not match what the upstream promised"
    await assert_still_serving(rig)


# ---------------------------------------------------------------- bytes beyond the response


@pytest.mark.parametrize(("name", "method", "status"), [("oversend", "GET", 200), ("head-body", "HEAD", 200), ("nocontent-body", "GET", 204)])
async def test_bytes_beyond_a_response_never_answer_the_next_request(rig: Rig, name: str, method: str, status: int) -> None:
    """The second request, on the same client connection, must get its own answer, not the leftover."""
    async with connection(rig.port) as (reader, writer):
        writer.write(get(name, "/one", method=method))
        await writer.drain()
        first = await read_wire(reader, method=method)
        assert first.status in (status, 502), first.head
        if method == "GET" and status == 200 and first.status == 200:
            assert first.body == b"hello" and first.complete
        await asyncio.sleep(0.2)  # let any leftover arrive at the proxy
        writer.write(get(name, "/two"))
        await writer.drain()
        try:
            second = await read_wire(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            second = None  # the proxy closed the connection after the first response: also safe
        if second is not None:
            assert b"SMUGGLED" not in second.body and b"SMUGGLED" not in second.head, f"{name}: the leftover answered the next request"
            assert (second.status, second.body) == (200, b"real-two"), (second.head, second.body)
    # A fresh connection too: the pooled upstream connection must not carry the leftover.
    third = await ask(rig.port, get(name, "/two"))
    assert (third.status, third.body) == (200, b"real-two"), (third.head, third.body)
    await assert_still_serving(rig)


# ---------------------------------------------------------------- interim responses and early answers


@pytest.mark.parametrize("name", INTERIM)
async def test_interim_responses_end_in_one_well_formed_final_response(rig: Rig, name: str) -> None:
    async with connection(rig.port) as (reader, writer):
        writer.write(get(f"interim-{name}", "/form", "POST", body=b"field=1"))
        await writer.drain()
        wire = await read_wire(reader, method="POST")
        assert (wire.status, wire.body, wire.complete) == (200, b"final:field=1", True), (wire.interim, wire.head, wire.body)
        for interim in wire.interim:
            assert interim.startswith((b"HTTP/1.1 100 ", b"HTTP/1.1 102 ", b"HTTP/1.1 103 ")), interim
        # The connection is still in step: a second request gets its own final answer.
        writer.write(get(f"interim-{name}", "/again", "POST", body=b"second"))
        await writer.drain()
        again = await read_wire(reader, method="POST")
        assert (again.status, again.body) == (200, b"final:second")
    assert rig.backends[f"interim-{name}"].received().count(b"field=1") == 1
    await assert_still_serving(rig)


async def test_expect_100_continue_through_an_upstream_that_sends_its_own_100(rig: Rig) -> None:
    async with connection(rig.port) as (reader, writer):
        writer.write(get("interim-100-then-200", "/upload", "POST", headers=[("Content-Length", "11"), ("Expect", "100-continue")]))
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        writer.write(b"hello world")
        await writer.drain()
        wire = await read_wire(reader, method="POST")
        assert (wire.status, wire.body, wire.complete) == (200, b"final:hello world", True), (wire.interim, wire.head)
    received = rig.backends["interim-100-then-200"].received()
    assert b"hello world" in received and b"Expect:" not in received, received
    await assert_still_serving(rig)


async def test_upstream_answering_before_reading_the_body_is_relayed(rig: Rig) -> None:
    """A 413 sent right after the head reaches the client while its 1 MiB upload is still mostly unsent."""
    async with connection(rig.port) as (reader, writer):
        writer.write(get("early", "/upload", "POST", headers=[("Content-Length", str(1 << 20))]) + b"x" * 65536)
        await writer.drain()
        wire = await read_wire(reader, method="POST")
        assert (wire.status, wire.body, wire.complete) == (413, b"too large", True), (wire.head, wire.body)
    assert rig.backends["early"].received().startswith(b"POST /upload HTTP/1.1\r\n")
    await assert_still_serving(rig)


async def test_the_proxy_is_still_healthy_after_every_case(rig: Rig) -> None:
    """Runs last in this module: a final look at the process after all the abuse above."""
    for _ in range(3):
        await assert_still_serving(rig)
