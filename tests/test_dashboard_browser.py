"""The dashboard in a real browser: Debian's Chromium driven by playwright against the proxy process
and real loopback upstreams. Checks what only a browser sees: the page changing by itself (site
states, new requests, the config banner), and the inspector's buttons reaching the backend.

Each test leaves screenshots in its own tmp_path; the last one is taken at teardown, pass or fail.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, async_playwright, expect

from tests.support.browser import CHROMIUM_FLAGS
from tests.support.proxies import Proxy, ProxyFactory, write_sites
from tests.support.rawhttp import AppRequest
from tests.support.system import free_port, require_tool

WAIT_MS = 8_000  # any one wait in the browser; site states are probed every 2 s
ROW = 'tr[data-host="{}"]'


@dataclass
class Recorder:
    """A running backend that keeps every request it receives, in order."""

    server: TestServer
    received: list[AppRequest] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port


@contextlib.asynccontextmanager
async def recording_upstream(port: int | None = None) -> AsyncIterator[Recorder]:
    """Run an app on 127.0.0.1 that records each request and answers with JSON naming it.

    The answer never repeats request headers, so a secret seen in the page can only come from the
    inspector's view of the request, not from a response body.
    """
    received: list[AppRequest] = []

    async def handle(request: web.Request) -> web.Response:
        seen = await AppRequest.read(request)
        received.append(seen)
        return web.json_response({"app": "recorder", "method": seen.method, "path": seen.target, "body_bytes": len(seen.body)})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1", port=port)
    async with server:
        yield Recorder(server, received)


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    async with recording_upstream() as upstream:
        yield upstream


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    """A fresh headless Chromium page; uncaught script errors on it fail the test at teardown."""
    chromium = require_tool("chromium", "chromium")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS[1:])
        try:
            tab = await browser.new_page(viewport={"width": 1280, "height": 900})
            tab.set_default_timeout(WAIT_MS)
            script_errors: list[str] = []
            tab.on("pageerror", lambda error: script_errors.append(str(error)))
            yield tab
            with contextlib.suppress(PlaywrightError):
                await tab.screenshot(path=str(tmp_path / "at-teardown.png"), full_page=True)
            assert not script_errors, f"the dashboard threw: {script_errors}"
        finally:
            await browser.close()


async def open_dashboard(page: Page, proxy: Proxy) -> None:
    """Load the dashboard, wait until its event stream is open, and mark the window to catch reloads."""
    await page.goto(f"http://localhost:{proxy.port}/")
    await expect(page.locator("#live")).to_have_class(re.compile(r"\bon\b"), timeout=WAIT_MS)
    await page.evaluate("window.__marker = 1")


async def assert_not_reloaded(page: Page) -> None:
    assert await page.evaluate("window.__marker") == 1, "the page was reloaded (or navigated away)"


async def through_proxy(
    client: aiohttp.ClientSession,
    proxy: Proxy,
    method: str,
    target: str,
    *,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    json: object = None,
) -> bytes:
    """Send one request to app1 through the proxy, with the Host a browser would send, and return its body."""
    sent = {"Host": f"app1.localhost:{proxy.port}", **(headers or {})}
    async with client.request(method, proxy.base + target, headers=sent, data=data, json=json) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


async def request_id(client: aiohttp.ClientSession, proxy: Proxy, path: str) -> int:
    """Return the inspector's id for the newest request to path, from the JSON API."""
    async with client.get(f"{proxy.base}/api/requests", headers={"Host": "localhost"}) as resp:
        listed = (await resp.json())["requests"]
    ids = [r["id"] for r in listed if r["path"] == path]
    assert ids, f"{path} is not in /api/requests: {listed}"
    return int(ids[0])


async def open_request(page: Page, number: int) -> None:
    """Click request #number in the inspector table and wait for its detail."""
    await page.locator(f'#requests tbody tr[data-id="{number}"]').click()
    await expect(page.locator("#request-detail h2")).to_contain_text(f"#{number} ", timeout=WAIT_MS)


async def test_dashboard_lists_sites_with_links_and_goes_live(start_proxy: ProxyFactory, recorder: Recorder, page: Page, tmp_path: Path) -> None:
    static = tmp_path / "public"
    static.mkdir()
    (static / "index.html").write_text("static")
    proxy = await start_proxy({"app1": f"127.0.0.1:{recorder.port}", "docs": {"root": str(static)}, "*.preview.localhost": free_port()})
    await open_dashboard(page, proxy)

    await expect(page.locator("#live")).to_have_text("live")
    assert await page.locator("#sites tbody tr").count() == 3
    for host in ("app1.localhost", "docs.localhost"):
        link = page.locator(f"{ROW.format(host)} a")
        assert await link.text_content() == host
        href = await link.get_attribute("href")
        assert href is not None and href.rstrip("/") == f"http://{host}:{proxy.port}", href
    wildcard = page.locator(ROW.format("*.preview.localhost"))
    await expect(wildcard).to_contain_text("*.preview.localhost")
    assert await wildcard.locator("a").count() == 0, "a wildcard has no single address to link to"
    await expect(page.locator(ROW.format("docs.localhost") + " .state")).to_have_text("static")
    await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

    await page.locator(f"{ROW.format('app1.localhost')} a").click()
    await page.wait_for_url(f"http://app1.localhost:{proxy.port}/")
    assert "recorder" in await page.content()
    assert (recorder.received[0].method, recorder.received[0].target) == ("GET", "/"), "the site's link did not lead to its app"


async def test_a_site_going_down_turns_red_without_a_reload(start_proxy: ProxyFactory, page: Page, tmp_path: Path) -> None:
    async with recording_upstream() as upstream:
        proxy = await start_proxy({"app1": f"127.0.0.1:{upstream.port}"})
        await open_dashboard(page, proxy)
        state = page.locator(ROW.format("app1.localhost") + " .state")
        await page.locator("#check-now").click()
        await expect(state).to_have_text("up", timeout=WAIT_MS)
        await expect(state).to_have_class(re.compile(r"\bup\b"))
        await page.screenshot(path=str(tmp_path / "up.png"))

    await expect(state).to_have_text("down", timeout=WAIT_MS)
    await expect(state).to_have_class(re.compile(r"\bdown\b"))
    assert "connection refused" in (await state.get_attribute("title") or ""), "the state's tooltip should say why"
    await assert_not_reloaded(page)
    await page.screenshot(path=str(tmp_path / "down.png"))


async def test_a_proxied_request_shows_up_live_with_its_headers_and_response(
    start_proxy: ProxyFactory, recorder: Recorder, client: aiohttp.ClientSession, page: Page, tmp_path: Path
) -> None:
    proxy = await start_proxy({"app1": f"127.0.0.1:{recorder.port}"})
    await open_dashboard(page, proxy)
    await expect(page.locator("#requests-empty")).to_be_visible()

    await through_proxy(client, proxy, "GET", "/hello?x=1", headers={"X-Trace": "trace-4711"})
    number = await request_id(client, proxy, "/hello?x=1")
    row = page.locator(f'#requests tbody tr[data-id="{number}"]')
    await expect(row).to_contain_text("/hello?x=1", timeout=WAIT_MS)
    await expect(row).to_contain_text("200")
    await expect(page.locator("#requests-empty")).to_be_hidden()
    await assert_not_reloaded(page)

    await open_request(page, number)
    request_headers = page.locator("#request-detail table.headers").nth(0)
    await expect(request_headers).to_contain_text("X-Trace")
    await expect(request_headers).to_contain_text("trace-4711")
    await expect(request_headers).to_contain_text(f"app1.localhost:{proxy.port}")
    response_body = page.locator("#request-detail div.body").nth(1)
    await expect(response_body).to_contain_text('"path": "/hello?x=1"')
    await expect(response_body).to_contain_text('"app": "recorder"')
    await expect(page.locator("#curl")).to_contain_text(f"http://app1.localhost:{proxy.port}/hello?x=1")
    await page.screenshot(path=str(tmp_path / "detail.png"), full_page=True)


async def test_replay_sends_the_same_request_to_the_backend_again(
    start_proxy: ProxyFactory, recorder: Recorder, client: aiohttp.ClientSession, page: Page, tmp_path: Path
) -> None:
    proxy = await start_proxy({"app1": f"127.0.0.1:{recorder.port}"})
    await open_dashboard(page, proxy)
    await through_proxy(client, proxy, "POST", "/orders?draft=1", json={"item": "tea", "qty": 2}, headers={"X-Trace": "trace-replay"})
    number = await request_id(client, proxy, "/orders?draft=1")
    await open_request(page, number)

    await page.locator("#replay").click()
    outcome = page.locator("#replay-outcome")
    await expect(outcome).to_contain_text("200", timeout=WAIT_MS)
    await page.screenshot(path=str(tmp_path / "replayed.png"), full_page=True)

    assert len(recorder.received) == 2, recorder.received
    first, second = recorder.received
    assert (second.method, second.target, second.body) == (first.method, first.target, first.body) == ("POST", "/orders?draft=1", b'{"item": "tea", "qty": 2}')
    # The replay client writes Content-Length where it likes; names and values must all match.
    assert sorted(second.headers) == sorted(first.headers), "a replay should reach the backend with the captured headers"
    replays = page.locator("#requests tbody tr", has=page.locator(".tag", has_text=f"replay of #{number}"))
    await expect(replays).to_have_count(1)
    await expect(page.locator("#replay-error")).to_have_count(0)


async def test_edit_and_replay_sends_the_edited_request(
    start_proxy: ProxyFactory, recorder: Recorder, client: aiohttp.ClientSession, page: Page, tmp_path: Path
) -> None:
    proxy = await start_proxy({"app1": f"127.0.0.1:{recorder.port}"})
    await open_dashboard(page, proxy)
    await through_proxy(client, proxy, "POST", "/original", data=b"first body", headers={"Content-Type": "text/plain", "X-Trace": "trace-edit"})
    number = await request_id(client, proxy, "/original")
    await open_request(page, number)

    await page.locator("#edit-replay").click()
    editor = page.locator("#editor")
    await editor.locator("input[name=method]").fill("PUT")
    await editor.locator("input[name=path]").fill("/edited")
    headers = editor.locator("textarea[name=headers]")
    shown = await headers.input_value()
    assert "X-Trace: trace-edit" in shown and "Host:" not in shown, shown
    await headers.fill(shown + "\nX-Edited: yes")
    await editor.locator("textarea[name=body]").fill("changed")
    await page.screenshot(path=str(tmp_path / "editor.png"), full_page=True)
    await page.locator("#send-edit").click()
    await expect(page.locator("#replay-outcome")).to_contain_text("200", timeout=WAIT_MS)

    assert len(recorder.received) == 2, recorder.received
    edited = recorder.received[1]
    assert (edited.method, edited.target, edited.body) == ("PUT", "/edited", b"changed")
    assert edited.values("X-Edited") == ["yes"]
    assert edited.values("X-Trace") == ["trace-edit"]
    assert edited.values("Content-Length") == ["7"]
    assert edited.values("Host") == ["app1.localhost:" + str(proxy.port)]


async def test_config_error_banner_comes_and_goes_without_a_reload(start_proxy: ProxyFactory, recorder: Recorder, page: Page, tmp_path: Path) -> None:
    proxy = await start_proxy({"app1": f"127.0.0.1:{recorder.port}"})
    await open_dashboard(page, proxy)
    banner = page.locator("#config-error")
    await expect(banner).to_be_hidden()

    proxy.config.write_text(f"sites:\n  app1: 127.0.0.1:{recorder.port}\n  app2: [8000\n")
    await expect(banner).to_be_visible(timeout=WAIT_MS)
    error = await banner.locator("pre").inner_text()
    assert re.search(r"sites\.yaml:\d+:\d+: ", error), error
    await expect(page.locator(ROW.format("app1.localhost"))).to_be_visible()  # the last good config still shows
    await page.screenshot(path=str(tmp_path / "config-error.png"), full_page=True)

    write_sites(proxy.config, {"app1": f"127.0.0.1:{recorder.port}", "app2": free_port()})
    await expect(banner).to_be_hidden(timeout=WAIT_MS)
    await expect(page.locator(ROW.format("app2.localhost"))).to_be_visible()
    await assert_not_reloaded(page)
    await page.screenshot(path=str(tmp_path / "config-fixed.png"), full_page=True)


async def test_secret_headers_are_redacted_until_asked_for(
    start_proxy: ProxyFactory, recorder: Recorder, client: aiohttp.ClientSession, page: Page, tmp_path: Path
) -> None:
    proxy = await start_proxy({"app1": f"127.0.0.1:{recorder.port}"})
    await open_dashboard(page, proxy)
    await through_proxy(client, proxy, "GET", "/me", headers={"Authorization": "Bearer topsecret"})
    assert recorder.received[0].values("Authorization") == ["Bearer topsecret"], "the backend must get the real value"
    number = await request_id(client, proxy, "/me")
    await open_request(page, number)

    detail = page.locator("#request-detail")
    await expect(detail.locator("table.headers").nth(0)).to_contain_text("Bearer [redacted]")
    assert "topsecret" not in await detail.inner_text()
    assert "topsecret" not in await page.content()
    await page.screenshot(path=str(tmp_path / "redacted.png"), full_page=True)

    await page.locator("#show-secrets").check()
    await expect(detail.locator("table.headers").nth(0)).to_contain_text("Bearer topsecret", timeout=WAIT_MS)
    await expect(page.locator("#curl")).to_contain_text("Bearer topsecret")
    await page.screenshot(path=str(tmp_path / "shown.png"), full_page=True)


async def test_the_request_list_filters_by_site_and_status(
    start_proxy: ProxyFactory, recorder: Recorder, client: aiohttp.ClientSession, page: Page, tmp_path: Path
) -> None:
    proxy = await start_proxy({"app1": f"127.0.0.1:{recorder.port}", "down": f"127.0.0.1:{free_port()}"})
    await through_proxy(client, proxy, "GET", "/fine")
    async with client.get(f"{proxy.base}/broken", headers={"Host": f"down.localhost:{proxy.port}"}) as resp:
        assert resp.status == 502
    await open_dashboard(page, proxy)
    rows = page.locator("#requests tbody tr")
    await expect(rows).to_have_count(2)

    await page.select_option("#filter-status", "5xx")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("/broken")
    await page.select_option("#filter-status", "")
    await page.select_option("#filter-site", "app1.localhost")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("/fine")
    # A request arriving while filtered shows only if it matches.
    await through_proxy(client, proxy, "GET", "/later")
    async with client.get(f"{proxy.base}/later-broken", headers={"Host": f"down.localhost:{proxy.port}"}) as resp:
        assert resp.status == 502
    await expect(rows).to_have_count(2)
    await expect(page.locator("#requests tbody")).not_to_contain_text("/later-broken")
    await page.screenshot(path=str(tmp_path / "filtered.png"), full_page=True)
    await assert_not_reloaded(page)
