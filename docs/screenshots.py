"""Regenerate docs/dashboard.png and docs/inspector.png from a real proxy and real demo apps.

Run from the repository root: `.venv/bin/python docs/screenshots.py`. It starts three demo sites
on loopback (a page, a JSON API, and one left down), `python -m proxy run` on a free port with a
throwaway sites.yaml, sends a few requests through it and photographs the dashboard in Debian's
Chromium (never a downloaded browser). Everything it starts is stopped; nothing but the two PNGs
is written outside its temporary folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from aiohttp import web

try:
    from playwright.async_api import Page, async_playwright, expect
except ImportError:  # the script's one dependency beyond the proxy's own
    sys.exit("docs/screenshots.py needs playwright: .venv/bin/pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_PNG = ROOT / "docs" / "dashboard.png"
INSPECTOR_PNG = ROOT / "docs" / "inspector.png"
LISTENING = re.compile(r"listening on (http://\S+)")
WAIT_MS = 10_000
VIEWPORT = {"width": 1280, "height": 800}
CHROMIUM_FLAGS = [
    "--no-sandbox",  # CI and containers run as root
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",  # no update or sync calls from a machine that may be offline
    "--disable-component-update",
    "--disable-sync",
]

APP_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Acme shop (dev)</title>
<link rel="stylesheet" href="/static/app.css"></head>
<body><h1>Acme shop</h1><p>Development build served by the app behind app1.localhost.</p>
<script src="/static/app.js"></script></body></html>
"""
PRODUCTS = [
    {"id": "espresso-beans", "name": "Espresso beans, 1 kg", "price": 24.5},
    {"id": "filter-papers", "name": "Filter papers (100)", "price": 3.9},
]


def find_chromium() -> str:
    """Return Debian's Chromium, or exit saying how to install it."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
    if path is None:
        sys.exit("chromium is not installed: apt-get install chromium (docs/screenshots.py never downloads a browser)")
    return path


def free_port() -> int:
    """Return a loopback port nothing listens on, for the site that is meant to be down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------- demo apps


def shop_app() -> web.Application:
    """The page behind app1.localhost: HTML, a script and a stylesheet."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=APP_PAGE, content_type="text/html")

    async def script(request: web.Request) -> web.Response:
        return web.Response(text='fetch("http://api.localhost:7080/v1/products").then((r) => r.json()).then(console.log);\n', content_type="text/javascript")

    async def style(request: web.Request) -> web.Response:
        return web.Response(text="body { font-family: sans-serif; margin: 2rem; }\n", content_type="text/css")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/static/app.js", script)
    app.router.add_get("/static/app.css", style)
    return app


def api_app() -> web.Application:
    """The JSON API behind api.localhost: products, and orders that can be created."""

    async def products(request: web.Request) -> web.Response:
        return web.json_response({"page": int(request.query.get("page", "1")), "products": PRODUCTS})

    async def create_order(request: web.Request) -> web.Response:
        order = await request.json()
        body = {"id": 1042, "status": "created", "product": order.get("product"), "qty": order.get("qty"), "total": 49.0}
        return web.json_response(body, status=201, headers={"Location": "/v1/orders/1042"})

    async def one_order(request: web.Request) -> web.Response:
        number = request.match_info["number"]
        if number == "1042":
            return web.json_response({"id": 1042, "status": "created"})
        return web.json_response({"error": "not found", "detail": f"no order {number}"}, status=404)

    app = web.Application()
    app.router.add_get("/v1/products", products)
    app.router.add_post("/v1/orders", create_order)
    app.router.add_get("/v1/orders/{number}", one_order)
    return app


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """Run app on 127.0.0.1, port 0; yield its port, stop it on exit."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------- the proxy


def start_proxy(folder: Path) -> subprocess.Popen[bytes]:
    """Start `python -m proxy run` on folder/sites.yaml, its output going to files in folder."""
    command = [sys.executable, "-m", "proxy", "run", "--config", "sites.yaml", "--http", "127.0.0.1:0", "--no-https"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(folder / "proxy.stdout", "wb") as stdout, open(folder / "proxy.stderr", "wb") as stderr:
        # cwd is the temp folder, so the dashboard shows "sites.yaml" as a user would see it.
        return subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=folder, env=env)


@asynccontextmanager
async def running_proxy(folder: Path) -> AsyncIterator[str]:
    """Run the proxy on folder/sites.yaml; yield its base URL, stop it by pid on exit."""
    stdout_path, stderr_path = folder / "proxy.stdout", folder / "proxy.stderr"
    process = start_proxy(folder)
    try:
        deadline = time.monotonic() + 15
        while not (found := LISTENING.search(stdout_path.read_text(errors="replace"))):
            if process.poll() is not None or time.monotonic() > deadline:
                why = f"exited with {process.returncode}" if process.returncode is not None else "printed no 'listening on' line within 15 s"
                raise SystemExit(f"the proxy {why}:\n{stdout_path.read_text(errors='replace')}{stderr_path.read_text(errors='replace')}")
            await asyncio.sleep(0.05)
        yield found.group(1)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def send_demo_traffic(base: str, port: int) -> None:
    """Send the requests the screenshots show: pages, API calls, a 404 and a 502."""
    browser_like = {
        "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        "Accept-Language": "en-GB,en;q=0.9",
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    }
    api = {"Accept": "application/json", "Origin": f"http://app1.localhost:{port}", "User-Agent": browser_like["User-Agent"]}
    order = {"product": "espresso-beans", "qty": 2, "note": "grind for filter"}
    requests: list[tuple[str, str, str, dict[str, str], bytes | None]] = [
        ("GET", "app1", "/", browser_like, None),
        ("GET", "app1", "/static/app.css", {**browser_like, "Accept": "text/css,*/*;q=0.1"}, None),
        ("GET", "app1", "/static/app.js", {**browser_like, "Accept": "*/*"}, None),
        ("GET", "api", "/v1/products?page=1", api, None),
        (
            "POST",
            "api",
            "/v1/orders",
            {**api, "Content-Type": "application/json", "Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.demo.token"},
            json.dumps(order).encode(),
        ),
        ("GET", "api", "/v1/orders/9999", api, None),
        ("GET", "billing", "/invoices", browser_like, None),
    ]
    async with aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=10)) as client:
        for method, site, target, headers, body in requests:
            async with client.request(method, base + target, headers={"Host": f"{site}.localhost:{port}", **headers}, data=body) as resp:
                await resp.read()
            await asyncio.sleep(0.15)  # distinct times in the request list


# ---------------------------------------------------------------- the pictures


async def photograph(page: Page, dashboard: str) -> None:
    """Write DASHBOARD_PNG (sites and request list) and INSPECTOR_PNG (the POST opened)."""
    await page.goto(dashboard)
    await expect(page.locator("#live")).to_have_text("live", timeout=WAIT_MS)
    for host, state in (("app1.localhost", "up"), ("api.localhost", "up"), ("billing.localhost", "down")):
        await expect(page.locator(f'tr[data-host="{host}"] .state')).to_have_text(state, timeout=WAIT_MS)
    await expect(page.locator("#requests tbody tr")).to_have_count(7, timeout=WAIT_MS)
    # Wait for the next probe's document, so "Last minute" counts the traffic just sent.
    await expect(page.locator('tr[data-host="api.localhost"] td.num')).to_contain_text("3", timeout=WAIT_MS)
    await page.mouse.move(0, 0)  # no hover highlight in the picture
    await page.screenshot(path=str(DASHBOARD_PNG), full_page=True)

    await page.locator("#requests tbody tr", has_text="/v1/orders").filter(has_text="POST").click()
    detail = page.locator("#request-detail")
    await expect(detail.locator("h2")).to_contain_text("POST", timeout=WAIT_MS)
    await expect(detail.locator("#curl")).to_be_visible()
    await page.mouse.move(0, 0)
    # From the "Requests" heading (filters, list, chosen row) down to the end of the detail panel.
    top = await page.get_by_role("heading", name="Requests", exact=True).bounding_box()
    bottom = await detail.bounding_box()
    assert top is not None and bottom is not None
    scroll_y = float(await page.evaluate("window.scrollY"))
    y = top["y"] + scroll_y - 16
    height = bottom["y"] + scroll_y + bottom["height"] + 24 - y
    await page.screenshot(path=str(INSPECTOR_PNG), full_page=True, clip={"x": 0, "y": y, "width": VIEWPORT["width"], "height": height})


async def main() -> None:
    chromium = find_chromium()
    DASHBOARD_PNG.parent.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="localhost-proxy-screenshots-") as temp:
        folder = Path(temp)
        async with serving(shop_app()) as shop_port, serving(api_app()) as api_port:
            billing_port = free_port()  # nothing listens here: the site shows as down
            (folder / "sites.yaml").write_text(
                "sites:\n"
                f"  app1: 127.0.0.1:{shop_port}      # the shop's dev server\n"
                f"  api: 127.0.0.1:{api_port}        # the JSON API\n"
                f"  billing: 127.0.0.1:{billing_port}   # not started today\n"
            )
            async with running_proxy(folder) as base:
                port = int(base.rsplit(":", 1)[1])
                await send_demo_traffic(base, port)
                async with async_playwright() as playwright:
                    browser = await playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
                    try:
                        page = await browser.new_page(
                            viewport={"width": VIEWPORT["width"], "height": VIEWPORT["height"]}, color_scheme="light", device_scale_factor=1
                        )
                        await photograph(page, f"http://localhost:{port}/")
                    finally:
                        await browser.close()
    for path in (DASHBOARD_PNG, INSPECTOR_PNG):
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    asyncio.run(main())
