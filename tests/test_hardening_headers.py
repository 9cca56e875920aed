"""Hop-by-hop fields both ways, forwarding fields a client cannot forge, upgrades that are not
WebSockets, and upstream responses the proxy must not pass on as they came.

The real proxy process is driven with raw sockets; behind it a recording backend keeps every
byte and answers whatever the test sets, byte for byte.

Cases per area (56 in all):
  request hop-by-hop (Connection-named and the standard set) ..... 4
  response hop-by-hop ........................................... 2
  X-Forwarded-* / Forwarded cannot be removed or forged ........... 6
  Connection naming framing or routing fields .................... 6
  non-WebSocket upgrades, and a 101 the client did not ask for .... 7
  WebSocket handshakes keep Origin ............................... 3
  field values with obs-text pass byte for byte .................. 4
  ambiguous or invalid upstream responses become 502 ............. 14
  upstream framing: folded fields, bytes after the response ...... 5
  upstream dying mid-body ....................................... 5
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.rawhttp import connection, read_response
from tests.support.recording import (
    WAIT,
    WS_GUID,
    Reply,
    Rig,
    app1_rig,
    assert_still_serving,
    fresh,
    proxy_process,
    read_for,
    recording_backend,
    send,
    websocket_accept,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

FORWARDED_BY_PROXY = {
    "X-Forwarded-For": ["127.0.0.1"],
    "X-Forwarded-Proto": ["http"],
    "X-Forwarded-Host": ["app1.localhost"],
    "Forwarded": ['for=127.0.0.1;host="app1.localhost";proto=http'],
    "X-Forwarded-Port": [],  # the proxy sets none, so the client's must not get through either
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    async with app1_rig(tmp_path_factory.mktemp("hardening-headers")) as rig:
        yield rig


@pytest.fixture
def rig(shared: Rig) -> Rig:
    return fresh(shared)


def request(*fields: str, method: str = "GET", target: str = "/", body: bytes = b"") -> bytes:
    """Return a request for app1.localhost with these raw field lines, written as given."""
    head = "".join(f"{line}\r\n" for line in (f"{method} {target} HTTP/1.1", "Host: app1.localhost", *fields))
    return head.encode("latin-1") + b"\r\n" + body


def field_names(head: bytes) -> list[str]:
    """Return the field names of a raw head (request or response), lower-cased, in order."""
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return [line.partition(":")[0].lower() for line in lines if line]


# ---------------------------------------------------------------- request hop-by-hop


NAMED = ["X-A: 1", "X-B: 2", "X-C: 3", "X-Kept: k"]


@pytest.mark.parametrize(
    "fields, stripped",
    [
        pytest.param(["Connection: ,, X-A ,\tx-b\t, , X-C", *NAMED], ["x-a", "x-b", "x-c"], id="tokens-with-spaces-tabs-empties"),
        pytest.param(
            ["connection: x-a", "CONNECTION: X-B", "Connection: keep-alive, x-C", *NAMED], ["x-a", "x-b", "x-c"], id="three-connection-fields-mixed-case"
        ),
        pytest.param(["Connection: close, X-A, X-B, X-C", *NAMED], ["x-a", "x-b", "x-c"], id="close-with-names"),
        pytest.param(
            [
                "Keep-Alive: timeout=5",
                "Proxy-Connection: keep-alive",
                "TE: trailers",
                "Trailer: X-Checksum",
                "Upgrade: h2c",
                "Proxy-Authorization: Basic Zm9vOmJhcg==",
                "X-Kept: k",
            ],
            ["keep-alive", "proxy-connection", "te", "trailer", "upgrade", "proxy-authorization"],
            id="standard-set-unnamed",
        ),
    ],
)
async def test_hop_by_hop_request_fields_never_reach_the_backend(rig: Rig, fields: list[str], stripped: list[str]) -> None:
    reply = await send(rig.proxy.port, request(*fields), responses=1)
    assert reply.status == 200, reply.data[:300]
    (forwarded,) = rig.backend.requests
    names = field_names(forwarded.head)
    for name in [*stripped, "connection"]:
        assert name not in names, (name, forwarded.head)
    assert forwarded.values("X-Kept") == ["k"]


# ---------------------------------------------------------------- response hop-by-hop


@pytest.mark.parametrize(
    "fields, stripped",
    [
        pytest.param(b"Connection: X-A\r\nconnection: x-b ,\tX-C\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\n", ["x-a", "x-b", "x-c"], id="connection-named-two-fields"),
        pytest.param(
            b"Keep-Alive: timeout=5, max=100\r\nProxy-Connection: keep-alive\r\nProxy-Authenticate: Basic realm=x\r\n"
            b"Trailer: X-Checksum\r\nUpgrade: h2c\r\nTE: trailers\r\n",
            ["keep-alive", "proxy-connection", "proxy-authenticate", "trailer", "upgrade", "te"],
            id="standard-set-unnamed",
        ),
    ],
)
async def test_hop_by_hop_response_fields_never_reach_the_client(rig: Rig, fields: bytes, stripped: list[str]) -> None:
    rig.backend.answer = b"HTTP/1.1 200 OK\r\n" + fields + b"X-Kept: k\r\nContent-Length: 5\r\n\r\nhello"
    reply = await send(rig.proxy.port, request(), responses=1)
    assert reply.status == 200 and reply.responses[0].body == b"hello"
    names = field_names(reply.data)
    for name in stripped:
        assert name not in names, (name, reply.data[:600])
    assert "x-a" not in ",".join(reply.responses[0].values("Connection")).lower()
    assert reply.responses[0].values("X-Kept") == ["k"]


# ---------------------------------------------------------------- X-Forwarded-* and Forwarded


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(
            [
                "X-Forwarded-For: 203.0.113.7",
                "X-Forwarded-Proto: https",
                "X-Forwarded-Host: evil.example",
                "Forwarded: for=203.0.113.7;proto=https",
                "X-Forwarded-Port: 443",
            ],
            id="all-spoofed",
        ),
        pytest.param(
            [
                "x-forwarded-for: 1.1.1.1, 2.2.2.2",
                "X-FORWARDED-FOR: 3.3.3.3",
                "forwarded: for=1.1.1.1",
                "FORWARDED: by=evil;host=evil.example",
                "x-forwarded-host: a",
                "X-Forwarded-Host: b",
            ],
            id="repeated-and-mixed-case",
        ),
        pytest.param(["Connection: X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, Forwarded"], id="connection-names-them-none-sent"),
        pytest.param(
            ["Connection: x-forwarded-for, FORWARDED, keep-alive", "X-Forwarded-For: 203.0.113.7", "Forwarded: for=203.0.113.7"],
            id="connection-names-them-and-spoofed",
        ),
        pytest.param(["X-Forwarded-For:", "X-Forwarded-Proto:", "Forwarded:"], id="empty-values"),
        pytest.param(["X-Forwarded-For: 127.0.0.1", "X-Forwarded-Proto: http", "X-Forwarded-Host: app1.localhost"], id="same-values-not-duplicated"),
    ],
)
async def test_client_cannot_remove_or_forge_forwarding_fields(rig: Rig, fields: list[str]) -> None:
    reply = await send(rig.proxy.port, request(*fields), responses=1)
    assert reply.status == 200, reply.data[:300]
    (forwarded,) = rig.backend.requests
    for name, expected in FORWARDED_BY_PROXY.items():
        assert forwarded.values(name) == expected, (name, forwarded.head)


# ---------------------------------------------------------------- Connection naming framing or routing fields


@pytest.mark.parametrize(
    "connection_value",
    ["Transfer-Encoding", "Content-Length, Transfer-Encoding, Host", "keep-alive, transfer-encoding"],
)
async def test_connection_naming_framing_fields_keeps_a_chunked_body_intact(rig: Rig, connection_value: str) -> None:
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    reply = await send(rig.proxy.port, request(f"Connection: {connection_value}", "Transfer-Encoding: chunked", method="POST", body=body), responses=1)
    assert reply.status == 200, reply.data[:300]
    (forwarded,) = rig.backend.requests
    assert forwarded.complete and forwarded.body == b"hello world"
    assert forwarded.values("Host") == ["app1.localhost"]
    assert (forwarded.values("Transfer-Encoding"), forwarded.values("Content-Length")) in ((["chunked"], []), ([], ["11"]))


async def test_connection_naming_content_length_and_host_keeps_them(rig: Rig) -> None:
    reply = await send(rig.proxy.port, request("Connection: Content-Length, Host", "Content-Length: 5", method="POST", body=b"hello"), responses=1)
    assert reply.status == 200
    (forwarded,) = rig.backend.requests
    assert forwarded.values("Content-Length") == ["5"] and forwarded.body == b"hello"
    assert forwarded.values("Host") == ["app1.localhost"]


@pytest.mark.parametrize(
    "answer, body",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello", b"hello", id="content-length"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", b"hello", id="transfer-encoding"
        ),
    ],
)
async def test_upstream_connection_naming_framing_fields_keeps_the_response_framed(rig: Rig, answer: bytes, body: bytes) -> None:
    """The body arrives whole and the client connection stays usable for a second request."""
    rig.backend.answer = answer
    async with connection(rig.proxy.port) as (reader, writer):
        writer.write(request(target="/one"))
        first = await read_response(reader)
        rig.backend.answer = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"
        writer.write(request(target="/two"))
        second = await read_response(reader)
    assert (first.status, first.body, first.complete) == (200, body, True)
    assert (second.status, second.body) == (200, b"second")
    assert rig.backend.targets == ["/one", "/two"]


# ---------------------------------------------------------------- upgrades other than WebSocket


KEY = "dGhlIHNhbXBsZSBub25jZQ=="


@pytest.mark.parametrize(
    "fields, method",
    [
        pytest.param(["Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQAAP__"], "GET", id="h2c"),
        pytest.param(["Connection: Upgrade", "Upgrade: foo/1"], "GET", id="upgrade-foo"),
        pytest.param(
            ["Connection: Upgrade", "Upgrade: websocket", f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Version: 13", "Content-Length: 0"],
            "POST",
            id="websocket-on-post",
        ),
        pytest.param(["Upgrade: websocket", f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Version: 13"], "GET", id="websocket-without-connection-upgrade"),
    ],
)
async def test_non_websocket_upgrade_is_forwarded_as_a_plain_request(rig: Rig, fields: list[str], method: str) -> None:
    reply = await send(rig.proxy.port, request(*fields, method=method), responses=1)
    assert reply.status == 200, reply.data[:300]
    (forwarded,) = rig.backend.requests
    names = field_names(forwarded.head)
    assert "upgrade" not in names and "connection" not in names and "http2-settings" not in names, forwarded.head


NOT_ASKED_101 = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nRAW-TUNNEL-BYTES"


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param([], id="plain-get"),
        pytest.param(["Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQAAP__"], id="h2c-asked"),
    ],
)
async def test_upstream_101_to_a_non_websocket_request_never_opens_a_tunnel(rig: Rig, fields: list[str]) -> None:
    """Whatever the proxy answers, it neither relays the upstream's bytes after the 101 nor passes the client's on."""
    rig.backend.answer = NOT_ASKED_101
    async with connection(rig.proxy.port) as (reader, writer):
        writer.write(request(*fields))
        first, _ = await read_for(reader, 1.0)
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nTUNNELLED-BY-CLIENT")
        with suppress(ConnectionError):
            await writer.drain()
        rest, _ = await read_for(reader, 1.0)
    await rig.backend.settle()
    assert b"RAW-TUNNEL-BYTES" not in first + rest
    assert b"TUNNELLED-BY-CLIENT" not in rig.backend.received
    assert len(rig.backend.requests) == 1


async def test_upstream_101_to_a_non_websocket_request_is_a_502(rig: Rig) -> None:
    """RFC 9110 15.2.2: a 101 may only switch to a protocol the client asked for; the proxy tunnels WebSockets only."""
    rig.backend.answer = NOT_ASKED_101
    reply = await send(rig.proxy.port, request(), responses=1)
    assert reply.status == 502, reply.data[:300]


# ---------------------------------------------------------------- WebSocket handshakes keep Origin


@pytest.mark.parametrize("origin", ["http://app1.localhost:3000", "null", "https://evil.example"])
async def test_websocket_handshake_reaches_backend_with_origin_unchanged(rig: Rig, origin: str) -> None:
    rig.backend.answer = websocket_accept
    key = base64.b64encode(os.urandom(16)).decode()
    handshake = request(
        "Connection: keep-alive, Upgrade", "Upgrade: websocket", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", f"Origin: {origin}", target="/hmr"
    )
    async with connection(rig.proxy.port) as (reader, writer):
        writer.write(handshake)
        head, _ = await read_for(reader, WAIT, until=lambda data: b"\r\n\r\n" in data)
    assert head.startswith(b"HTTP/1.1 101 "), head[:300]
    expected_accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest())
    assert re.search(rb"(?i)\r\nsec-websocket-accept: " + re.escape(expected_accept) + rb"\r\n", head), head
    (forwarded,) = rig.backend.requests
    assert forwarded.target == "/hmr"
    assert forwarded.values("Origin") == [origin]
    assert forwarded.values("Upgrade") == ["websocket"]


# ---------------------------------------------------------------- field values with obs-text


OBS_VALUES = [
    pytest.param(b"caf\xc3\xa9 \xe2\x9c\x93", id="utf-8"),
    pytest.param(b"caf\xe9 \xff", id="not-utf-8"),
]


@pytest.mark.parametrize("value", OBS_VALUES)
async def test_request_field_value_with_obs_text_reaches_backend_byte_for_byte(rig: Rig, value: bytes) -> None:
    reply = await send(rig.proxy.port, b"GET / HTTP/1.1\r\nHost: app1.localhost\r\nX-Name: " + value + b"\r\n\r\n", responses=1)
    assert reply.status == 200
    assert b"\r\nX-Name: " + value + b"\r\n" in rig.backend.requests[0].head, rig.backend.requests[0].head


@pytest.mark.parametrize("value", OBS_VALUES)
async def test_response_field_value_with_obs_text_reaches_client_byte_for_byte(rig: Rig, value: bytes) -> None:
    rig.backend.answer = b"HTTP/1.1 200 OK\r\nX-Name: " + value + b"\r\nContent-Length: 2\r\n\r\nok"
    reply = await send(rig.proxy.port, request(), responses=1)
    assert reply.status == 200
    assert b"\r\nX-Name: " + value + b"\r\n" in reply.data, reply.data[:400]


# ---------------------------------------------------------------- ambiguous or invalid upstream responses


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", id="cl-then-te"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n", id="te-then-cl"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", id="two-different-cls"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!", id="cl-list"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello", id="cl-abc"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nhello", id="cl-negative"),
        pytest.param(b"HTTP/1.1 2000 OK\r\nContent-Length: 5\r\n\r\nhello", id="status-four-digits"),
        pytest.param(b"HTTP/1.1 20 OK\r\nContent-Length: 5\r\n\r\nhello", id="status-two-digits"),
        pytest.param(
            b"HTTP/1.1 099 Odd\r\nContent-Length: 5\r\n\r\nhello",
            id="status-099",
        ),
        pytest.param(b"\x00\x01\x02\x03garbage\r\n\r\n", id="binary-garbage"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 5\r\n\r\nhello", id="nul-in-field"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nhello",
            id="te-chunked-not-last",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\nhello",
            id="te-unknown-coding",
        ),
    ],
)
async def test_ambiguous_or_invalid_upstream_response_becomes_502(rig: Rig, answer: bytes) -> None:
    """The client gets a 502 of the proxy's own, never the upstream's message; the proxy goes on serving.

    For a response whose Transfer-Encoding does not end in chunked, keeping the codings on the
    relayed response (framed by close, RFC 9112 6.3 item 4) would be acceptable too.
    """
    rig.backend.answer = answer
    rig.backend.close_after_answer = True
    reply = await send(rig.proxy.port, request("Connection: close"), responses=1)
    relayed_codings = [c.strip().lower() for v in (reply.responses[0].values("Transfer-Encoding") if reply.responses else []) for c in v.split(",")]
    kept_codings = any(c not in ("", "chunked") for c in relayed_codings)
    assert reply.status == 502 or kept_codings, reply.data[:400]
    if reply.status == 502:
        assert b"hello" not in reply.responses[0].body
    await assert_still_serving(rig)


async def test_whitespace_before_colon_in_a_response_field_never_reaches_the_client(rig: Rig) -> None:
    """RFC 9112 5.1: a proxy MUST remove such whitespace from a response (or refuse it with a 502)."""
    rig.backend.answer = b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello"
    rig.backend.close_after_answer = True
    reply = await send(rig.proxy.port, request("Connection: close"), responses=1)
    head = reply.data.split(b"\r\n\r\n", 1)[0]
    bad = [line for line in head.split(b"\r\n")[1:] if re.match(rb"[^:]*[ \t]:", line)]
    assert reply.status == 502 or not bad, head


# ---------------------------------------------------------------- upstream framing the proxy may repair


async def test_folded_upstream_field_is_unfolded_or_refused(rig: Rig) -> None:
    """RFC 9112 5.2: a proxy replaces obs-fold with spaces, or answers 502; it never forwards the fold."""
    rig.backend.answer = b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 5\r\n\r\nhello"
    reply = await send(rig.proxy.port, request("Connection: close"), responses=1)
    assert reply.status in (200, 502), reply.data[:300]
    head = reply.data.split(b"\r\n\r\n", 1)[0]
    assert not re.search(rb"\r\n[ \t]", head), head
    if reply.status == 200:
        assert reply.responses[0].values("X-A") == ["a b"] and reply.responses[0].body == b"hello"


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled", id="after-content-length"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
            id="after-last-chunk",
        ),
    ],
)
async def test_bytes_after_a_complete_upstream_response_never_answer_another_request(rig: Rig, answer: bytes) -> None:
    """Response-queue poisoning: the extra bytes must not become the answer to the next request."""
    rig.backend.answer = answer
    first = await send(rig.proxy.port, request("Connection: close", target="/first"), responses=1)
    assert (first.status, first.responses[0].body) == (200, b"ok")
    rig.backend.answer = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"
    for i in range(3):
        later = await send(rig.proxy.port, request("Connection: close", target=f"/later{i}"), responses=1)
        assert b"smuggled" not in later.data
        assert (later.status, later.responses[0].body) == (200, b"second")


@pytest.mark.parametrize("delay", [0.05, 0.5])
async def test_unasked_bytes_on_an_idle_upstream_connection_never_answer_the_next_request(tmp_path: Path, delay: float) -> None:
    """The extra response arrives in its own write, after the answer was relayed; a fresh proxy makes
    the poisoned connection the only one in the pool, so the next request is sent on it."""
    async with recording_backend() as backend, proxy_process(tmp_path / "proxy", {"app1": f"127.0.0.1:{backend.port}"}) as proxy:
        backend.late = (delay, b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")
        first = await send(proxy.port, request("Connection: close", target="/first"), responses=1)
        assert (first.status, first.responses[0].body) == (200, b"ok")
        await backend.settle(quiet=delay + 0.1)
        backend.late = None
        bodies = []
        for i in range(3):
            later = await send(proxy.port, request("Connection: close", target=f"/later{i}"), responses=1)
            bodies.append(later.responses[0].body if later.responses else later.data)
    assert bodies == [b"ok", b"ok", b"ok"], f"the next requests got {bodies}"


# ---------------------------------------------------------------- upstream dying mid-body


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", id="cl-no-body-at-all"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", id="cl-short"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n01234", id="chunked-mid-data"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n1", id="chunked-mid-size-line"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n", id="chunked-in-trailer"),
    ],
)
async def test_upstream_dying_mid_body_reaches_the_client_cut_off(rig: Rig, answer: bytes) -> None:
    """The client sees the promised length unmet or no final chunk, and then the close; never a complete message."""
    rig.backend.answer = answer
    rig.backend.close_after_answer = True
    reply: Reply = await send(rig.proxy.port, request(target="/dies"))
    assert reply.closed, "the client connection stayed open after the upstream broke off"
    assert reply.status == 200, reply.data[:300]
    (response,) = reply.responses
    assert not response.complete, f"a cut-off upstream body was re-framed as complete: {reply.data[-200:]!r}"
    await assert_still_serving(rig)
