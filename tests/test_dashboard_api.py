"""The JSON API on the proxy's own hosts: /api/sites, /api/requests, /api/events and replay.

Black-box through the real proxy process: requests go through it to real apps on 127.0.0.1,
the API is read over HTTP, and every replay is judged by what the backend app itself received,
never by what the API says it did. Refused replays must leave the backend untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import re
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.proxies import Proxy, ProxyFactory, write_sites
from tests.support.rawhttp import TIMEOUT, AppRequest, canned, echo, raw_upstream
from tests.support.system import free_port, require_tool
from tests.support.waiting import DEADLINE, until

BODY_LIMIT = 64 * 1024  # what the inspector keeps of each body (its documented limit)
CAPACITY = 500  # exchanges the inspector keeps (its documented limit)
BIG = 100 * 1024 + 5  # a body past BODY_LIMIT
IMMEDIATE = 1.2  # seconds: the reload debounce (0.2 s) and then some, well inside the 2 s probe interval
JSON_BODY = b'{"name":"demo","items":[1,2,3]}'
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(48))
GZIPPED = b'{"zipped":true,"n":42}'
SESSION = "sid=s3cr3t-session; Path=/"
TOKEN = "Bearer t0ken-very-secret"
COOKIE = "a=c00kie-one; b=c00kie-two"
PROXY_AUTH = "Basic cHJveHk6c2VjcmV0"
SECRETS = ("s3cr3t-session", "t0ken-very-secret", "c00kie-one", "c00kie-two", "cHJveHk6c2VjcmV0")
VITE_REFUSAL = 'Blocked request. This host ("{host}") is not allowed.\nTo allow this host, add "{host}" to `server.allowedHosts` in vite.config.js.'


# ---------------------------------------------------------------- a backend that remembers


@dataclass
class Backend:
    """A real app on 127.0.0.1 that records every request and answers by path (echo by default)."""

    server: TestServer
    received: list[AppRequest] = field(default_factory=list)
    release_stream: asyncio.Event = field(default_factory=asyncio.Event)  # /stream sends its last event once set

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def last(self) -> AppRequest:
        assert self.received, "the backend received nothing"
        return self.received[-1]


@contextlib.asynccontextmanager
async def run_backend(port: int | None = None) -> AsyncIterator[Backend]:
    """Run the recording app on 127.0.0.1 (port 0 unless given, e.g. to bring a down site up)."""
    app = web.Application()
    backend = Backend(TestServer(app, host="127.0.0.1", port=port))

    async def handle(request: web.Request) -> web.StreamResponse:
        backend.received.append(await AppRequest.read(request))
        path = request.path
        if path == "/json":
            return web.Response(body=JSON_BODY, content_type="application/json")
        if path == "/text":
            return web.Response(text="plain words from the app\n")
        if path == "/binary":
            return web.Response(body=PNG, content_type="image/png")
        if path == "/gzip":
            return web.Response(body=gzip.compress(GZIPPED), headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        if path == "/big":
            return web.Response(text="x" * BIG)
        if path == "/cookie":
            return web.Response(text="cookie set\n", headers={"Set-Cookie": SESSION})
        if path.startswith("/status/"):
            return web.Response(status=int(path.removeprefix("/status/")), text="as asked\n")
        if path == "/stream":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await response.prepare(request)
            await response.write(b"data: first\n\n")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(backend.release_stream.wait(), 15)
            await response.write(b"data: last\n\n")
            await response.write_eof()
            return response
        return await echo(request)

    app.router.add_route("*", "/{tail:.*}", handle)
    await backend.server.start_server()
    try:
        yield backend
    finally:
        backend.release_stream.set()
        await backend.server.close()


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    async with run_backend() as running:
        yield running


# ---------------------------------------------------------------- talking to the proxy and its API


def own_origin(proxy: Proxy, host: str = "localhost") -> str:
    return f"http://{host}:{proxy.port}"


async def through(
    client: aiohttp.ClientSession, proxy: Proxy, host: str, path: str, method: str = "GET", *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """Send one request through the proxy to a site; return its status and body."""
    async with client.request(method, f"{proxy.base}{path}", data=body, headers={"Host": host, **(headers or {})}, allow_redirects=False) as resp:
        return resp.status, await resp.read()


async def api(client: aiohttp.ClientSession, proxy: Proxy, path: str, status: int = 200) -> Any:
    """GET an API path on the proxy's own host; assert its status and that it never grants CORS."""
    async with client.get(f"{proxy.base}{path}") as resp:
        text = await resp.text()
        assert resp.status == status, f"GET {path}: {resp.status} {text}"
        assert resp.content_type == "application/json", text
        assert not [h for h in resp.headers if h.lower().startswith("access-control-")], dict(resp.headers)
        return json.loads(text)


async def finished(client: aiohttp.ClientSession, proxy: Proxy, path: str, *, count: int = 1) -> list[dict[str, Any]]:
    """Return the `count` newest captures of `path`, once all of them have finished."""

    async def probe() -> list[dict[str, Any]] | None:
        found = [r for r in (await api(client, proxy, "/api/requests"))["requests"] if r["path"] == path][:count]
        return found if len(found) == count and all(r["state"] != "pending" for r in found) else None

    return await until(probe, f"{count} finished capture(s) of {path}")


async def site_counts(client: aiohttp.ClientSession, proxy: Proxy, wanted: dict[str, int]) -> dict[str, Any]:
    """Return the /api/sites document once each site in `wanted` shows that many requests in the last minute."""

    async def probe() -> dict[str, Any] | None:
        document: dict[str, Any] = await api(client, proxy, "/api/sites")
        counts = {host: site_entry(document, host)["requests_last_minute"] for host in wanted}
        return document if counts == wanted else None

    return await until(probe, f"request counts {wanted} in /api/sites")


async def replay(
    client: aiohttp.ClientSession, proxy: Proxy, request_id: int, edit: dict[str, Any] | None = None, *, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """POST a replay as the dashboard does (JSON, its own Origin unless headers say otherwise)."""
    sent = {"Origin": own_origin(proxy)} if headers is None else headers
    async with client.post(f"{proxy.base}/api/requests/{request_id}/replay", json=edit or {}, headers=sent) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers
        return resp.status, await resp.json()


@dataclass
class EventStream:
    """Reads a text/event-stream response one event at a time."""

    response: aiohttp.ClientResponse
    seen: list[str] = field(default_factory=list)

    async def next(self) -> tuple[str, Any]:
        name, data = "message", list[str]()
        while True:
            raw = await self.response.content.readline()
            if not raw:
                raise AssertionError(f"the event stream ended; events so far: {self.seen}")
            line = raw.decode().rstrip("\r\n")
            if not line:
                if data:
                    self.seen.append(name)
                    return name, json.loads("\n".join(data))
                continue
            if line.startswith(":"):
                continue  # keep-alive comment
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)

    async def until(self, name: str, wanted: Callable[[Any], bool], what: str, timeout: float = DEADLINE) -> Any:
        """Return the data of the first `name` event that `wanted` accepts; fail naming `what` after timeout."""
        last: Any = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event, data = await self.next()
                    if event == name:
                        last = data
                        if wanted(data):
                            return data
        except TimeoutError:
            raise AssertionError(f"no {what} within {timeout} s; events seen: {self.seen}; last {name}: {last}") from None


def site_entry(document: dict[str, Any], host: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [s for s in document["sites"] if s["host"] == host]
    assert len(entries) == 1, document
    return entries[0]


def header(shown: list[list[str]], name: str) -> list[str]:
    return [v for n, v in shown if n.lower() == name.lower()]


# ---------------------------------------------------------------- capture and detail


async def test_proxied_requests_are_listed_with_their_facts_and_bodies(start_proxy: ProxyFactory, client: aiohttp.ClientSession, backend: Backend) -> None:
    """Each body kind is shown as documented: JSON pretty-printed, text as text, binary summarized, gzip unpacked, big ones cut at 64 KiB."""
    proxy = await start_proxy({"app1": backend.address})
    host = "app1.localhost"
    status, answer = await through(client, proxy, host, "/echo?q=1", "POST", body=JSON_BODY, headers={"Content-Type": "application/json", "X-Trace": "t-1"})
    assert status == 200
    for path in ("/json", "/text", "/binary", "/gzip", "/big"):
        assert (await through(client, proxy, host, path))[0] == 200

    [posted] = await finished(client, proxy, "/echo?q=1")
    assert posted["method"] == "POST" and posted["scheme"] == "http"
    assert posted["host"] == host and posted["site"] == host
    assert posted["status"] == 200 and posted["state"] == "done" and posted["stream"] is False
    assert posted["upstream"] == backend.address
    assert posted["request_bytes"] == len(JSON_BODY)
    assert posted["response_bytes"] == len(answer)
    assert posted["replay_of"] is None and posted["duration_ms"] >= 0

    listed = await api(client, proxy, "/api/requests")
    assert listed["capacity"] == CAPACITY
    assert [r["path"] for r in listed["requests"]] == ["/big", "/gzip", "/binary", "/text", "/json", "/echo?q=1"], "newest first"

    detail = await api(client, proxy, f"/api/requests/{posted['id']}")
    assert {k: detail[k] for k in posted} == posted, "the detail starts with the summary"
    assert header(detail["request"]["headers"], "X-Trace") == ["t-1"]
    assert header(detail["request"]["headers"], "Content-Type") == ["application/json"]
    request_body = detail["request"]["body"]
    assert request_body["kind"] == "json"
    assert request_body["text"] == json.dumps(json.loads(JSON_BODY), indent=2)
    assert request_body["size"] == len(JSON_BODY) and request_body["truncated"] is False
    assert detail["response"]["status"] == 200 and detail["response"]["reason"] == "OK"
    assert header(detail["response"]["headers"], "Content-Type") == ["application/json; charset=utf-8"]
    assert detail["response"]["body"]["kind"] == "json"
    assert json.loads(detail["response"]["body"]["text"]) == json.loads(answer)
    assert "\n  " in detail["response"]["body"]["text"], "pretty-printed"
    assert detail["can_replay"] is True and detail["replay_refusal"] is None

    bodies = {}
    for path in ("/json", "/text", "/binary", "/gzip", "/big"):
        [entry] = await finished(client, proxy, path)
        bodies[path] = (await api(client, proxy, f"/api/requests/{entry['id']}"))["response"]["body"]
    assert bodies["/json"]["kind"] == "json" and bodies["/json"]["text"] == json.dumps(json.loads(JSON_BODY), indent=2)
    assert bodies["/text"]["kind"] == "text" and bodies["/text"]["text"] == "plain words from the app\n"
    binary = bodies["/binary"]
    assert binary["kind"] == "binary" and binary["size"] == len(PNG)
    assert str(len(PNG)) in binary["text"] and "image/png" in binary["text"] and "89 50 4e 47" in binary["text"]
    zipped = bodies["/gzip"]
    assert zipped["kind"] == "json" and json.loads(zipped["text"]) == json.loads(GZIPPED)
    assert zipped["size"] == len(gzip.compress(GZIPPED))
    assert "gzip" in zipped["note"]
    big = bodies["/big"]
    assert big["kind"] == "text" and big["size"] == BIG and big["captured"] == BODY_LIMIT and big["truncated"] is True
    assert big["text"] == "x" * BODY_LIMIT
    [big_entry] = await finished(client, proxy, "/big")
    assert big_entry["response_bytes"] == BIG


async def test_unknown_request_id_is_404(start_proxy: ProxyFactory, client: aiohttp.ClientSession, backend: Backend) -> None:
    proxy = await start_proxy({"app1": backend.address})
    missing = await api(client, proxy, "/api/requests/999", status=404)
    assert "999" in missing["detail"]
    await api(client, proxy, "/api/requests/abc", status=404)
    status, refused = await replay(client, proxy, 999)
    assert status == 404, refused
    assert backend.received == []


# ---------------------------------------------------------------- filters and the ring


async def test_filters_by_site_status_class_exact_status_and_failure(start_proxy: ProxyFactory, client: aiohttp.ClientSession, backend: Backend) -> None:
    cut_off = canned(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nonly part")
    async with raw_upstream(cut_off) as broken_port:
        proxy = await start_proxy({"app1": backend.address, "other": backend.address, "down": f"127.0.0.1:{free_port()}", "broken": f"127.0.0.1:{broken_port}"})
        for path in ("/status/200", "/status/201", "/status/302", "/status/404", "/status/418", "/status/503"):
            assert (await through(client, proxy, "app1.localhost", path))[0] == int(path[-3:])
        assert (await through(client, proxy, "other.localhost", "/on-other"))[0] == 200
        assert (await through(client, proxy, "down.localhost", "/on-down"))[0] == 502
        with contextlib.suppress(aiohttp.ClientPayloadError):
            await through(client, proxy, "broken.localhost", "/cut-off")
        await finished(client, proxy, "/cut-off")

    async def paths(query: str) -> list[str]:
        return [r["path"] for r in (await api(client, proxy, f"/api/requests?{query}"))["requests"]]

    assert await paths("site=other.localhost") == ["/on-other"]
    assert await paths("site=app1.localhost") == ["/status/503", "/status/418", "/status/404", "/status/302", "/status/201", "/status/200"]
    assert await paths("status=2xx") == ["/cut-off", "/on-other", "/status/201", "/status/200"]
    assert await paths("status=3xx") == ["/status/302"]
    assert await paths("status=4xx") == ["/status/418", "/status/404"]
    assert await paths("status=5xx") == ["/on-down", "/status/503"]
    assert await paths("status=404") == ["/status/404"]
    assert await paths("status=502") == ["/on-down"]
    assert await paths("status=failed") == ["/cut-off", "/on-down", "/status/503"]
    assert await paths("site=app1.localhost&status=5xx") == ["/status/503"]
    assert await paths("limit=2") == ["/cut-off", "/on-down"]
    [cut] = (await api(client, proxy, "/api/requests?site=broken.localhost"))["requests"]
    assert cut["state"] == "aborted" and "broke off" in cut["note"]

    for bad in ("status=6xx", "status=ok", "status=40", "limit=many"):
        problem = await api(client, proxy, f"/api/requests?{bad}", status=400)
        assert problem["error"] and problem["detail"], bad


async def test_ring_keeps_the_newest_500(start_proxy: ProxyFactory, client: aiohttp.ClientSession, backend: Backend) -> None:
    proxy = await start_proxy({"app1": backend.address})
    total = CAPACITY + 20

    async def one(n: int) -> None:
        assert (await through(client, proxy, "app1.localhost", f"/n/{n}"))[0] == 200

    for start in range(0, total, 65):
        await asyncio.gather(*(one(n) for n in range(start, min(start + 65, total))))
    assert len(backend.received) == total
    listed = (await api(client, proxy, "/api/requests"))["requests"]
    assert len(listed) == CAPACITY
    assert [r["id"] for r in listed] == list(range(total, total - CAPACITY, -1))
    for gone in (1, total - CAPACITY):
        await api(client, proxy, f"/api/requests/{gone}", status=404)
        status, _ = await replay(client, proxy, gone)
        assert status == 404
    oldest_kept = await api(client, proxy, f"/api/requests/{total - CAPACITY + 1}")
    assert oldest_kept["path"].startswith("/n/")
    assert len(backend.received) == total, "a replay of a forgotten request reached the app"


# ---------------------------------------------------------------- secrets and curl


async def send_secrets(client: aiohttp.ClientSession, proxy: Proxy, path: str = "/cookie", body: bytes | None = None) -> dict[str, Any]:
    """Send a request carrying Authorization and Cookie to a path answering Set-Cookie; return its capture."""
    headers = {"Authorization": TOKEN, "Proxy-Authorization": PROXY_AUTH, "Cookie": COOKIE, "X-Custom": "kept as is", "Content-Type": "text/plain"}
    await through(client, proxy, f"app1.localhost:{proxy.port}", path, "POST", body=body or b"form=1", headers=headers)
    [entry] = await finished(client, proxy, path)
    return entry


async def test_secret_headers_are_redacted_by_default_and_shown_on_request(start_proxy: ProxyFactory, client: aiohttp.ClientSession, backend: Backend) -> None:
    proxy = await start_proxy({"app1": backend.address})
    entry = await send_secrets(client, proxy)
    url = f"{proxy.base}/api/requests/{entry['id']}"

    async with client.get(url) as resp:
        text = await resp.text()
    for secret in SECRETS:
        assert secret not in text, f"{secret} shown while redacting"
    hidden = json.loads(text)
    assert hidden["redacted"] is True
    assert header(hidden["request"]["headers"], "Authorization") == ["Bearer [redacted]"]
    assert header(hidden["request"]["headers"], "Proxy-Authorization") == ["Basic [redacted]"]
    assert header(hidden["request"]["headers"], "Cookie") == ["a=[redacted]; b=[redacted]"]
    assert header(hidden["request"]["headers"], "X-Custom") == ["kept as is"]
    assert header(hidden["response"]["headers"], "Set-Cookie") == ["sid=[redacted]; Path=/"]
    assert "Bearer [redacted]" in hidden["curl"] and hidden["curl_note"]

    shown = await api(client, proxy, f"/api/requests/{entry['id']}?secrets=show")
    assert shown["redacted"] is False
    assert header(shown["request"]["headers"], "Authorization") == [TOKEN]
    assert header(shown["request"]["headers"], "Cookie") == [COOKIE]
    assert header(shown["request"]["headers"], "Proxy-Authorization") == [PROXY_AUTH]
    assert header(shown["response"]["headers"], "Set-Cookie") == [SESSION]
    assert TOKEN in shown["curl"] and COOKIE in shown["curl"] and "[redacted]" not in shown["curl"]


async def test_show_secrets_flag_reveals_by_default(start_proxy: ProxyFactory, client: aiohttp.ClientSession, backend: Backend) -> None:
    proxy = await start_proxy({"app1": backend.address}, "--show-secrets")
    entry = await send_secrets(client, proxy)
    shown = await api(client, proxy, f"/api/requests/{entry['id']}")
    assert shown["redacted"] is False
    assert header(shown["request"]["headers"], "Authorization") == [TOKEN]
    assert header(shown["request"]["headers"], "Cookie") == [COOKIE]
    assert header(shown["response"]["headers"], "Set-Cookie") == [SESSION]
    assert TOKEN in shown["curl"]
    hidden = await api(client, proxy, f"/api/requests/{entry['id']}?secrets=hide")
    assert header(hidden["request"]["headers"], "Authorization") == ["Bearer [redacted]"]


async def run_curl(command: str) -> None:
    """Run an API-made curl command line as a user would paste it (no proxy from the environment)."""
    require_tool("curl", "curl")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    process = await asyncio.create_subprocess_exec("sh", "-c", command + " --silent --show-error --output /dev/null", env=env, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(10):
        _, stderr = await process.communicate()
    assert process.returncode == 0, f"{command}\nexited {process.returncode}: {stderr.decode()}"


async def test_curl_command_reproduces_the_request(start_proxy: ProxyFactory, client: aiohttp.ClientSession, backend: Backend) -> None:
    """The curl line (secrets shown) sent from a shell reaches the app with the same method, path, body and headers."""
    proxy = await start_proxy({"app1": backend.address})
    body = b'it\'s "quoted" & $HOME `x`\nline two'
    entry = await send_secrets(client, proxy, "/form?a=1&b='two'", body)
    original = backend.last()
    detail = await api(client, proxy, f"/api/requests/{entry['id']}?secrets=show")
    assert detail["curl_note"] is None
    await run_curl(detail["curl"])
    assert len(backend.received) == 2, "curl did not reach the app through the proxy"
    again = backend.last()
    assert (again.method, again.target, again.body) == (original.method, original.target, original.body) == ("POST", "/form?a=1&b='two'", body)
    for name in ("Authorization", "Cookie", "X-Custom", "Content-Type", "User-Agent"):
        assert again.values(name) == original.values(name), name
    assert again.values("Authorization") == [TOKEN]
    [via_curl] = (await api(client, proxy, "/api/requests?limit=1"))["requests"]
    assert via_curl["host"] == f"app1.localhost:{proxy.port}" and via_curl["replay_of"] is None


# ---------------------------------------------------------------- replay


async def test_replay_as_captured_sends_the_original_again(start_proxy: ProxyFactory, client: aiohttp.ClientSession, backend: Backend) -> None:
    proxy = await start_proxy({"app1": backend.address})
    entry = await send_secrets(client, proxy, "/orig?q=1", b"original body")
    original = backend.last()
    status, answer = await replay(client, proxy, entry["id"])
    assert status == 200, answer
    assert answer["replay_of"] == entry["id"]
    replayed = answer["request"]
    assert replayed["replay_of"] == entry["id"] and replayed["id"] > entry["id"]
    assert replayed["status"] == 200 and replayed["path"] == "/orig?q=1" and replayed["method"] == "POST"

    assert len(backend.received) == 2
    again = backend.last()
    assert (again.method, again.target, again.body) == ("POST", "/orig?q=1", b"original body")
    assert again.values("Authorization") == [TOKEN], "replay sends the real secret even while views redact it"
    assert again.values("Cookie") == [COOKIE]
    for name in ("X-Custom", "Content-Type", "User-Agent"):
        assert again.values(name) == original.values(name), name
    assert not again.values("X-Localhost-Proxy-Replay"), "the replay marker leaked to the app"

    listed = await api(client, proxy, "/api/requests")
    assert [(r["id"], r["replay_of"]) for r in listed["requests"]] == [(replayed["id"], entry["id"]), (entry["id"], None)]


async def test_edit_and_replay_sends_the_edit_and_restores_redacted_values(start_proxy: ProxyFactory, client: aiohttp.ClientSession, backend: Backend) -> None:
    proxy = await start_proxy({"app1": backend.address})
    entry = await send_secrets(client, proxy, "/orig", b"original body")
    shown = await api(client, proxy, f"/api/requests/{entry['id']}")
    edited_headers = [[n, v] for n, v in shown["request"]["headers"] if n.lower() not in ("x-custom", "content-type")]
    assert ["Authorization", "Bearer [redacted]"] in edited_headers
    edited_headers += [["X-Custom", "edited"], ["Content-Type", "application/json"], ["X-Added", "new"]]
    edit = {"method": "put", "path": "/edited/path?x=2", "headers": edited_headers, "body": '{"edited": true}'}
    status, answer = await replay(client, proxy, entry["id"], edit)
    assert status == 200, answer
    assert answer["request"]["replay_of"] == entry["id"]
    assert answer["request"]["method"] == "PUT" and answer["request"]["path"] == "/edited/path?x=2"

    again = backend.last()
    assert (again.method, again.target, again.body) == ("PUT", "/edited/path?x=2", b'{"edited": true}')
    assert again.values("X-Custom") == ["edited"]
    assert again.values("X-Added") == ["new"]
    assert again.values("Content-Type") == ["application/json"]
    assert again.values("Content-Length") == [str(len(b'{"edited": true}'))]
    assert again.values("Authorization") == [TOKEN], "a header still showing [redacted] is sent with its original value"
    assert again.values("Cookie") == [COOKIE]

    status, answer = await replay(client, proxy, entry["id"], {"headers": [["Authorization", "Bearer typed-by-hand"]]})
    assert status == 200, answer
    assert backend.last().values("Authorization") == ["Bearer typed-by-hand"]
    assert not backend.last().values("Cookie"), "a header left out of the edit is not sent"

    before = len(backend.received)
    for bad in (
        {"method": "GE T"},
        {"path": "no-slash"},
        {"path": "/a b"},
        {"headers": "X: y"},
        {"headers": [["Bad Name", "v"]]},
        {"body": 5},
        {"colour": "red"},
    ):
        status, problem = await replay(client, proxy, entry["id"], bad)
        assert status == 400, (bad, problem)
        assert problem["detail"], bad
    assert len(backend.received) == before, "a bad edit reached the app"


async def test_edit_restores_each_repeated_redacted_header_to_its_own_value(start_proxy: ProxyFactory, client: aiohttp.ClientSession, backend: Backend) -> None:
    proxy = await start_proxy({"app1": backend.address})
    async with client.get(f"{proxy.base}/two-cookies", headers=[("Host", "app1.localhost"), ("Cookie", "a=first"), ("Cookie", "b=second")]) as resp:
        assert resp.status == 200
    assert backend.last().values("Cookie") == ["a=first", "b=second"]
    [entry] = await finished(client, proxy, "/two-cookies")
    shown = await api(client, proxy, f"/api/requests/{entry['id']}")
    assert header(shown["request"]["headers"], "Cookie") == ["a=[redacted]", "b=[redacted]"]
    status, answer = await replay(client, proxy, entry["id"], {"headers": shown["request"]["headers"]})
    assert status == 200, answer
    assert backend.last().values("Cookie") == ["a=first", "b=second"]


async def test_oversized_chunked_edit_is_413_not_an_internal_error(start_proxy: ProxyFactory, client: aiohttp.ClientSession, backend: Backend) -> None:
    proxy = await start_proxy({"app1": backend.address})
    await through(client, proxy, "app1.localhost", "/small")
    [entry] = await finished(client, proxy, "/small")
    edit = json.dumps({"body": "x" * (2 * 1024 * 1024)}).encode()

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the size is known only while reading
        yield edit

    url = f"{proxy.base}/api/requests/{entry['id']}/replay"
    async with client.post(url, data=chunked(), headers={"Origin": own_origin(proxy), "Content-Type": "application/json"}) as resp:
        assert resp.status == 413, await resp.text()
    assert "Traceback" not in proxy.stderr()
    assert len(backend.received) == 1


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "proxy.localhost", "[::1]"])
async def test_replay_is_allowed_from_each_own_origin(start_proxy: ProxyFactory, client: aiohttp.ClientSession, backend: Backend, host: str) -> None:
    proxy = await start_proxy({"app1": backend.address})
    await through(client, proxy, "app1.localhost", "/from-origin")
    [entry] = await finished(client, proxy, "/from-origin")
    status, answer = await replay(client, proxy, entry["id"], headers={"Origin": own_origin(proxy, host)})
    assert status == 200, answer
    assert [r.target for r in backend.received] == ["/from-origin", "/from-origin"]


async def test_the_dashboard_answers_over_https_and_replays_from_its_https_origin(
    start_proxy: ProxyFactory, client: aiohttp.ClientSession, backend: Backend
) -> None:
    proxy = await start_proxy({"app1": backend.address}, https=True)
    trusting = ssl.create_default_context(cafile=str(proxy.certs / "ca.pem"))
    base = f"https://127.0.0.1:{proxy.https_port}"
    async with client.get(f"{base}/app-path", headers={"Host": "app1.localhost"}, server_hostname="app1.localhost", ssl=trusting) as resp:
        assert resp.status == 200
    async with client.get(f"{base}/api/requests", headers={"Host": "proxy.localhost"}, server_hostname="proxy.localhost", ssl=trusting) as resp:
        assert resp.status == 200
        [entry] = [r for r in (await resp.json())["requests"] if r["path"] == "/app-path"]
    assert entry["scheme"] == "https"

    async def replay_over_https(origin: str) -> int:
        async with client.post(
            f"{base}/api/requests/{entry['id']}/replay", json={}, headers={"Host": "localhost", "Origin": origin}, server_hostname="localhost", ssl=trusting
        ) as resp:
            return resp.status

    # The scheme is part of the origin: the HTTPS port named with http:// is someone else's.
    assert await replay_over_https(f"http://localhost:{proxy.https_port}") == 403
    assert len(backend.received) == 1
    assert await replay_over_https(f"https://localhost:{proxy.https_port}") == 200
    assert [r.target for r in backend.received] == ["/app-path", "/app-path"]
    assert backend.received[1].values("X-Forwarded-Proto") == ["https"], "the replay took the HTTPS listener, as the original did"


async def test_replay_without_origin_needs_same_origin_fetch_metadata(start_proxy: ProxyFactory, client: aiohttp.ClientSession, backend: Backend) -> None:
    proxy = await start_proxy({"app1": backend.address})
    await through(client, proxy, "app1.localhost", "/same-origin")
    [entry] = await finished(client, proxy, "/same-origin")
    status, answer = await replay(client, proxy, entry["id"], headers={"Sec-Fetch-Site": "same-origin"})
    assert status == 200, answer
    assert len(backend.received) == 2


async def test_replay_refuses_anything_but_the_dashboards_own_json_post(start_proxy: ProxyFactory, client: aiohttp.ClientSession, backend: Backend) -> None:
    """Cross-site pages, other sites' origins, simple requests and GETs all get 403, and the app hears nothing."""
    proxy = await start_proxy({"app1": backend.address})
    await through(client, proxy, "app1.localhost", "/target", "POST", body=b"x=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    [entry] = await finished(client, proxy, "/target")
    assert len(backend.received) == 1
    url = f"{proxy.base}/api/requests/{entry['id']}/replay"
    json_type = {"Content-Type": "application/json"}
    refused: list[tuple[str, str, dict[str, str]]] = [
        ("no Origin, no Sec-Fetch-Site", "POST", json_type),
        ("foreign origin", "POST", {**json_type, "Origin": f"http://evil.localhost:{proxy.port}"}),
        ("a configured site's origin", "POST", {**json_type, "Origin": f"http://app1.localhost:{proxy.port}"}),
        ("own host, other port", "POST", {**json_type, "Origin": "http://localhost:1"}),
        ("opaque origin", "POST", {**json_type, "Origin": "null"}),
        ("cross-site fetch", "POST", {**json_type, "Sec-Fetch-Site": "cross-site"}),
        ("same-site fetch", "POST", {**json_type, "Sec-Fetch-Site": "same-site"}),
        ("foreign origin claiming same-origin", "POST", {**json_type, "Origin": "http://evil.com", "Sec-Fetch-Site": "same-origin"}),
        ("text/plain simple request", "POST", {"Content-Type": "text/plain", "Origin": own_origin(proxy)}),
        ("form simple request", "POST", {"Content-Type": "application/x-www-form-urlencoded", "Origin": own_origin(proxy)}),
        ("no content type", "POST", {"Origin": own_origin(proxy)}),
        ("GET", "GET", {**json_type, "Origin": own_origin(proxy)}),
        ("PUT", "PUT", {**json_type, "Origin": own_origin(proxy)}),
    ]
    for what, method, headers in refused:
        async with client.request(method, url, data=b"{}", headers=headers, skip_auto_headers=["Content-Type"]) as resp:
            text = await resp.text()
            assert resp.status == 403, f"{what}: {resp.status} {text}"
            assert not [h for h in resp.headers if h.lower().startswith("access-control-")], what
            assert json.loads(text)["detail"], what
        assert len(backend.received) == 1, f"{what}: the refused replay reached the app"

    preflight = {
        "Origin": f"http://evil.localhost:{proxy.port}",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
        "Access-Control-Request-Private-Network": "true",
    }
    for path in (f"/api/requests/{entry['id']}/replay", "/api/requests", "/api/sites"):
        async with client.options(f"{proxy.base}{path}", headers=preflight) as resp:
            granted = [h for h in resp.headers if h.lower().startswith("access-control-")]
            assert not granted, f"OPTIONS {path} answered {granted}"
    for path in ("/api/sites", "/api/requests", f"/api/requests/{entry['id']}"):
        async with client.get(f"{proxy.base}{path}", headers={"Origin": "http://evil.localhost"}) as resp:
            assert resp.status == 200
            assert "Access-Control-Allow-Origin" not in resp.headers, path
    assert len(backend.received) == 1


async def test_api_on_a_rebinding_host_is_a_bare_404(start_proxy: ProxyFactory, client: aiohttp.ClientSession, backend: Backend) -> None:
    """A page at evil.com whose name now resolves to 127.0.0.1 sees nothing of the API."""
    proxy = await start_proxy({"app1": backend.address})
    await through(client, proxy, "app1.localhost", "/secret-path")
    [entry] = await finished(client, proxy, "/secret-path")
    for method, path in (
        ("GET", "/api/requests"),
        ("GET", "/api/sites"),
        ("GET", f"/api/requests/{entry['id']}"),
        ("POST", f"/api/requests/{entry['id']}/replay"),
    ):
        headers = {"Host": f"evil.com:{proxy.port}", "Origin": f"http://evil.com:{proxy.port}", "Content-Type": "application/json"}
        async with client.request(method, f"{proxy.base}{path}", data=b"{}", headers=headers) as resp:
            assert resp.status == 404, path
            assert await resp.text() == "Not Found\n", path
    assert len(backend.received) == 1


async def test_truncated_body_cannot_be_replayed_as_captured_but_can_with_a_new_body(
    start_proxy: ProxyFactory, client: aiohttp.ClientSession, backend: Backend
) -> None:
    proxy = await start_proxy({"app1": backend.address})
    upload = bytes(range(256)) * (BIG // 256 + 1)
    await through(client, proxy, "app1.localhost", "/upload", "POST", body=upload, headers={"Content-Type": "application/octet-stream"})
    assert backend.last().body == upload, "the upload reached the app whole"
    [entry] = await finished(client, proxy, "/upload")
    assert entry["request_bytes"] == len(upload)
    detail = await api(client, proxy, f"/api/requests/{entry['id']}")
    body = detail["request"]["body"]
    assert body["size"] == len(upload) and body["captured"] == BODY_LIMIT and body["truncated"] is True and body["kind"] == "binary"
    assert detail["can_replay"] is False and "64 KiB" in detail["replay_refusal"]
    assert detail["curl_note"] and "--data-binary" not in detail["curl"]

    status, problem = await replay(client, proxy, entry["id"])
    assert status == 409, problem
    assert "64 KiB" in problem["detail"] and "new body" in problem["detail"]
    assert len(backend.received) == 1

    status, answer = await replay(client, proxy, entry["id"], {"body": "small instead"})
    assert status == 200, answer
    again = backend.last()
    assert (again.method, again.target, again.body) == ("POST", "/upload", b"small instead")
    assert again.values("Content-Type") == ["application/octet-stream"]
    assert answer["request"]["request_bytes"] == len(b"small instead")


async def test_replay_after_the_app_comes_up_sends_the_body_that_got_a_502(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    port = free_port()
    proxy = await start_proxy({"app1": f"127.0.0.1:{port}"})
    sent = b'{"order": 7}'
    status, _ = await through(
        client, proxy, "app1.localhost", "/orders?draft=1", "POST", body=sent, headers={"Content-Type": "application/json", "X-Custom": "early"}
    )
    assert status == 502
    [entry] = await finished(client, proxy, "/orders?draft=1")
    detail = await api(client, proxy, f"/api/requests/{entry['id']}")
    assert detail["status"] == 502
    assert detail["request"]["body"]["size"] == len(sent) and detail["request"]["body"]["kind"] == "json"
    assert detail["can_replay"] is True, detail["replay_refusal"]

    async with run_backend(port) as late:
        status, answer = await replay(client, proxy, entry["id"])
        assert status == 200, answer
        assert answer["request"]["status"] == 200 and answer["request"]["replay_of"] == entry["id"]
        [received] = late.received
    assert (received.method, received.target, received.body) == ("POST", "/orders?draft=1", sent)
    assert received.values("Content-Type") == ["application/json"]
    assert received.values("X-Custom") == ["early"]


# ---------------------------------------------------------------- inspect: false


async def test_uninspected_site_is_not_captured_but_is_counted(start_proxy: ProxyFactory, client: aiohttp.ClientSession, backend: Backend) -> None:
    proxy = await start_proxy({"app1": backend.address, "quiet": {"upstream": backend.address, "inspect": False}})
    for n in range(3):
        assert (await through(client, proxy, "quiet.localhost", f"/hidden/{n}", "POST", body=b"private"))[0] == 200
    assert (await through(client, proxy, "quiet.localhost", "/status/503"))[0] == 503
    assert (await through(client, proxy, "app1.localhost", "/shown"))[0] == 200
    await finished(client, proxy, "/shown")
    listed = (await api(client, proxy, "/api/requests"))["requests"]
    assert [r["path"] for r in listed] == ["/shown"]
    assert (await api(client, proxy, "/api/requests?site=quiet.localhost"))["requests"] == []

    document = await site_counts(client, proxy, {"quiet.localhost": 4, "app1.localhost": 1})
    quiet = site_entry(document, "quiet.localhost")
    assert quiet["inspect"] is False
    assert (quiet["requests_last_minute"], quiet["errors_last_minute"]) == (4, 1)
    shown = site_entry(document, "app1.localhost")
    assert shown["inspect"] is True and shown["requests_last_minute"] == 1


async def test_sites_document_check_probes_upstreams(start_proxy: ProxyFactory, client: aiohttp.ClientSession, backend: Backend) -> None:
    down_port = free_port()
    proxy = await start_proxy({"app1": backend.address, "down": f"127.0.0.1:{down_port}"})
    document = await api(client, proxy, "/api/sites")
    assert document["config"] == str(proxy.config)
    assert document["config_error"] is None and document["config_errors"] == []
    app1 = site_entry(document, "app1.localhost")
    assert app1["state"] == "not tried"
    assert app1["url"] == f"http://app1.localhost:{proxy.port}"
    assert re.fullmatch(re.escape(str(proxy.config)) + r":\d+:\d+", app1["config"])
    checked = await api(client, proxy, "/api/sites?check=1")
    assert site_entry(checked, "app1.localhost")["state"] == "up"
    assert site_entry(checked, "down.localhost")["state"] == "down"
    assert backend.received == [], "a probe is a connection, not a request"


# ---------------------------------------------------------------- live events


async def test_event_stream_reports_requests_config_errors_and_down_apps(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    async with run_backend() as app:
        sites = {"app1": app.address}
        proxy = await start_proxy(sites)
        async with client.get(f"{proxy.base}/api/events") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert "Access-Control-Allow-Origin" not in resp.headers
            events = EventStream(resp)
            async with asyncio.timeout(DEADLINE):
                name, first = await events.next()
            assert name == "sites"
            assert site_entry(first, "app1.localhost")["state"] == "not tried" and first["config_error"] is None

            # The probe that starts with the subscription finds app1 up. The next one is
            # PROBE_INTERVAL (2 s) away, so a sites event sooner than IMMEDIATE after a save
            # comes from the reload itself, not from a probe noticing the change.
            await events.until("sites", lambda d: site_entry(d, "app1.localhost")["state"] == "up", "app1 up")
            write_sites(proxy.config, "sites: [\n")
            location = re.compile(re.escape(str(proxy.config)) + r":\d+:\d+")
            broken = await events.until("sites", lambda d: bool(d["config_error"]), "sites event with the config error", timeout=IMMEDIATE)
            assert location.search(broken["config_error"]), broken["config_error"]
            assert broken["config_errors"] and location.search(broken["config_errors"][0])
            assert site_entry(broken, "app1.localhost"), "the last good config keeps serving"

            write_sites(proxy.config, sites)
            fixed = await events.until("sites", lambda d: d["config_error"] is None, "sites event after the fix", timeout=IMMEDIATE)
            assert fixed["config_errors"] == []
            assert site_entry(fixed, "app1.localhost")["state"] == "up"

            await through(client, proxy, "app1.localhost", "/seen-live?x=1")
            seen = await events.until("request", lambda r: r["path"] == "/seen-live?x=1", "request event")
            assert seen["status"] == 200 and seen["state"] == "done" and seen["site"] == "app1.localhost"

            await app.server.close()
            down = await events.until("sites", lambda d: site_entry(d, "app1.localhost")["state"] == "down", "app1 down", timeout=6.0)
            assert down["config_error"] is None


# ---------------------------------------------------------------- streams


async def test_event_stream_reaches_the_client_while_captured_as_pending(start_proxy: ProxyFactory, client: aiohttp.ClientSession, backend: Backend) -> None:
    proxy = await start_proxy({"app1": backend.address})
    async with client.get(f"{proxy.base}/stream", headers={"Host": "app1.localhost", "Accept": "text/event-stream"}) as resp:
        assert resp.status == 200
        async with asyncio.timeout(2.0):
            first = await resp.content.readuntil(b"\n\n")
        assert first == b"data: first\n\n"
        assert not resp.content.at_eof()

        [entry] = (await api(client, proxy, "/api/requests"))["requests"]
        assert entry["path"] == "/stream" and entry["state"] == "pending" and entry["stream"] is True
        assert entry["status"] == 200 and entry["duration_ms"] is None

        async def first_event_captured() -> bool:
            pending = await api(client, proxy, f"/api/requests/{entry['id']}")
            return pending["state"] == "pending" and "data: first" in pending["response"]["body"]["text"]

        await until(first_event_captured, "the first event in the pending capture's response body")

        backend.release_stream.set()
        async with asyncio.timeout(TIMEOUT):
            rest = await resp.content.read()
        assert rest == b"data: last\n\n"
    [done] = await finished(client, proxy, "/stream")
    assert done["state"] == "done" and done["response_bytes"] == len(b"data: first\n\ndata: last\n\n")


# ---------------------------------------------------------------- dev servers refusing the Host


def refusing(host: str) -> bytes:
    body = VITE_REFUSAL.format(host=host).encode()
    head = f"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body


def log_lines(proxy: Proxy, needle: str) -> int:
    """Return how many lines of the proxy's stderr hold `needle`."""
    return sum(needle in line for line in proxy.stderr().splitlines())


async def test_vite_host_refusal_gets_a_hint_in_capture_and_log_once(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    async with raw_upstream(canned(refusing("app1.localhost"))) as port, raw_upstream(canned(refusing("quiet.localhost"))) as quiet_port:
        proxy = await start_proxy({"app1": f"127.0.0.1:{port}", "quiet": {"upstream": f"127.0.0.1:{quiet_port}", "inspect": False}})
        for _ in range(2):
            assert (await through(client, proxy, "app1.localhost", "/"))[0] == 403
            assert (await through(client, proxy, "quiet.localhost", "/"))[0] == 403
        captures = await finished(client, proxy, "/", count=2)
        # The hint is logged just before a request is counted: once counted, its log line is written.
        await site_counts(client, proxy, {"app1.localhost": 2, "quiet.localhost": 2})
    for capture in captures:
        assert capture["site"] == "app1.localhost"
        hint = capture["hint"]
        assert "Vite" in hint and "allowedHosts" in hint and "preserve_host: false" in hint, hint
    detail = await api(client, proxy, f"/api/requests/{captures[0]['id']}")
    assert detail["hint"] == captures[0]["hint"]
    assert "Blocked request" in detail["response"]["body"]["text"]

    assert log_lines(proxy, "Vite refused the Host app1.localhost") == 1, proxy.stderr()
    assert log_lines(proxy, "Vite refused the Host quiet.localhost") == 1, proxy.stderr()
    [logged] = [line for line in proxy.stderr().splitlines() if "refused the Host app1.localhost" in line]
    assert "allowedHosts" in logged and "preserve_host: false" in logged
