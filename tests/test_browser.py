"""A real browser over HTTPS: headless Chromium trusts the local CA through an NSS database that
`trust --nssdb` filled, and loads a site through the proxy with no certificate interstitial.

Chromium on Linux reads user-added roots from $HOME/.pki/nssdb, so each run gets its own HOME:
the machine's own stores are never touched.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import async_playwright

from tests.support.browser import CHROMIUM_FLAGS
from tests.support.proxies import PROXY, Proxy, ProxyFactory
from tests.support.system import free_port, require_tool

PAGE_TEXT = "served by the app behind app1.localhost"


@pytest.fixture
async def app_page() -> AsyncIterator[TestServer]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f"<!doctype html><title>app1</title><p id=text>{PAGE_TEXT}</p>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    server = TestServer(app, host="127.0.0.1")
    async with server:
        yield server


def new_home(folder: Path) -> Path:
    """Return a HOME with an empty NSS database where Chromium looks for one."""
    nssdb = folder / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run([require_tool("certutil", "libnss3-tools"), "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True, capture_output=True, timeout=30)
    return folder


async def load_in_chromium(home: Path, url: str) -> str:
    """Return the DOM headless Chromium shows for url, with HOME pointing at home."""
    chromium = require_tool("chromium", "chromium")
    process = await asyncio.create_subprocess_exec(
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={home / 'profile'}",
        "--dump-dom",
        url,
        env={**os.environ, "HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"chromium did not finish loading {url} within 60 s") from None
    return stdout.decode("utf-8", "replace")


async def trust_into(proxy: Proxy, nssdb: Path, home: Path) -> None:
    command = [*PROXY, "trust", "--config", str(proxy.config), "--certs", str(proxy.certs), "--nssdb", str(nssdb), "--no-system"]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(home)})
    assert done.returncode == 0, done.stdout + done.stderr


async def test_chromium_loads_a_site_over_https_once_trust_filled_its_nss_database(start_proxy: ProxyFactory, app_page: TestServer, tmp_path: Path) -> None:
    proxy = await start_proxy({"app1": f"127.0.0.1:{app_page.port}"}, https=True)
    url = f"https://app1.localhost:{proxy.https_port}/"

    untrusting = new_home(tmp_path / "untrusting")
    without_trust = await load_in_chromium(untrusting, url)
    assert PAGE_TEXT not in without_trust, "Chromium loaded the page without trusting the CA: the check below would prove nothing"

    trusting = new_home(tmp_path / "trusting")
    await trust_into(proxy, trusting / ".pki" / "nssdb", trusting)
    with_trust = await load_in_chromium(trusting, url)
    assert PAGE_TEXT in with_trust, f"no page text in Chromium's DOM:\n{with_trust[:2000]}\n{proxy.stderr()}"


async def test_the_502_page_turns_into_the_app_once_it_starts(start_proxy: ProxyFactory, tmp_path: Path) -> None:
    """Start the proxy first and the app later: the open error page becomes the app by itself."""
    chromium = require_tool("chromium", "chromium")
    port = free_port()
    proxy = await start_proxy({"app1": f"127.0.0.1:{port}"})

    async def page_handler(request: web.Request) -> web.Response:
        return web.Response(text=f"<!doctype html><p id=text>{PAGE_TEXT}</p>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page_handler)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS[1:])
        try:
            page = await browser.new_page()
            response = await page.goto(f"http://app1.localhost:{proxy.port}/")
            assert response is not None and response.status == 502
            assert "Waiting for the app" in await page.content()
            await page.screenshot(path=str(tmp_path / "502-waiting.png"))
            async with TestServer(app, host="127.0.0.1", port=port):
                await page.wait_for_selector("#text", timeout=10_000)  # the page reloaded itself into the app
                assert await page.text_content("#text") == PAGE_TEXT
        finally:
            await browser.close()
