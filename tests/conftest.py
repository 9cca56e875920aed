"""Shared fixtures: the real proxy as a subprocess, real upstream servers on loopback.

Nothing here mocks the network: every test talks to sockets on 127.0.0.1 / ::1, port 0.
Files are written under pytest's tmp_path, never into the checkout.
"""

from __future__ import annotations

import atexit
import resource
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis.configuration import set_hypothesis_home_dir

from tests.support.proxies import Proxy, ProxyFactory, spawn, write_sites
from tests.support.rawhttp import EchoUpstream, echo, echo_upstream

# Hypothesis keeps caches in ./.hypothesis by default: in a temporary folder instead, never the checkout.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="localhost-proxy-tests-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME)
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)


@pytest.fixture
async def start_proxy(tmp_path: Path) -> AsyncIterator[ProxyFactory]:
    """Start the proxy on sites (a dict of the `sites:` mapping, or whole YAML text); stopped at teardown."""
    started: list[Proxy] = []

    async def start(
        sites: dict[str, Any] | str,
        *args: str,
        http: str | None = "127.0.0.1:0",
        https: bool = False,
        env: dict[str, str] | None = None,
        open_file_limit: tuple[int, int] | None = None,
    ) -> Proxy:
        """http=None leaves --http out, so the file's `listen:` decides; https=True adds an HTTPS
        listener on 127.0.0.1:0 with a fresh CA in the proxy's own temporary folder;
        open_file_limit=(soft, hard) sets the proxy's RLIMIT_NOFILE (the test process keeps its own)."""
        folder = tmp_path / f"proxy{len(started)}"
        folder.mkdir()
        config = folder / "sites.yaml"
        write_sites(config, sites)
        listen = ["--http", http] if http is not None else []
        tls = ["--https", "127.0.0.1:0", "--certs", str(folder / "certs")] if https else ["--no-https"]
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, open_file_limit)) if open_file_limit else None
        proxy = Proxy(folder, config, spawn(folder, config, *listen, *tls, *args, env=env, preexec_fn=limit))
        started.append(proxy)
        await proxy.wait_listening()
        return proxy

    yield start
    for proxy in started:
        if proxy.process.poll() is None:
            proxy.process.kill()
            proxy.process.wait()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client that never decompresses and never follows redirects on its own."""
    async with aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture
async def echo_server() -> AsyncIterator[TestServer]:
    """A real app on 127.0.0.1 with an ephemeral port that echoes what it received."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    server = TestServer(app, host="127.0.0.1")
    async with server:
        yield server


@pytest.fixture
async def upstream_a() -> AsyncIterator[EchoUpstream]:
    """An echo app that answers with X-Upstream: A."""
    async with echo_upstream("A") as upstream:
        yield upstream


@pytest.fixture
async def upstream_b() -> AsyncIterator[EchoUpstream]:
    """An echo app that answers with X-Upstream: B."""
    async with echo_upstream("B") as upstream:
        yield upstream


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves non-daemon threads running."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    assert not leaked, f"test leaked threads: {leaked}"
