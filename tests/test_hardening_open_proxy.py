"""Not an open proxy: whatever a client writes, the proxy dials only the upstreams in sites.yaml.

Two recording backends run on loopback: `app`, the upstream of app1.localhost, and `stranger`,
a port the proxy is never told about. Every test counts the connections each one accepted; the
stranger must accept none, and a request for no configured site must not reach `app` either.

Cases per area (39 in all):
  absolute-form targets naming other hosts and ports ........ 11
  CONNECT in every target form ............................... 5
  Host naming no site, or the proxy itself with another port . 12
  routing hints a client could forge (X-Forwarded-Host...) ... 4
  origin-form targets that look like authorities ............. 4
  WebSocket upgrades naming other addresses .................. 3
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from tests.support.proxies import Proxy
from tests.support.rawhttp import connection
from tests.support.recording import WAIT, RecordingBackend, assert_alive, proxy_process, read_for, recording_backend, send

pytestmark = pytest.mark.asyncio(loop_scope="module")


class WrongStatus(AssertionError):
    """The proxy refused a request, but not with the status expected."""


@dataclass
class Rig:
    proxy: Proxy
    app: RecordingBackend  # the upstream of app1.localhost
    stranger: RecordingBackend  # listening, but in no sites.yaml
    app_accepts: int = 0
    stranger_accepts: int = 0

    def new_app_connections(self) -> int:
        return self.app.accepts - self.app_accepts

    async def assert_stranger_untouched(self) -> None:
        await self.stranger.settle()
        assert self.stranger.accepts == self.stranger_accepts, "the proxy dialed a port that is in no sites.yaml"
        assert self.stranger.received == b""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    folder = tmp_path_factory.mktemp("hardening-open-proxy")
    async with recording_backend() as app, recording_backend() as stranger, proxy_process(folder, {"app1": f"127.0.0.1:{app.port}"}) as proxy:
        yield Rig(proxy, app, stranger)


@pytest.fixture
def rig(shared: Rig) -> Rig:
    assert_alive(shared.proxy)
    shared.app.clear()
    shared.stranger.clear()
    shared.app_accepts, shared.stranger_accepts = shared.app.accepts, shared.stranger.accepts
    return shared


# ---------------------------------------------------------------- absolute-form targets


OWN_INDEX, NO_SITE, APP = 200, 404, "app"


@pytest.mark.parametrize(
    "target, outcome",
    [
        pytest.param("http://127.0.0.1:{stranger}/", OWN_INDEX, id="loopback-ip-stranger-port"),
        pytest.param("http://localhost:{stranger}/", OWN_INDEX, id="localhost-stranger-port"),
        pytest.param("http://[::1]:{stranger}/", OWN_INDEX, id="ipv6-loopback-stranger-port"),
        pytest.param("https://127.0.0.1:{stranger}/", OWN_INDEX, id="https-scheme"),
        pytest.param("http://example.com/", NO_SITE, id="internet-name"),
        pytest.param("http://example.com:{stranger}/", NO_SITE, id="internet-name-stranger-port"),
        pytest.param("http://app2.localhost:{stranger}/", NO_SITE, id="unconfigured-localhost-name"),
        # Userinfo is not part of a host (RFC 9112 3.2.2 forbids it in http URIs): a 400, nothing dialed.
        pytest.param("http://app1.localhost@127.0.0.1:{stranger}/", 400, id="userinfo-names-the-site"),
        pytest.param("http://127.0.0.1:{stranger}@app1.localhost/", 400, id="userinfo-names-the-stranger"),
        pytest.param("http://app1.localhost:{stranger}/x", APP, id="site-name-with-stranger-port"),
        pytest.param("http://APP1.localhost./x", APP, id="site-name-odd-spelling"),
    ],
)
async def test_absolute_form_target_never_dials_an_unconfigured_address(rig: Rig, target: str, outcome: int | str) -> None:
    """Routed by the target's host name like any request (RFC 9112 3.2.2): the proxy's own names get
    its index of sites, a configured site its upstream, anything else a 404; the port is never dialed."""
    absolute = target.format(stranger=rig.stranger.port)
    reply = await send(rig.proxy.port, f"GET {absolute} HTTP/1.1\r\nHost: app1.localhost\r\nConnection: close\r\n\r\n".encode())
    await rig.assert_stranger_untouched()
    if outcome == APP:
        assert reply.status == 200, reply.data[:300]
        assert [r.request_line for r in rig.app.requests] == ["GET /x HTTP/1.1"]
    else:
        assert reply.status == outcome, reply.data[:300]
        assert rig.app.received == b"" and rig.new_app_connections() == 0


# ---------------------------------------------------------------- CONNECT


@pytest.mark.parametrize(
    "target, host",
    [
        pytest.param("127.0.0.1:{stranger}", "127.0.0.1:{stranger}", id="loopback-stranger"),
        pytest.param("[::1]:{stranger}", "[::1]:{stranger}", id="ipv6-stranger"),
        pytest.param("localhost:{stranger}", "app1.localhost", id="host-names-the-site"),
        pytest.param("app1.localhost:80", "app1.localhost", id="the-site-itself"),
        pytest.param("example.com:443", "example.com:443", id="internet-name"),
    ],
)
async def test_connect_is_refused_and_dials_nothing(rig: Rig, target: str, host: str) -> None:
    """405 or 400, the connection closed, and what a tunnel would carry goes nowhere."""
    port = rig.stranger.port
    head = f"CONNECT {target.format(stranger=port)} HTTP/1.1\r\nHost: {host.format(stranger=port)}\r\n\r\n".encode()
    tunnelled = b"GET /through-the-tunnel HTTP/1.1\r\nHost: app1.localhost\r\n\r\n"
    async with connection(rig.proxy.port) as (reader, writer):
        writer.write(head)
        answer, closed = await read_for(reader, WAIT, until=lambda data: b"\r\n\r\n" in data)
        await rig.assert_stranger_untouched()
        assert rig.app.received == b"" and rig.new_app_connections() == 0
        if not answer.startswith((b"HTTP/1.1 405 ", b"HTTP/1.1 400 ", b"HTTP/1.0 400 ")):
            raise WrongStatus(f"CONNECT was answered {answer[:300]!r}")
        if not closed:
            try:
                writer.write(tunnelled)
                await writer.drain()
            except ConnectionError:
                pass
            rest, closed = await read_for(reader, WAIT)
            assert b"through-the-tunnel" not in rest
        assert closed, "the proxy kept the connection open after refusing CONNECT"
    await rig.assert_stranger_untouched()
    await rig.app.settle()
    assert rig.app.received == b"" and rig.new_app_connections() == 0


# ---------------------------------------------------------------- Host naming no site


@pytest.mark.parametrize(
    "host",
    [
        "nope.localhost",
        "nope.localhost:{stranger}",
        "app2.localhost",
        "evil.example",
        "evil.example:{stranger}",
        "app1.localhost.evil.example",
        "app1.localhostx",
        "192.168.1.5",
        "10.0.0.1:{stranger}",
    ],
)
async def test_unknown_host_is_404_and_no_backend_is_dialed(rig: Rig, host: str) -> None:
    reply = await send(rig.proxy.port, f"GET / HTTP/1.1\r\nHost: {host.format(stranger=rig.stranger.port)}\r\nConnection: close\r\n\r\n".encode())
    assert reply.status == 404, reply.data[:300]
    await rig.assert_stranger_untouched()
    await rig.app.settle()
    assert rig.app.received == b"" and rig.new_app_connections() == 0, "a request for no site reached the app"


@pytest.mark.parametrize("own_host", ["127.0.0.1:{stranger}", "localhost:{stranger}", "[::1]:{stranger}"])
async def test_the_proxys_own_names_with_another_port_get_its_own_pages_not_a_forward(rig: Rig, own_host: str) -> None:
    """localhost:PORT names the proxy itself, whatever PORT says: the port is never dialed."""
    reply = await send(rig.proxy.port, f"GET /x HTTP/1.1\r\nHost: {own_host.format(stranger=rig.stranger.port)}\r\nConnection: close\r\n\r\n".encode())
    assert reply.status is not None and reply.status < 500, reply.data[:300]
    await rig.assert_stranger_untouched()
    assert rig.app.received == b""


# ---------------------------------------------------------------- routing hints a client could forge


@pytest.mark.parametrize(
    "hint",
    [
        "X-Forwarded-Host: app1.localhost",
        'Forwarded: host="app1.localhost"',
        "X-Original-Host: app1.localhost",
        "X-Host: 127.0.0.1:{stranger}",
    ],
)
async def test_forged_routing_hints_do_not_route_an_unknown_host(rig: Rig, hint: str) -> None:
    request = f"GET / HTTP/1.1\r\nHost: nope.localhost\r\n{hint.format(stranger=rig.stranger.port)}\r\nConnection: close\r\n\r\n"
    reply = await send(rig.proxy.port, request.encode())
    assert reply.status == 404, reply.data[:300]
    await rig.assert_stranger_untouched()
    assert rig.app.received == b"" and rig.new_app_connections() == 0


# ---------------------------------------------------------------- origin-form targets that look like authorities


@pytest.mark.parametrize(
    "target",
    ["//127.0.0.1:{stranger}/x", "/@127.0.0.1:{stranger}/x", "/%2F%2F127.0.0.1:{stranger}/x", "/\\\\127.0.0.1:{stranger}/x"],
    ids=["protocol-relative", "at-sign", "encoded-slashes", "backslashes"],
)
async def test_origin_form_target_that_looks_like_an_authority_goes_to_the_site(rig: Rig, target: str) -> None:
    """The target is a path on app1, forwarded byte for byte to app1's upstream and nowhere else."""
    path = target.format(stranger=rig.stranger.port)
    reply = await send(rig.proxy.port, f"GET {path} HTTP/1.1\r\nHost: app1.localhost\r\nConnection: close\r\n\r\n".encode())
    await rig.assert_stranger_untouched()
    if reply.status == 400:  # refusing an odd target is fine; forwarding it elsewhere is not
        assert rig.app.received == b""
        return
    assert reply.status == 200, reply.data[:300]
    assert [r.target for r in rig.app.requests] == [path]


# ---------------------------------------------------------------- WebSocket upgrades naming other addresses


@pytest.mark.parametrize(
    "target, reaches_app",
    [
        pytest.param("http://127.0.0.1:{stranger}/ws", False, id="absolute-http-stranger"),
        pytest.param("ws://127.0.0.1:{stranger}/ws", False, id="absolute-ws-scheme-stranger"),
        pytest.param("http://app1.localhost:{stranger}/ws", True, id="absolute-site-name-stranger-port"),
    ],
)
async def test_websocket_upgrade_naming_another_address_never_dials_it(rig: Rig, target: str, reaches_app: bool) -> None:
    handshake = (
        f"GET {target.format(stranger=rig.stranger.port)} HTTP/1.1\r\nHost: app1.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    reply = await send(rig.proxy.port, handshake.encode(), responses=1)
    assert reply.status is not None and reply.status != 101, reply.data[:300]  # app and stranger answer 200: no switch
    await rig.assert_stranger_untouched()
    if reaches_app:
        assert [r.target for r in rig.app.requests] == ["/ws"]
    else:
        assert rig.app.received == b"" and rig.new_app_connections() == 0
