"""The proxy as the tests run it: `python -m proxy run` as a subprocess with its output in files
beside its sites.yaml, the `Proxy` handle that talks to it by name, and other commands run to
completion. Every file goes into the folder a test gives, under tmp_path.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from tests.support.waiting import wait_until, wait_until_blocking

PROXY = [sys.executable, "-m", "proxy"]
LISTENING = re.compile(r"listening on (http://\S+)")
LISTENING_HTTPS = re.compile(r"listening on (https://\S+)")
START_TIMEOUT = 15.0  # seconds the proxy may take to print its `listening on` lines


def cli(*args: str, cwd: Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run `python -m proxy ARGS` to completion and return its exit code and output."""
    return subprocess.run([*PROXY, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def write(path: Path, text: str) -> Path:
    """Write text with its common indentation removed; return the path."""
    path.write_text(textwrap.dedent(text))
    return path


def write_sites(path: Path, sites: dict[str, Any] | str) -> None:
    """Write a sites.yaml: whole YAML text as given, or a `sites:` mapping."""
    text = sites if isinstance(sites, str) else yaml.safe_dump({"sites": sites}, sort_keys=False)
    path.write_text(text)


def spawn(folder: Path, config: Path, *args: str, env: dict[str, str] | None = None, preexec_fn: Callable[[], object] | None = None) -> subprocess.Popen[bytes]:
    """Start `python -m proxy run --config CONFIG ARGS` in folder, its output in proxy.stdout and proxy.stderr there."""
    command = [*PROXY, "run", "--config", str(config), *args]
    # Popen returns at once; the files stay with the child, which may outlive any pipe reader.
    with open(folder / "proxy.stdout", "wb") as stdout, open(folder / "proxy.stderr", "wb") as stderr:
        return subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=folder, env={**os.environ, **(env or {})}, preexec_fn=preexec_fn)


def wait_listening_blocking(folder: Path, process: subprocess.Popen[bytes], timeout: float = START_TIMEOUT) -> list[str]:
    """Return the HTTP URLs the proxy spawned in folder prints as `listening on`, or [] if it exits
    first; fail if it does neither within timeout. For fixtures that run outside an event loop."""

    def printed() -> list[str]:
        return LISTENING.findall((folder / "proxy.stdout").read_text(errors="replace"))

    if not wait_until_blocking(lambda: printed() or process.poll() is not None, timeout):
        raise AssertionError(f"the proxy neither started nor exited within {timeout} s:\n{(folder / 'proxy.stderr').read_text(errors='replace')}")
    return printed()


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

    async def wait_listening(self, timeout: float = START_TIMEOUT) -> None:
        """Wait for the `listening on` lines and note their URLs; fail if the proxy exits first."""
        if not await wait_until(lambda: LISTENING.search(self.stdout()) or self.process.poll() is not None, timeout):
            raise AssertionError(f"no 'listening on' line within {timeout} s:\n{self.stdout()}\n{self.stderr()}")
        if not LISTENING.search(self.stdout()):
            raise AssertionError(f"proxy exited with {self.process.returncode}:\n{self.stdout()}\n{self.stderr()}")
        await asyncio.sleep(0.05)  # let the [::1] line land too
        self.urls = LISTENING.findall(self.stdout())
        self.https_urls = LISTENING_HTTPS.findall(self.stdout())

    def rss(self) -> int:
        """Return the proxy's resident memory in bytes."""
        with open(f"/proc/{self.process.pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the proxy and return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        if not await wait_until(lambda: self.process.poll() is not None, timeout):
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"proxy did not exit within {timeout} s")
        return self.process.returncode


ProxyFactory = Callable[..., Awaitable[Proxy]]
