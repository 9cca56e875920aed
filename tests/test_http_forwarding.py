"""HTTP forwarding through the real proxy process, checked on the wire.

What the upstream receives (method, raw target, headers, body framing) and what the client gets
back (status line, headers, body bytes), with real aiohttp apps and raw sockets on loopback.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from tests.support.certs import self_signed_context
from tests.support.proxies import ProxyFactory
from tests.support.rawhttp import (
    TIMEOUT,
    EchoUpstream,
    canned,
    connection,
    echo,
    echo_upstream,
    exchange,
    header_values,
    http_request,
    raw_upstream,
    read_response,
)
from tests.support.system import free_port

GZIPPED = gzip.compress(b"compressed by the app, not by the proxy\n" * 50, mtime=0)
FILE_BODY = bytes(range(256)) * 8 + b"tail"


async def cookies(request: web.Request) -> web.Response:
    response = web.Response(status=201, reason="Made It", text="three cookies\n", headers={"X-Custom": "kept as is"})
    for cookie in ("session=abc; Path=/; HttpOnly", "theme=dark; Max-Age=3600", "empty=; Expires=Thu, 01 Jan 1970 00:00:00 GMT"):
        response.headers.add("Set-Cookie", cookie)
    return response


async def gzipped(request: web.Request) -> web.Response:
    return web.Response(body=GZIPPED, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain", "Vary": "Accept-Encoding"})


async def chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for i in range(5):
        await response.write(f"part {i}\n".encode())
        await asyncio.sleep(0.02)
    await response.write_eof()
    return response


async def a_file(request: web.Request) -> web.Response:
    return web.Response(body=FILE_BODY, content_type="application/octet-stream")


async def no_content(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def not_modified(request: web.Request) -> web.Response:
    return web.Response(status=304, headers={"ETag": '"v1"'})


@pytest.fixture
async def responses_app() -> AsyncIterator[TestServer]:
    """An app with one route per kind of response the proxy must pass through untouched."""
    app = web.Application()
    app.router.add_get("/cookies", cookies)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/file", a_file)  # HEAD /file comes for free, with the GET's Content-Length
    app.router.add_get("/no-content", no_content)
    app.router.add_get("/not-modified", not_modified)
    app.router.add_route("*", "/{tail:.*}", echo)
    server = TestServer(app, host="127.0.0.1")
    async with server:
        yield server


# ---------------------------------------------------------------- 1. request line


@pytest.mark.parametrize(
    "target",
    [
        "/a%2Fb/%7Euser?q=%20x&y=%2F",
        "/caf%C3%A9/J%c3%bcrgen?name=%E2%9C%93&empty=&flag",
        "/a//b/%2e%2e/c;v=1?a=1&a=2&b=%26%3D%23",
        "/search?",
    ],
    ids=["slash-tilde-space", "utf8-mixed-case", "double-slash-dots-params", "empty-query"],
)
async def test_request_target_reaches_upstream_byte_for_byte(start_proxy: ProxyFactory, echo_server: TestServer, target: str) -> None:
    proxy = await start_proxy({"app1": echo_server.port})
    response = await exchange(proxy.port, http_request("GET", target))
    assert response.status == 200
    assert response.json()["target"] == target


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "PURGE"])
async def test_method_reaches_upstream_unchanged(start_proxy: ProxyFactory, echo_server: TestServer, method: str) -> None:
    proxy = await start_proxy({"app1": echo_server.port})
    body = b'<?xml version="1.0"?><propfind xmlns="DAV:"><allprop/></propfind>' if method in ("POST", "PUT", "PATCH", "PROPFIND") else None
    response = await exchange(proxy.port, http_request(method, "/dav/x?y=1", headers=[("Depth", "1")], body=body))
    assert response.status == 200
    echoed = response.json()
    assert (echoed["method"], echoed["target"]) == (method, "/dav/x?y=1")
    assert echoed["body"] == (body or b"").decode()


# ---------------------------------------------------------------- 2. responses


async def test_status_reason_every_set_cookie_and_body_come_back_intact(start_proxy: ProxyFactory, responses_app: TestServer) -> None:
    proxy = await start_proxy({"app1": responses_app.port})
    response = await exchange(proxy.port, http_request("GET", "/cookies"))
    assert (response.status, response.reason) == (201, "Made It")
    assert response.values("Set-Cookie") == ["session=abc; Path=/; HttpOnly", "theme=dark; Max-Age=3600", "empty=; Expires=Thu, 01 Jan 1970 00:00:00 GMT"]
    assert response.values("X-Custom") == ["kept as is"]
    assert response.body == b"three cookies\n"


async def test_gzip_response_keeps_encoding_length_and_exact_bytes(start_proxy: ProxyFactory, responses_app: TestServer) -> None:
    proxy = await start_proxy({"app1": responses_app.port})
    response = await exchange(proxy.port, http_request("GET", "/gzip", headers=[("Accept-Encoding", "gzip")]))
    assert response.status == 200
    assert response.values("Content-Encoding") == ["gzip"]
    assert response.values("Content-Length") == [str(len(GZIPPED))]
    assert response.values("Transfer-Encoding") == []
    assert response.body == GZIPPED


async def test_chunked_upstream_response_arrives_complete(start_proxy: ProxyFactory, responses_app: TestServer, client: aiohttp.ClientSession) -> None:
    proxy = await start_proxy({"app1": responses_app.port})
    expected = b"".join(f"part {i}\n".encode() for i in range(5))
    raw = await exchange(proxy.port, http_request("GET", "/chunked"))
    assert raw.status == 200 and raw.complete
    assert raw.body == expected
    async with client.get(f"{proxy.base}/chunked", headers={"Host": "app1.localhost"}) as resp:
        assert await resp.read() == expected


# ---------------------------------------------------------------- 3. request bodies


@pytest.mark.parametrize(
    "chunks",
    [[b"hello", b", ", b"world"], [bytes([i]) * 70_000 for i in range(3)]],
    ids=["small", "large"],
)
async def test_chunked_request_body_reaches_upstream_whole(start_proxy: ProxyFactory, echo_server: TestServer, chunks: list[bytes]) -> None:
    proxy = await start_proxy({"app1": echo_server.port})
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    response = await exchange(proxy.port, http_request("POST", "/upload", headers=[("Transfer-Encoding", "chunked")]) + body)
    assert response.status == 200
    echoed = response.json()
    assert echoed["body_length"] == sum(map(len, chunks))
    if echoed["body"]:
        assert echoed["body"] == b"".join(chunks).decode()


@pytest.mark.parametrize("size", [0, 1, 300_000])
async def test_content_length_request_body_arrives_with_same_length(
    start_proxy: ProxyFactory, echo_server: TestServer, client: aiohttp.ClientSession, size: int
) -> None:
    proxy = await start_proxy({"app1": echo_server.port})
    async with client.post(f"{proxy.base}/upload", data=b"x" * size, headers={"Host": "app1.localhost"}) as resp:
        assert resp.status == 200
        echoed = await resp.json()
    assert echoed["body_length"] == size
    assert header_values(echoed, "Content-Length") == [str(size)]
    assert header_values(echoed, "Transfer-Encoding") == []


# ---------------------------------------------------------------- 4. responses without a body


async def test_head_keeps_get_content_length_and_sends_no_body(start_proxy: ProxyFactory, responses_app: TestServer) -> None:
    proxy = await start_proxy({"app1": responses_app.port})
    async with connection(proxy.port) as (reader, writer):
        writer.write(http_request("HEAD", "/file"))
        head = await read_response(reader, method="HEAD")
        assert head.status == 200
        assert head.values("Content-Length") == [str(len(FILE_BODY))]
        # Had a body followed the HEAD answer, it would sit where the next status line must be.
        writer.write(http_request("GET", "/file"))
        get = await read_response(reader)
        assert (get.status, get.body) == (200, FILE_BODY)


@pytest.mark.parametrize("path, status", [("/no-content", 204), ("/not-modified", 304)])
async def test_bodyless_status_keeps_connection_usable(start_proxy: ProxyFactory, responses_app: TestServer, path: str, status: int) -> None:
    proxy = await start_proxy({"app1": responses_app.port})
    async with connection(proxy.port) as (reader, writer):
        writer.write(http_request("GET", path))
        first = await read_response(reader)
        assert first.status == status
        assert first.values("Transfer-Encoding") == []
        writer.write(http_request("GET", "/after"))
        second = await read_response(reader)
        assert second.status == 200
        assert second.json()["target"] == "/after"


# ---------------------------------------------------------------- 5. Expect: 100-continue


async def test_expect_100_continue_gets_interim_response_before_body(start_proxy: ProxyFactory, echo_server: TestServer) -> None:
    proxy = await start_proxy({"app1": echo_server.port})
    async with connection(proxy.port) as (reader, writer):
        writer.write(http_request("POST", "/upload", headers=[("Content-Length", "11"), ("Expect", "100-continue")]))
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert interim.startswith(b"HTTP/1.1 100 ")
        writer.write(b"hello world")
        final = await read_response(reader)
    assert final.status == 200
    assert final.json()["body"] == "hello world"


# ---------------------------------------------------------------- 6. hop-by-hop headers


HOP_BY_HOP_REQUEST = [
    ("Keep-Alive", "timeout=5"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
    ("X-Secret", "s3cret"),
    ("X-Kept", "yes"),
]


@pytest.mark.parametrize(
    "connection_headers",
    [
        [("Connection", "close, x-SECRET"), ("Upgrade", "h2c")],
        [("Connection", "Upgrade, X-Secret"), ("Upgrade", "h2c")],
        [("Connection", "keep-alive"), ("connection", "X-SECRET"), ("Upgrade", "h2c")],
    ],
    ids=["close-and-named", "non-websocket-upgrade", "two-connection-lines"],
)
async def test_hop_by_hop_request_headers_never_reach_upstream(
    start_proxy: ProxyFactory, echo_server: TestServer, connection_headers: list[tuple[str, str]]
) -> None:
    proxy = await start_proxy({"app1": echo_server.port})
    response = await exchange(proxy.port, http_request("GET", "/hop", headers=connection_headers + HOP_BY_HOP_REQUEST))
    assert response.status == 200
    echoed = response.json()
    for name in ("Connection", "Keep-Alive", "TE", "Trailer", "Upgrade", "Proxy-Authorization", "X-Secret"):
        assert header_values(echoed, name) == [], name
    assert header_values(echoed, "X-Kept") == ["yes"]


async def test_connection_naming_host_or_content_length_does_not_remove_them(start_proxy: ProxyFactory, echo_server: TestServer) -> None:
    proxy = await start_proxy({"app1": echo_server.port})
    request = http_request("POST", "/hop", headers=[("Connection", "keep-alive, Host, content-length")], body=b"hello")
    response = await exchange(proxy.port, request)
    assert response.status == 200
    echoed = response.json()
    assert header_values(echoed, "Host") == ["app1.localhost"]
    assert header_values(echoed, "Content-Length") == ["5"]
    assert echoed["body"] == "hello"


async def test_hop_by_hop_response_headers_never_reach_client(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    upstream_answer = (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Length: 3\r\n"
        b"Connection: X-Internal, x-other\r\n"
        b"X-Internal: 1\r\n"
        b"X-Other: 2\r\n"
        b"Keep-Alive: timeout=5, max=100\r\n"
        b"Proxy-Authenticate: Basic realm=dev\r\n"
        b"Trailer: X-Checksum\r\n"
        b"Upgrade: h2c\r\n"
        b"X-Kept: yes\r\n"
        b"\r\n"
        b"ok\n"
    )
    async with raw_upstream(canned(upstream_answer)) as port:
        proxy = await start_proxy({"app1": f"127.0.0.1:{port}"})
        async with client.get(f"{proxy.base}/", headers={"Host": "app1.localhost"}) as resp:
            assert resp.status == 200
            assert await resp.read() == b"ok\n"
            headers = resp.headers
    for name in ("X-Internal", "X-Other", "Keep-Alive", "Proxy-Authenticate", "Trailer", "Upgrade"):
        assert name not in headers, name
    assert "x-internal" not in headers.get("Connection", "").lower()
    assert headers.getall("X-Kept") == ["yes"]


# ---------------------------------------------------------------- 7. X-Forwarded-*


async def test_forwarded_headers_replace_whatever_the_client_sent(start_proxy: ProxyFactory, echo_server: TestServer) -> None:
    proxy = await start_proxy({"app1": echo_server.port})
    spoofed = [
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-For", "198.51.100.1, 10.0.0.1"),
        ("x-forwarded-proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-FORWARDED-HOST", "evil2.example"),
    ]
    host = f"app1.localhost:{proxy.port}"
    response = await exchange(proxy.port, http_request("GET", "/", host=host, headers=spoofed))
    echoed = response.json()
    assert header_values(echoed, "X-Forwarded-For") == ["127.0.0.1"]
    assert header_values(echoed, "X-Forwarded-Proto") == ["http"]
    assert header_values(echoed, "X-Forwarded-Host") == [host]


# ---------------------------------------------------------------- 8. preserve_host


async def test_host_is_preserved_by_default(start_proxy: ProxyFactory, echo_server: TestServer, client: aiohttp.ClientSession) -> None:
    proxy = await start_proxy({"app1": echo_server.port})
    async with client.get(f"{proxy.base}/", headers={"Host": f"App1.localhost:{proxy.port}"}) as resp:
        echoed = await resp.json()
    assert header_values(echoed, "Host") == [f"App1.localhost:{proxy.port}"]


@pytest.mark.parametrize("with_host", [False, True], ids=["port-only", "host-port"])
async def test_preserve_host_false_sends_upstream_its_own_address(
    start_proxy: ProxyFactory, echo_server: TestServer, client: aiohttp.ClientSession, with_host: bool
) -> None:
    port = echo_server.port
    assert port is not None
    proxy = await start_proxy({"app1": {"upstream": f"127.0.0.1:{port}" if with_host else port, "preserve_host": False}})
    async with client.get(f"{proxy.base}/", headers={"Host": "app1.localhost"}) as resp:
        echoed = await resp.json()
    # A bare port means "localhost", dialed on 127.0.0.1 or ::1: either name is the app's own.
    allowed = [f"127.0.0.1:{port}"] if with_host else [f"localhost:{port}", f"127.0.0.1:{port}"]
    assert header_values(echoed, "Host")[0] in allowed
    assert len(header_values(echoed, "Host")) == 1
    assert header_values(echoed, "X-Forwarded-Host") == ["app1.localhost"]


# ---------------------------------------------------------------- 9. path routes


@pytest.mark.parametrize(
    "target, expected_upstream",
    [("/api", "A"), ("/api/x", "A"), ("/api/", "A"), ("/api?q=1", "A"), ("/api/x/y?z=%2F", "A"), ("/apiary", "B"), ("/", "B"), ("/other/api", "B")],
)
async def test_path_routes_pick_upstream_on_segment_boundary_and_forward_path_unchanged(
    start_proxy: ProxyFactory, upstream_a: EchoUpstream, upstream_b: EchoUpstream, target: str, expected_upstream: str
) -> None:
    proxy = await start_proxy({"app1": {"routes": {"/api": upstream_a.port, "/": upstream_b.port}}})
    response = await exchange(proxy.port, http_request("GET", target))
    assert response.values("X-Upstream") == [expected_upstream]
    assert response.json()["target"] == target


@pytest.mark.parametrize(
    "target, forwarded, expected_upstream",
    [
        ("/api/x", "/x", "A"),
        ("/api", "/", "A"),
        ("/api/", "/", "A"),
        ("/api?q=1", "/?q=1", "A"),
        ("/api/a%2Fb?c=%20", "/a%2Fb?c=%20", "A"),
        ("/apiary", "/apiary", "B"),
    ],
)
async def test_strip_prefix_removes_route_prefix_from_forwarded_path(
    start_proxy: ProxyFactory, upstream_a: EchoUpstream, upstream_b: EchoUpstream, target: str, forwarded: str, expected_upstream: str
) -> None:
    proxy = await start_proxy({"app1": {"routes": {"/api": {"upstream": upstream_a.port, "strip_prefix": True}, "/": upstream_b.port}}})
    response = await exchange(proxy.port, http_request("GET", target))
    assert response.values("X-Upstream") == [expected_upstream]
    assert response.json()["target"] == forwarded


# ---------------------------------------------------------------- 10. wildcards and host matching


@pytest.mark.parametrize(
    "host, expected_upstream",
    [
        ("a.preview.localhost", "wild"),
        ("a.b.preview.localhost", "wild"),
        ("exact.preview.localhost", "exact"),
        ("x.exact.preview.localhost", "wild"),
        ("A.Preview.LOCALHOST", "wild"),
        ("EXACT.preview.localhost:7080", "exact"),
        ("exact.preview.localhost.", "exact"),
        ("a.preview.localhost.:1234", "wild"),
        ("preview.localhost", None),
    ],
)
async def test_wildcard_and_exact_host_matching(start_proxy: ProxyFactory, host: str, expected_upstream: str | None) -> None:
    async with echo_upstream("wild") as wild, echo_upstream("exact") as exact:
        proxy = await start_proxy({"*.preview.localhost": wild.port, "exact.preview.localhost": exact.port})
        response = await exchange(proxy.port, http_request("GET", "/", host=host))
        if expected_upstream is None:
            assert response.status == 404
            assert wild.targets == exact.targets == []
        else:
            assert response.status == 200
            assert response.values("X-Upstream") == [expected_upstream]


# ---------------------------------------------------------------- 11. upstream lists


async def test_list_of_upstreams_takes_turns(
    start_proxy: ProxyFactory, upstream_a: EchoUpstream, upstream_b: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy({"app1": [upstream_a.port, upstream_b.port]})
    seen = []
    for _ in range(6):
        async with client.get(f"{proxy.base}/", headers={"Host": "app1.localhost"}) as resp:
            assert resp.status == 200
            seen.append(resp.headers["X-Upstream"])
    assert Counter(seen) == {"A": 3, "B": 3}
    assert all(a != b for a, b in itertools.pairwise(seen)), seen


@pytest.mark.parametrize("dead_first", [True, False], ids=["dead-first", "dead-second"])
async def test_list_with_dead_upstream_still_answers_every_request(
    start_proxy: ProxyFactory, upstream_a: EchoUpstream, client: aiohttp.ClientSession, dead_first: bool
) -> None:
    dead = free_port()
    proxy = await start_proxy({"app1": [dead, upstream_a.port] if dead_first else [upstream_a.port, dead]})
    for _ in range(6):
        async with client.get(f"{proxy.base}/", headers={"Host": "app1.localhost"}) as resp:
            assert resp.status == 200
            assert resp.headers["X-Upstream"] == "A"
    assert len(upstream_a.targets) == 6


# ---------------------------------------------------------------- 12. 127.0.0.1 and ::1


async def test_port_only_upstream_reaches_app_listening_on_ipv6_loopback_only(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    async with echo_upstream("v6", host="::1") as v6:
        proxy = await start_proxy({"app1": v6.port})
        async with client.get(f"{proxy.base}/six", headers={"Host": "app1.localhost"}) as resp:
            assert resp.status == 200
            assert resp.headers["X-Upstream"] == "v6"
    assert v6.targets == ["/six"]


# ---------------------------------------------------------------- 13. HTTPS upstreams


@pytest.fixture
async def https_upstream(tmp_path: Path) -> AsyncIterator[EchoUpstream]:
    async with echo_upstream("tls", ssl_context=self_signed_context(tmp_path)) as upstream:
        yield upstream


async def test_https_upstream_with_self_signed_certificate_works_without_verification(
    start_proxy: ProxyFactory, https_upstream: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy({"secure": f"https://127.0.0.1:{https_upstream.port}"})
    async with client.get(URL(f"{proxy.base}/tls?x=%2F", encoded=True), headers={"Host": "secure.localhost"}) as resp:
        assert resp.status == 200
        echoed = await resp.json()
    assert echoed["target"] == "/tls?x=%2F"
    assert header_values(echoed, "Host") == ["secure.localhost"]


async def test_https_upstream_with_verify_true_fails_with_502_about_certificate(
    start_proxy: ProxyFactory, https_upstream: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy({"secure": {"upstream": f"https://127.0.0.1:{https_upstream.port}", "verify": True}})
    async with client.get(f"{proxy.base}/", headers={"Host": "secure.localhost"}) as resp:
        assert resp.status == 502
        assert "certificate" in (await resp.text()).lower()
    assert https_upstream.targets == []


# ---------------------------------------------------------------- 17. unknown and foreign hosts


async def test_unknown_localhost_name_gets_404_listing_sites_as_links(
    start_proxy: ProxyFactory, upstream_a: EchoUpstream, upstream_b: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy({"app1": upstream_a.port, "shop": upstream_b.port})
    async with client.get(f"{proxy.base}/x", headers={"Host": "nope.localhost", "Accept": "text/html"}) as resp:
        assert resp.status == 404
        page = await resp.text()
    assert f'href="http://app1.localhost:{proxy.port}"' in page
    assert f'href="http://shop.localhost:{proxy.port}"' in page
    assert upstream_a.targets == upstream_b.targets == []


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "app1.localhost.evil.example", "192.168.1.5"])
@pytest.mark.parametrize("accept", ["text/html", "application/json", None])
async def test_foreign_host_gets_bare_404_that_names_nothing(
    start_proxy: ProxyFactory, upstream_a: EchoUpstream, client: aiohttp.ClientSession, host: str, accept: str | None
) -> None:
    proxy = await start_proxy({"app1": upstream_a.port})
    headers = {"Host": host} | ({"Accept": accept} if accept else {})
    async with client.get(f"{proxy.base}/", headers=headers, skip_auto_headers=["Accept"]) as resp:
        assert resp.status == 404
        body = await resp.text()
    host_name = host.split(":")[0]
    for secret in ("app1.localhost", str(upstream_a.port), str(proxy.port), str(proxy.config)):
        assert secret not in body.replace(host_name, ""), secret
    assert upstream_a.targets == []


# ---------------------------------------------------------------- 18. the proxy's own pages


OWN_HOSTS = ["localhost", "localhost:{port}", "127.0.0.1", "127.0.0.1:{port}", "[::1]", "[::1]:{port}", "proxy.localhost", "PROXY.localhost:{port}"]


@pytest.mark.parametrize("own_host", OWN_HOSTS)
async def test_own_host_index_lists_every_site_with_link_and_target(start_proxy: ProxyFactory, client: aiohttp.ClientSession, own_host: str) -> None:
    app1, shop = free_port(), free_port()
    proxy = await start_proxy({"app1": app1, "shop": f"127.0.0.1:{shop}"})
    async with client.get(f"{proxy.base}/", headers={"Host": own_host.format(port=proxy.port), "Accept": "text/html"}) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        page = await resp.text()
    assert f'href="http://app1.localhost:{proxy.port}"' in page
    assert f'href="http://shop.localhost:{proxy.port}"' in page
    assert f":{app1}" in page and f"127.0.0.1:{shop}" in page


@pytest.mark.parametrize("own_host", OWN_HOSTS)
async def test_own_host_api_sites_gives_host_targets_and_config_line(start_proxy: ProxyFactory, client: aiohttp.ClientSession, own_host: str) -> None:
    app1, shop = free_port(), free_port()
    proxy = await start_proxy({"app1": app1, "shop": f"127.0.0.1:{shop}"})
    async with client.get(f"{proxy.base}/api/sites", headers={"Host": own_host.format(port=proxy.port)}) as resp:
        assert resp.status == 200
        document = await resp.json()
    assert document["config"] == str(proxy.config)
    assert document["config_error"] is None
    by_host = {site["host"]: site for site in document["sites"]}
    assert set(by_host) == {"app1.localhost", "shop.localhost"}
    assert any(str(app1) in t for t in by_host["app1.localhost"]["targets"])
    assert any(f"127.0.0.1:{shop}" in t for t in by_host["shop.localhost"]["targets"])
    # yaml.safe_dump writes `sites:` on line 1, then one site a line.
    assert re.fullmatch(re.escape(str(proxy.config)) + r":2:\d+", by_host["app1.localhost"]["config"])
    assert re.fullmatch(re.escape(str(proxy.config)) + r":3:\d+", by_host["shop.localhost"]["config"])


async def test_helpers_detect_a_cut_off_chunked_body() -> None:
    """read_response must report a missing final chunk, or the abort tests could not fail."""
    reader = asyncio.StreamReader()
    reader.feed_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    reader.feed_eof()
    response = await read_response(reader)
    assert (response.body, response.complete) == (b"hello", False)
