"""Hot reload from the outside: sites.yaml saved the ways editors save it, and the running proxy
probed until it routes a host to an upstream, or sets or clears config_error in /api/sites.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.proxies import Proxy
from tests.support.rawhttp import EchoUpstream
from tests.support.waiting import DEADLINE, until

OWN = {"Host": "localhost"}  # the proxy's own pages and API


# ---------------------------------------------------------------- the running proxy


@dataclass
class Answer:
    """What the proxy answered for one request to a site."""

    status: int
    upstream: str | None  # the echo app's X-Upstream tag
    text: str


async def fetch(client: aiohttp.ClientSession, base: str, host: str, path: str = "/", headers: dict[str, str] | None = None) -> Answer:
    """GET base+path with the given Host; a timeout or refused connection fails the test."""
    async with client.get(f"{base}{path}", headers={"Host": host, **(headers or {})}, timeout=aiohttp.ClientTimeout(total=DEADLINE)) as resp:
        return Answer(resp.status, resp.headers.get("X-Upstream"), await resp.text())


async def answers_from(client: aiohttp.ClientSession, proxy: Proxy, host: str, upstream: EchoUpstream) -> bool:
    """Return whether host is routed to upstream right now."""
    answer = await fetch(client, proxy.base, host)
    return answer.status == 200 and answer.upstream == upstream.name


async def wait_routed(client: aiohttp.ClientSession, proxy: Proxy, host: str, upstream: EchoUpstream) -> None:
    """Return once host is routed to upstream; fail with the proxy's log if it is not within DEADLINE."""
    await until(lambda: answers_from(client, proxy, host, upstream), lambda: f"{host} routed to {upstream.name} (:{upstream.port})\n{proxy.stderr()}")


async def assert_routed(client: aiohttp.ClientSession, proxy: Proxy, host: str, upstream: EchoUpstream) -> None:
    """Fail unless host is routed to upstream right now."""
    answer = await fetch(client, proxy.base, host)
    assert (answer.status, answer.upstream) == (200, upstream.name), f"{host}: {answer}\n{proxy.stderr()}"


async def api_sites(client: aiohttp.ClientSession, proxy: Proxy) -> dict[str, Any]:
    """Return the /api/sites document."""
    async with client.get(f"{proxy.base}/api/sites", headers=OWN, timeout=aiohttp.ClientTimeout(total=DEADLINE)) as resp:
        assert resp.status == 200, await resp.text()
        document: dict[str, Any] = await resp.json()
        return document


async def config_error(client: aiohttp.ClientSession, proxy: Proxy) -> str | None:
    error: str | None = (await api_sites(client, proxy))["config_error"]
    return error


async def wait_config_error(client: aiohttp.ClientSession, proxy: Proxy, *, other_than: str | None = None) -> str:
    """Return /api/sites' config_error once it is set (and differs from `other_than`)."""

    async def probe() -> str | None:
        error = await config_error(client, proxy)
        return error if error is not None and error != other_than else None

    return await until(probe, lambda: f"config_error set in /api/sites\n{proxy.stderr()}")


async def wait_config_ok(client: aiohttp.ClientSession, proxy: Proxy) -> None:
    """Return once /api/sites' config_error is back to null."""

    async def probe() -> bool:
        return await config_error(client, proxy) is None

    await until(probe, lambda: f"config_error back to null\n{proxy.stderr()}")


def site_hosts(document: dict[str, Any]) -> list[str]:
    return [site["host"] for site in document["sites"]]


def assert_healthy(proxy: Proxy) -> None:
    """Fail if the proxy exited or logged a traceback."""
    assert proxy.process.poll() is None, f"proxy exited with {proxy.process.returncode}\n{proxy.stderr()}"
    assert "Traceback" not in proxy.stderr(), proxy.stderr()


def addr(upstream: EchoUpstream) -> str:
    """Return the upstream's address as sites.yaml names it."""
    return f"127.0.0.1:{upstream.port}"


# ---------------------------------------------------------------- how editors save


async def save_in_place(path: Path, text: str) -> None:
    """One open(O_TRUNC) and one write, as `echo > sites.yaml` and many editors do."""
    path.write_text(text)


async def save_truncate_then_write(path: Path, text: str) -> None:
    """Truncate, pause, write the first half, pause, write the rest: the file is seen empty, then partial."""
    lines = text.splitlines(keepends=True)
    half = len(lines) // 2
    with open(path, "w") as f:
        f.flush()
        await asyncio.sleep(0.05)
        f.write("".join(lines[:half]))
        f.flush()
        await asyncio.sleep(0.05)
        f.write("".join(lines[half:]))


async def save_rename_over(path: Path, text: str) -> None:
    """Write a temp file next to it and rename it over the original (VS Code, JetBrains, most tools)."""
    temp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temp.write_text(text)
    os.replace(temp, path)


async def save_delete_recreate(path: Path, text: str) -> None:
    """Delete the file, then create it again a moment later."""
    path.unlink()
    await asyncio.sleep(0.05)
    path.write_text(text)


async def save_vim_style(path: Path, text: str) -> None:
    """Vim's default: probe the folder with a `4913` file, rename the original to a backup, write
    a new file, delete the backup."""
    probe = path.with_name("4913")
    probe.write_text("")
    probe.unlink()
    backup = path.with_name(path.name + "~")
    os.rename(path, backup)
    path.write_text(text)
    backup.unlink()


def sites_text(sites: dict[str, Any]) -> str:
    """Return sites.yaml text for a `sites:` mapping, one site per line."""
    return "sites:\n" + "".join(f"  {name}: {target}\n" for name, target in sites.items())
