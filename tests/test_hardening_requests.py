"""Strict request parsing and unambiguous forwarding (RFC 9112), checked byte for byte.

The real proxy process is driven with raw sockets; behind it a recording backend keeps every
byte it receives and splits them into requests by their own framing. A refused request must
get a 400, have its connection closed, and put not one byte on the backend's sockets; a
smuggling attempt must never make the backend see a second request.

Cases per area (107 in all):
  refused outright: 400, close, nothing forwarded ................ 62
    framing: Content-Length with Transfer-Encoding ............... 3
    framing: Content-Length values ............................... 9
    framing: Transfer-Encoding values ............................ 7
    field syntax: obs-fold, space before colon, names ............ 9
    line endings and control characters .......................... 9
    Host ........................................................ 8
    request line: method, target, version ........................ 7
    chunked body, whole request in one write ..................... 10
  unsupported HTTP version (2.0, 3.0, 9.9, 0.9): 400 or 505 ...... 6
  HTTP/1.0 with Transfer-Encoding ................................ 1
  transfer coding under chunked: 400 or 501 ...................... 2
  smuggling payloads: /smuggled never reaches the backend ........ 11
  chunked body broken after the head went upstream ............... 4
  chunk extensions (accepted, dropped, body exact) ............... 2
  absolute-form target versus Host ............................... 3
  header and target size limits .................................. 5
  positive controls: bodies, pipelining, early upstream answers .. 9
  the proxy's own 400: status line, log .......................... 2
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.rawhttp import connection
from tests.support.recording import WAIT, Received, Rig, app1_rig, assert_still_serving, fresh, proxy_process, read_for, recording_backend, send

pytestmark = pytest.mark.asyncio(loop_scope="module")


class Forwarded(AssertionError):
    """The backend received bytes of a request the proxy should have refused."""


class WrongStatus(AssertionError):
    """The proxy answered a refused request with another status than the one expected."""


class LeftOpen(AssertionError):
    """The proxy kept a connection open after refusing a request on it."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    async with app1_rig(tmp_path_factory.mktemp("hardening-requests")) as rig:
        yield rig


@pytest.fixture
def rig(shared: Rig) -> Rig:
    return fresh(shared)


def echo_target(request: Received) -> bytes:
    """A backend answer whose body is the request target, so responses can be matched to requests."""
    body = request.target.encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def assert_refused(rig: Rig, request: bytes, statuses: tuple[int, ...] = (400,)) -> None:
    """Send request; it must reach no backend, get one of `statuses`, and have its connection closed.

    The three checks raise three exception types, so an xfail can name the one known to fail
    while a regression in the others still fails the test.
    """
    async with connection(rig.proxy.port) as (reader, writer):
        with suppress(ConnectionError):
            writer.write(request)
            await writer.drain()
        head, closed = await read_for(reader, WAIT, until=lambda data: b"\r\n\r\n" in data)
        await rig.backend.settle()
        if rig.backend.received:
            raise Forwarded(f"the backend received {rig.backend.received[:400]!r}; the client got {head[:200]!r}")
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        if not re.fullmatch(rf"HTTP/1\.[01] ({'|'.join(map(str, statuses))}) .*", status_line):
            raise WrongStatus(f"expected {statuses}, the client got {head[:300]!r}")
        if not closed:
            _, closed = await read_for(reader, WAIT)
        if not closed:
            raise LeftOpen(f"the connection stayed open {WAIT} s after {status_line!r}")


def xfail(raises: type[AssertionError], reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, raises=raises, reason=reason)


# ---------------------------------------------------------------- refused outright: 400, close, nothing forwarded

POST = b"POST / HTTP/1.1\r\nHost: app1.localhost\r\n"
GET = b"GET / HTTP/1.1\r\nHost: app1.localhost\r\n"
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"


REFUSED = [
    # -- framing: Content-Length with Transfer-Encoding (RFC 9112 6.3 item 3)
    pytest.param(POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", id="cl-then-te"),
    pytest.param(POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", id="te-then-cl"),
    pytest.param(POST + b"Content-Length: 5\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n", id="cl-with-uppercase-te"),
    # -- framing: Content-Length values (RFC 9112 6.3 item 5)
    pytest.param(POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", id="two-different-cl"),
    pytest.param(POST + b"Content-Length: 5, 6\r\n\r\nhello!", id="cl-list-5-6"),
    pytest.param(POST + b"Content-Length: abc\r\n\r\nhello", id="cl-abc"),
    pytest.param(POST + b"Content-Length: -1\r\n\r\nhello", id="cl-minus-1"),
    pytest.param(POST + b"Content-Length: +5\r\n\r\nhello", id="cl-plus-5"),
    pytest.param(POST + b"Content-Length: 0x10\r\n\r\nhello", id="cl-hex"),
    pytest.param(POST + b"Content-Length:  5 5\r\n\r\nhello", id="cl-5-space-5"),
    pytest.param(POST + b"Content-Length: 99999999999999999999999\r\n\r\nhello", id="cl-overflow"),
    pytest.param(POST + b"Content-Length: \r\n\r\nhello", id="cl-empty"),
    # -- framing: Transfer-Encoding values (RFC 9112 6.3 item 4, 6.1)
    pytest.param(POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", id="te-chunked-not-last"),
    pytest.param(POST + b"Transfer-Encoding: gzip\r\n\r\nhello", id="te-gzip-alone"),
    pytest.param(POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", id="te-xchunked"),
    pytest.param(POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", id="te-chunked-twice-in-list"),
    pytest.param(POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", id="te-chunked-twice-as-fields"),
    pytest.param(POST + b"Transfer-Encoding: identity\r\n\r\nhello", id="te-identity"),
    pytest.param(POST + b'Transfer-Encoding: "chunked"\r\n\r\n0\r\n\r\n', id="te-quoted"),
    # -- field syntax (RFC 9112 5.1, 5.2)
    pytest.param(GET + b"X-A: a\r\n b\r\n\r\n", id="obs-fold-space"),
    pytest.param(GET + b"X-A: a\r\n\tb\r\n\r\n", id="obs-fold-tab"),
    pytest.param(b"GET / HTTP/1.1\r\n Host: app1.localhost\r\n\r\n", id="first-field-line-folded"),
    pytest.param(b"GET / HTTP/1.1\r\nHost : app1.localhost\r\n\r\n", id="space-before-colon-host"),
    pytest.param(POST + b"Content-Length : 5\r\n\r\nhello", id="space-before-colon-cl"),
    pytest.param(POST + b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello", id="space-before-colon-te"),
    pytest.param(GET + b": x\r\n\r\n", id="empty-field-name"),
    pytest.param(GET + b"X-A\r\n\r\n", id="field-without-colon"),
    pytest.param(GET + b"X A: 1\r\n\r\n", id="space-inside-field-name"),
    # -- line endings and control characters (RFC 9112 2.2, RFC 9110 5.5)
    pytest.param(GET + b"X-A: a\rb\r\n\r\n", id="bare-cr-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: app1.localhost\nX-A: a\r\n\r\n", id="bare-lf-mixed-in-head"),
    pytest.param(b"GET / HTTP/1.1\nHost: app1.localhost\r\n\r\n", id="bare-lf-after-request-line"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: app1.localhost\rX-A: a\r\n\r\n", id="bare-cr-as-line-end"),
    pytest.param(b"GET /a\x00b HTTP/1.1\r\nHost: app1.localhost\r\n\r\n", id="nul-in-target"),
    pytest.param(GET + b"X-A: a\x00b\r\n\r\n", id="nul-in-value"),
    pytest.param(GET + b"X-\x00A: a\r\n\r\n", id="nul-in-name"),
    pytest.param(GET + b"X-A: a\x01b\r\n\r\n", id="ctl-0x01-in-value"),
    pytest.param(GET + b"X-A: a\x7fb\r\n\r\n", id="del-in-value"),
    # -- Host (RFC 9112 3.2: no Host, more than one, or an invalid value is a 400)
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="no-host-on-1.1"),
    pytest.param(GET + b"Host: app1.localhost\r\n\r\n", id="two-hosts-same"),
    pytest.param(GET + b"Host: other.localhost\r\n\r\n", id="two-hosts-different"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: app1.localhost evil\r\n\r\n", id="host-with-space"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: app1.localhost, other.localhost\r\n\r\n", id="host-list"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x@app1.localhost\r\n\r\n", id="host-with-userinfo"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: app1.localhost/x\r\n\r\n", id="host-with-path"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: app1.localhost:abc\r\n\r\n", id="host-with-bad-port"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: app1.localhost:99999\r\n\r\n", id="host-port-above-65535"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: app1.localhost:1234567\r\n\r\n", id="host-port-of-seven-digits"),
    pytest.param(b"GET http://app1.localhost:70000/ HTTP/1.1\r\nHost: app1.localhost\r\n\r\n", id="absolute-form-port-above-65535"),
    # -- request line (RFC 9112 3)
    pytest.param(b"G(T / HTTP/1.1\r\nHost: app1.localhost\r\n\r\n", id="method-with-paren"),
    pytest.param(b"GE@T / HTTP/1.1\r\nHost: app1.localhost\r\n\r\n", id="method-with-at"),
    pytest.param(b"GET /a b HTTP/1.1\r\nHost: app1.localhost\r\n\r\n", id="space-in-target"),
    pytest.param(b"GET / HTTP/1.2\r\nHost: app1.localhost\r\n\r\n", id="http-1.2"),
    pytest.param(b"GET / HTTP/1.10\r\nHost: app1.localhost\r\n\r\n", id="http-1.10"),
    pytest.param(b"GET / HTTP/1\r\nHost: app1.localhost\r\n\r\n", id="http-1-no-minor"),
    pytest.param(b"GET / http/1.1\r\nHost: app1.localhost\r\n\r\n", id="lowercase-http-name"),
    # -- chunked body, the whole request in one write (RFC 9112 7.1)
    pytest.param(CHUNKED + b"zz\r\nhello\r\n0\r\n\r\n", id="chunk-size-not-hex"),
    pytest.param(CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n", id="chunk-size-negative"),
    pytest.param(CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n", id="chunk-size-0x"),
    pytest.param(CHUNKED + b"5 \r\nhello\r\n0\r\n\r\n", id="chunk-size-trailing-space"),
    pytest.param(CHUNKED + b"fffffffffffffffffff\r\nhello\r\n0\r\n\r\n", id="chunk-size-overflow"),
    pytest.param(CHUNKED + b"5\r\nhelloXX0\r\n\r\n", id="chunk-data-without-crlf"),
    pytest.param(CHUNKED + b"5\nhello\r\n0\r\n\r\n", id="chunk-size-bare-lf"),
    pytest.param(CHUNKED + b"5;\x00\r\nhello\r\n0\r\n\r\n", id="chunk-ext-nul"),
    pytest.param(CHUNKED + b"5;a\nb\r\nhello\r\n0\r\n\r\n", id="chunk-ext-bare-lf"),
    pytest.param(CHUNKED + b'5;a="x\r\n"\r\nhello\r\n0\r\n\r\n', id="chunk-ext-quoted-crlf"),
]


@pytest.mark.parametrize("request_bytes", REFUSED)
async def test_malformed_request_gets_400_closes_and_reaches_no_backend(rig: Rig, request_bytes: bytes) -> None:
    await assert_refused(rig, request_bytes)


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET / HTTP/2.0\r\nHost: app1.localhost\r\n\r\n", id="http-2.0"),
        pytest.param(b"GET / HTTP/3.0\r\nHost: app1.localhost\r\n\r\n", id="http-3.0"),
        pytest.param(b"GET / HTTP/9.9\r\nHost: app1.localhost\r\n\r\n", id="http-9.9"),
        pytest.param(b"GET /\r\n\r\n", id="http-0.9-bare"),
        pytest.param(b"GET /\r\nHost: app1.localhost\r\n\r\n", id="http-0.9-with-host"),
        pytest.param(b"GET http://app1.localhost/\r\n\r\n", id="http-0.9-absolute"),
    ],
)
async def test_unsupported_http_version_gets_400_or_505(rig: Rig, request_bytes: bytes) -> None:
    """HTTP/0.9 (no version) and major versions other than 1 are never forwarded as HTTP/1.1."""
    await assert_refused(rig, request_bytes, statuses=(400, 505))


async def test_http_1_0_request_with_transfer_encoding_is_refused(rig: Rig) -> None:
    """RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing."""
    await assert_refused(rig, b"POST / HTTP/1.0\r\nHost: app1.localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")


@pytest.mark.parametrize("codings", [b"gzip, chunked", b"deflate, chunked"])
async def test_transfer_coding_under_chunked_is_refused_with_400_or_501(rig: Rig, codings: bytes) -> None:
    """A coding under chunked would reach the app as if it were the plain body (RFC 9112 6.1: 501)."""
    await assert_refused(rig, POST + b"Transfer-Encoding: " + codings + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n", statuses=(400, 501))


# ---------------------------------------------------------------- smuggling: /smuggled never reaches the backend

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: app1.localhost\r\n\r\n"


@pytest.mark.parametrize(
    "attack",
    [
        pytest.param(POST + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, id="cl-te"),
        pytest.param(POST + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED), id="te-cl"),
        pytest.param(POST + b"Content-Length: 5\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED, id="te-xchunked-with-cl"),
        pytest.param(POST + b"Content-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, id="te-space-colon-with-cl"),
        pytest.param(POST + b"Content-Length: 5\r\nX-A: a\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, id="te-in-obs-fold"),
        pytest.param(POST + b"Content-Length: 5\r\nX-A: a\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, id="te-after-bare-lf"),
        pytest.param(POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n" + SMUGGLED, id="te-chunked-then-identity"),
        pytest.param(POST + b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED, id="cl-0-then-cl-length"),
        pytest.param(CHUNKED + b"0\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED, id="cl-in-trailer"),
        pytest.param(GET + b"Content-Length: %d\r\nContent-Length: 0\r\n\r\n" % len(SMUGGLED) + SMUGGLED, id="get-with-two-cls"),
    ],
)
async def test_smuggling_attempt_never_reaches_the_backend(rig: Rig, attack: bytes) -> None:
    reply = await send(rig.proxy.port, attack)
    await rig.backend.settle()
    assert b"/smuggled" not in rig.backend.received, rig.backend.received[:600]
    assert "/smuggled" not in rig.backend.targets
    assert reply.statuses and reply.statuses[-1] == 400, reply.data[:300]
    assert reply.closed
    assert rig.backend.received == b"", "the ambiguous request itself was forwarded"


async def test_smuggling_after_a_legitimate_pipelined_request_forwards_at_most_that_one(rig: Rig) -> None:
    """GET /1 then a CL+TE request in one write: /1 at most once, /smuggled never, then 400 and close."""
    attack = GET.replace(b"/ ", b"/1 ") + b"\r\n" + POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED
    reply = await send(rig.proxy.port, attack)
    await rig.backend.settle()
    assert rig.backend.targets in ([], ["/1"]), rig.backend.targets
    assert b"/smuggled" not in rig.backend.received
    assert reply.statuses[-1:] == [400], reply.data[:400]
    assert reply.closed


# ---------------------------------------------------------------- chunked body broken after the head went upstream


@pytest.mark.parametrize(
    "bad_tail",
    [
        pytest.param(b"zz\r\nhello\r\n0\r\n\r\n", id="invalid-size"),
        pytest.param(b"5\r\nhelloXX0\r\n\r\n", id="data-without-crlf"),
        pytest.param(b"5;\x00\r\nhello\r\n0\r\n\r\n" + SMUGGLED, id="ext-nul-then-request"),
    ],
)
async def test_chunked_body_broken_midway_leaves_backend_with_an_unterminated_message(rig: Rig, bad_tail: bytes) -> None:
    """The head and a good chunk are forwarded first; the broken rest must never let the backend see a
    terminating chunk or a next request, and the client must get a 400 (or a close) at once.

    Documented behaviour: the data of a chunk whose trailing CRLF is missing may already be upstream
    ("hellohello"); nothing after the point of error is.
    """
    good = CHUNKED + b"5\r\nhello\r\n"
    async with connection(rig.proxy.port) as (reader, writer):
        writer.write(good)
        await writer.drain()
        await rig.backend.wait_for_requests(1)
        await rig.backend.settle()
        writer.write(bad_tail)
        with suppress(ConnectionError):
            await writer.drain()
        answer, closed = await read_for(reader, WAIT)
        await rig.backend.settle()
        (forwarded,) = rig.backend.requests
        assert not forwarded.complete, f"the backend saw a complete message: {forwarded.wire_body!r}"
        assert forwarded.body in (b"hello", b"hellohello"), forwarded.wire_body
        assert b"XX" not in rig.backend.received and b"/smuggled" not in rig.backend.received
        if not closed:
            raise LeftOpen(f"no answer and no close {WAIT} s after the malformed chunk; the client got {answer[:200]!r}")
    assert answer == b"" or answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.0 400 ")), answer[:300]
    await assert_still_serving(rig)


async def test_chunked_body_without_final_crlf_never_gets_a_terminator_upstream(rig: Rig) -> None:
    """'0\\r\\n' and then the client half-closes: the backend must not be handed a complete message."""
    reply = await send(rig.proxy.port, CHUNKED + b"5\r\nhello\r\n0\r\n", half_close=True)
    await rig.backend.settle()
    assert reply.closed
    assert b"0\r\n\r\n" not in rig.backend.received
    assert all(not r.complete for r in rig.backend.requests), [r.wire_body for r in rig.backend.requests]
    await assert_still_serving(rig)


# ---------------------------------------------------------------- chunk extensions


@pytest.mark.parametrize("extension", [pytest.param(b";" + b"a" * 100_000, id="one-100k-extension"), pytest.param(b";a=b" * 5000, id="5000-extensions")])
async def test_chunk_extensions_are_dropped_and_the_body_arrives_exact(rig: Rig, extension: bytes) -> None:
    """Documented behaviour: large chunk extensions are accepted; none of their bytes go upstream."""
    reply = await send(rig.proxy.port, CHUNKED.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + b"5" + extension + b"\r\nhello\r\n0\r\n\r\n")
    assert reply.status == 200, reply.data[:300]
    (forwarded,) = rig.backend.requests
    assert forwarded.complete and forwarded.body == b"hello"
    assert b"a=b" not in forwarded.wire_body and b"aaaa" not in forwarded.wire_body


# ---------------------------------------------------------------- absolute-form target versus Host


async def test_absolute_form_naming_an_unknown_site_is_routed_by_it_not_by_host(rig: Rig) -> None:
    """RFC 9112 3.2.2: the target's authority wins over Host, so Host: app1.localhost does not route this."""
    reply = await send(rig.proxy.port, b"GET http://other.localhost/x HTTP/1.1\r\nHost: app1.localhost\r\nConnection: close\r\n\r\n")
    await rig.backend.settle()
    assert reply.status == 404, reply.data[:300]
    assert rig.backend.received == b""


async def test_absolute_form_authority_replaces_host_upstream(rig: Rig) -> None:
    reply = await send(rig.proxy.port, b"GET http://app1.localhost/x HTTP/1.1\r\nHost: other.localhost\r\nConnection: close\r\n\r\n")
    assert reply.status == 200, reply.data[:300]
    (forwarded,) = rig.backend.requests
    assert forwarded.request_line == "GET /x HTTP/1.1"
    assert forwarded.values("Host") == ["app1.localhost"]
    assert forwarded.values("X-Forwarded-Host") == ["app1.localhost"]


async def test_absolute_form_is_forwarded_in_origin_form_to_the_configured_upstream(rig: Rig) -> None:
    reply = await send(rig.proxy.port, b"GET http://app1.localhost/p?q=1 HTTP/1.1\r\nHost: app1.localhost\r\nConnection: close\r\n\r\n")
    assert reply.status == 200
    (forwarded,) = rig.backend.requests
    assert forwarded.request_line == "GET /p?q=1 HTTP/1.1"
    assert forwarded.values("Host") == ["app1.localhost"]


# ---------------------------------------------------------------- size limits


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(GET + b"X-Big: " + b"a" * 65536 + b"\r\n\r\n", id="64k-field-line"),
        pytest.param(GET + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1000) for i in range(200)) + b"\r\n", id="200k-head"),
        pytest.param(GET + b"".join(b"X-H%d: 1\r\n" % i for i in range(500)) + b"\r\n", id="500-fields"),
        pytest.param(b"GET /" + b"a" * 65536 + b" HTTP/1.1\r\nHost: app1.localhost\r\n\r\n", id="64k-target"),
    ],
)
async def test_oversized_head_is_refused_and_the_proxy_keeps_serving(rig: Rig, request_bytes: bytes) -> None:
    await assert_refused(rig, request_bytes, statuses=(400, 414, 431))
    await assert_still_serving(rig)


async def test_a_30k_cookie_under_the_limit_is_forwarded_intact(rig: Rig) -> None:
    cookie = "s=" + "c" * 30_000
    reply = await send(rig.proxy.port, GET + b"Cookie: " + cookie.encode() + b"\r\nConnection: close\r\n\r\n")
    assert reply.status == 200
    assert rig.backend.requests[0].values("Cookie") == [cookie]


# ---------------------------------------------------------------- positive controls


async def test_content_length_body_is_forwarded_byte_for_byte(rig: Rig) -> None:
    """A body that looks like chunk framing and a request is still just a body."""
    body = b"0\r\n\r\n" + SMUGGLED + bytes(range(256))
    reply = await send(rig.proxy.port, POST + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    assert reply.status == 200
    (forwarded,) = rig.backend.requests
    assert forwarded.values("Content-Length") == [str(len(body))]
    assert forwarded.values("Transfer-Encoding") == []
    assert forwarded.complete and forwarded.body == body
    assert rig.backend.targets == ["/"]


async def test_chunked_body_is_forwarded_with_exactly_its_payload(rig: Rig) -> None:
    chunks = [b"hello", b"\r\n0\r\n\r\n", bytes(range(256)), b"x" * 70_000]
    framed = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\nX-Trailer: t\r\n\r\n"
    reply = await send(rig.proxy.port, CHUNKED.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + framed)
    assert reply.status == 200
    (forwarded,) = rig.backend.requests
    assert forwarded.values("Transfer-Encoding") == ["chunked"]
    assert forwarded.values("Content-Length") == []
    assert forwarded.complete and forwarded.body == b"".join(chunks)


async def test_pipelined_requests_are_each_forwarded_once_in_order(rig: Rig) -> None:
    rig.backend.answer = echo_target
    pipeline = (
        b"GET /1 HTTP/1.1\r\nHost: app1.localhost\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: app1.localhost\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /3 HTTP/1.1\r\nHost: app1.localhost\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"DELETE /4 HTTP/1.1\r\nHost: app1.localhost\r\nContent-Length: 0\r\n\r\n"
        b"GET /5 HTTP/1.1\r\nHost: app1.localhost\r\nConnection: close\r\n\r\n"
    )
    reply = await send(rig.proxy.port, pipeline)
    assert [r.body for r in reply.responses] == [b"/1", b"/2", b"/3", b"/4", b"/5"]
    assert reply.statuses == [200] * 5 and reply.closed
    assert rig.backend.targets == ["/1", "/2", "/3", "/4", "/5"]
    assert [r.body for r in rig.backend.requests] == [b"", b"hello", b"abc", b"", b""]
    assert all(r.complete for r in rig.backend.requests)


async def test_pipelined_requests_split_across_writes_are_each_forwarded_once(rig: Rig) -> None:
    rig.backend.answer = echo_target
    pipeline = b"".join(b"GET /%d HTTP/1.1\r\nHost: app1.localhost\r\n\r\n" % i for i in range(1, 7))
    parts = [pipeline[i : i + 7] for i in range(0, len(pipeline), 7)]
    reply = await send(rig.proxy.port, parts, pause=0.0, responses=6)
    assert [r.body for r in reply.responses] == [b"/%d" % i for i in range(1, 7)]
    assert rig.backend.targets == [f"/{i}" for i in range(1, 7)]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("backend_closes", [False, True], ids=["backend-keeps-open", "backend-closes"])
async def test_body_sent_after_an_early_upstream_answer_is_still_only_a_body(rig: Rig, framing: str, backend_closes: bool) -> None:
    """The backend answers as soon as the head is in; the body that follows holds a whole request,
    which must never be read as a second request by the proxy or the backend."""
    rig.backend.answer_before_body = True
    rig.backend.close_after_answer = backend_closes
    if framing == "chunked":
        head, body = CHUNKED, b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    else:
        head, body = POST + b"Content-Length: %d\r\n\r\n" % len(SMUGGLED), SMUGGLED
    reply = await send(rig.proxy.port, [head, body], pause=0.3, responses=1)
    await rig.backend.settle()
    assert reply.statuses == [200], reply.data[:300]
    assert rig.backend.targets == ["/"]
    assert "/smuggled" not in rig.backend.targets


async def test_request_with_body_on_get_is_forwarded_with_that_body(rig: Rig) -> None:
    reply = await send(rig.proxy.port, GET + b"Content-Length: 5\r\nConnection: close\r\n\r\nhello")
    assert reply.status == 200
    (forwarded,) = rig.backend.requests
    assert forwarded.body == b"hello" and forwarded.values("Content-Length") == ["5"]


# ---------------------------------------------------------------- the proxy's own 400


async def test_refusal_status_line_is_http_1_1(rig: Rig) -> None:
    reply = await send(rig.proxy.port, POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert reply.status_line.startswith("HTTP/1.1 400 "), reply.status_line


async def test_malformed_requests_are_logged_without_a_traceback(tmp_path: Path) -> None:
    """A traceback means a bug in our code, never a client's mistake (STYLE.md)."""
    async with recording_backend() as backend, proxy_process(tmp_path / "proxy", {"app1": f"127.0.0.1:{backend.port}"}) as proxy:
        refused = [
            POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            GET + b"X-A: a\r\n b\r\n\r\n",
            CHUNKED + b"zz\r\n\r\n",
            b"G(T / HTTP/1.1\r\nHost: app1.localhost\r\n\r\n",
        ]
        for request_bytes in refused:
            reply = await send(proxy.port, request_bytes)
            assert reply.status == 400
        assert backend.received == b""
        stderr = proxy.stderr()
    assert "Traceback" not in stderr, stderr[-3000:]
