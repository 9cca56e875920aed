"""Which request heads a client connection answers itself, and which it leaves to aiohttp (pure)."""

from __future__ import annotations

import pytest
from aiohttp import HttpVersion10, HttpVersion11

from proxy.frontends.http1.heads import HeadReader, RequestHead

LIMITS = {"max_line": 8190, "max_field": 8190, "max_headers": 128}
GET = b"GET /app.js?v=1 HTTP/1.1\r\nHost: app1.localhost\r\nAccept: */*\r\n\r\n"


def read(*parts: bytes) -> tuple[HeadReader, RequestHead | None]:
    reader = HeadReader(**LIMITS)
    head = None
    for part in parts:
        reader.feed(part)
        head = reader.take()
    return reader, head


def test_a_plain_get_is_read_with_its_fields_as_sent() -> None:
    reader, head = read(GET)
    assert head == RequestHead("GET", "/app.js?v=1", HttpVersion11, ((b"Host", b"app1.localhost"), (b"Accept", b"*/*")), True)
    assert not reader.needs_aiohttp


def test_a_head_split_across_reads_is_read_once_whole() -> None:
    reader = HeadReader(**LIMITS)
    for byte in GET[:-1]:
        reader.feed(bytes([byte]))
        assert reader.take() is None
        assert reader.is_reading and not reader.needs_aiohttp
    reader.feed(GET[-1:])
    head = reader.take()
    assert head is not None and head.target == "/app.js?v=1"
    assert not reader.is_reading


def test_requests_one_after_another_on_a_connection_are_each_read() -> None:
    reader = HeadReader(**LIMITS)
    for n in range(3):
        reader.feed(GET.replace(b"/app.js", f"/{n}.js".encode()))
        head = reader.take()
        assert head is not None and head.target == f"/{n}.js?v=1"


def test_keep_alive_follows_the_version_and_connection_field() -> None:
    assert read(b"GET / HTTP/1.1\r\nHost: a.localhost\r\nConnection: close\r\n\r\n")[1] == RequestHead(
        "GET", "/", HttpVersion11, ((b"Host", b"a.localhost"), (b"Connection", b"close")), False
    )
    head = read(b"GET / HTTP/1.0\r\nHost: a.localhost\r\n\r\n")[1]
    assert head is not None and head.version == HttpVersion10 and not head.keep_alive
    head = read(b"GET / HTTP/1.0\r\nHost: a.localhost\r\nConnection: keep-alive\r\n\r\n")[1]
    assert head is not None and head.keep_alive


def test_field_values_that_are_not_utf8_come_back_unchanged() -> None:
    head = read(b"GET /caf%C3%A9?q=%FF HTTP/1.1\r\nHost: a.localhost\r\nX-Name: caf\xe9\r\n\r\n")[1]
    assert head is not None
    assert head.target == "/caf%C3%A9?q=%FF"
    assert head.raw_headers[1] == (b"X-Name", b"caf\xe9")


def test_a_zero_length_body_is_no_body() -> None:
    head = read(b"DELETE /item/1 HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 0\r\n\r\n")[1]
    assert head is not None and head.method == "DELETE"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 2\r\n\r\nhi", id="body-by-length"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 5\r\n\r\nhi", id="body-still-coming"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", id="chunked"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a.localhost\r\nExpect: 100-continue\r\n\r\n", id="expect"),
        pytest.param(
            b"GET /ws HTTP/1.1\r\nHost: a.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            id="websocket",
        ),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a.localhost\r\nUpgrade: h2c\r\n\r\n", id="upgrade-without-connection"),
        pytest.param(b"CONNECT a.localhost:443 HTTP/1.1\r\nHost: a.localhost:443\r\n\r\n", id="connect"),
        pytest.param(b"OPTIONS * HTTP/1.1\r\nHost: a.localhost\r\n\r\n", id="asterisk-form"),
        pytest.param(b"GET http://a.localhost/ HTTP/1.1\r\nHost: a.localhost\r\n\r\n", id="absolute-form"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="no-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a.localhost\r\nHost: b.localhost\r\n\r\n", id="two-hosts"),
        pytest.param(b"GET / HTTP/2.0\r\nHost: a.localhost\r\n\r\n", id="http-2.0"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a.localhost\r\nX: a\r\n  folded\r\n\r\n", id="obs-fold"),
        pytest.param(b"GET / HTTP/1.1\r\nHost : a.localhost\r\n\r\n", id="space-before-colon"),
        pytest.param(b"GET / HTTP/1.1\nHost: a.localhost\n\n", id="bare-lf"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a.local\x00host\r\n\r\n", id="nul"),
        pytest.param(GET + GET, id="pipelined-in-one-read"),
        pytest.param(b"GET /caf\xe9 HTTP/1.1\r\nHost: a.localhost\r\n\r\n", id="raw-non-ascii-target"),
        pytest.param(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a.localhost\r\n\r\n", id="target-over-the-line-limit"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a.localhost\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", id="field-over-the-limit"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a.localhost\r\n" + b"X: y\r\n" * 130 + b"\r\n", id="too-many-fields"),
    ],
)
def test_anything_but_a_plain_bodyless_request_goes_to_aiohttp(data: bytes) -> None:
    reader, head = read(data)
    assert head is None
    assert reader.needs_aiohttp


def test_a_request_after_a_plain_one_is_judged_on_its_own() -> None:
    reader = HeadReader(**LIMITS)
    reader.feed(GET)
    assert reader.take() is not None
    reader.feed(b"POST /form HTTP/1.1\r\nHost: app1.localhost\r\nContent-Length: 3\r\n\r\nabc")
    assert reader.take() is None and reader.needs_aiohttp
