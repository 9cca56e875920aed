"""Shared fixtures: the real proxy as a subprocess, real upstream servers on loopback.

Nothing here mocks the network: every test talks to sockets on 127.0.0.1 / ::1, port 0.
Files are written under pytest's tmp_path, never into the checkout.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.rawhttp import EchoUpstream, echo, echo_upstream

LISTENING = re.compile(r"listening on (http://\S+)")
LISTENING_HTTPS = re.compile(r"listening on (https://\S+)")


class Proxy:
    """A `python -m proxy run` subprocess and helpers to talk to it by name."""

    def __init__(self, folder: Path, config: Path, process: subprocess.Popen[bytes]) -> None:
        self.folder = folder
        self.config = config
        self.process = process
        self.stdout_path = folder / "proxy.stdout"
        self.stderr_path = folder / "proxy.stderr"
        self.urls: list[str] = []
        self.https_urls: list[str] = []
        self.certs = folder / "certs"  # the CA's folder when started with https=True

    @property
    def port(self) -> int:
        return int(self.urls[0].rsplit(":", 1)[1])

    @property
    def base(self) -> str:
        return self.urls[0]

    @property
    def https_port(self) -> int:
        return int(self.https_urls[0].rsplit(":", 1)[1])

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def wait_listening(self, timeout: float = 15.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            self.urls = LISTENING.findall(self.stdout())
            if self.urls:
                await asyncio.sleep(0.05)  # let the [::1] line land too
                self.urls = LISTENING.findall(self.stdout())
                self.https_urls = LISTENING_HTTPS.findall(self.stdout())
                return
            if self.process.poll() is not None:
                raise AssertionError(f"proxy exited with {self.process.returncode}:\n{self.stdout()}\n{self.stderr()}")
            await asyncio.sleep(0.05)
        raise AssertionError(f"no 'listening on' line within {timeout} s:\n{self.stdout()}\n{self.stderr()}")

    def rss(self) -> int:
        """Return the proxy's resident memory in bytes."""
        with open(f"/proc/{self.process.pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the proxy and return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.process.poll() is None and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"proxy did not exit within {timeout} s")
        return self.process.returncode


ProxyFactory = Callable[..., Awaitable[Proxy]]


def write_sites(path: Path, sites: dict[str, Any] | str) -> None:
    text = sites if isinstance(sites, str) else yaml.safe_dump({"sites": sites}, sort_keys=False)
    path.write_text(text)


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
        command = [sys.executable, "-m", "proxy", "run", "--config", str(config), *listen, *tls, *args]
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, open_file_limit)) if open_file_limit else None
        with open(folder / "proxy.stdout", "wb") as stdout, open(folder / "proxy.stderr", "wb") as stderr:
            process = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=folder, env={**os.environ, **(env or {})}, preexec_fn=limit)
        proxy = Proxy(folder, config, process)
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


@pytest.fixture
def raw_request() -> Callable[..., Awaitable[bytes]]:
    """Send raw bytes to host:port and return everything read until the peer closes or goes quiet."""

    async def send(port: int, data: bytes, *, host: str = "127.0.0.1", quiet: float = 1.0, limit: int = 1 << 20) -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(data)
        await writer.drain()
        received = b""
        try:
            while len(received) < limit:
                chunk = await asyncio.wait_for(reader.read(65536), timeout=quiet)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            pass
        finally:
            writer.close()
        return received

    return send


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves non-daemon threads running."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    assert not leaked, f"test leaked threads: {leaked}"
