"""Waiting with a deadline: a probe polled until it holds, a signalled proxy until it exits, a line
until the proxy logs it, and whether a port refuses new connections right now. `until` and
`until_true` fail naming what did not happen; `wait_until` and `wait_until_blocking` only say
whether it happened, for callers that assert with their own message.
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

T = TypeVar("T")

# Seconds a change may take to show: a reload (debounce included; the spec says about 1 s), a capture,
# an event, a log line.
DEADLINE = 5.0
INTERVAL = 0.05  # seconds between two probes
PROBES = 100_000  # every loop is bounded in count as well as in time

Described = str | Callable[[], str]  # a callable is asked only on failure, for a fresh log


async def until(probe: Callable[[], Awaitable[T | None]], what: Described, timeout: float = DEADLINE) -> T:
    """Return the first truthy result of the async probe; fail naming `what` if none comes within timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    for _ in range(PROBES):
        result = await probe()
        if result:
            return result
        last = result
        if loop.time() >= deadline:
            break
        await asyncio.sleep(INTERVAL)
    raise AssertionError(f"{what if isinstance(what, str) else what()}\nnot within {timeout} s (last probe gave {last!r})")


async def until_true(probe: Callable[[], T | None], what: Described, timeout: float = DEADLINE) -> T:
    """Return the first truthy result of the plain probe; fail naming `what` if none comes within timeout."""

    async def wrapped() -> T | None:
        return probe()

    return await until(wrapped, what, timeout)


async def wait_until(condition: Callable[[], object], timeout: float, interval: float = INTERVAL) -> bool:
    """Poll condition until it holds and return True, or return False once timeout has passed.
    A condition that returns an awaitable (an async probe) is awaited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for _ in range(PROBES):
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return True
        if loop.time() >= deadline:
            break
        await asyncio.sleep(interval)
    return False


def wait_until_blocking(condition: Callable[[], object], timeout: float, interval: float = INTERVAL) -> bool:
    """wait_until for code that runs outside an event loop (module fixtures, property runs): sleeps between probes."""
    deadline = time.monotonic() + timeout
    for _ in range(PROBES):
        if condition():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return False


# ---------------------------------------------------------------- the proxy process


class Watched(Protocol):
    """A process a test started, its stderr kept in a file: the proxy, as the fixtures run it."""

    @property
    def process(self) -> subprocess.Popen[bytes]: ...

    def stderr(self) -> str: ...


async def wait_exit(proxy: Watched, timeout: float) -> int:
    """Return the exit code of a proxy already signalled, without signalling it again; fail if it outlives timeout."""
    if not await wait_until(lambda: proxy.process.poll() is not None, timeout):
        raise AssertionError(f"the proxy did not exit within {timeout:g} s of the signal; its stderr:\n{proxy.stderr()}")
    return proxy.process.returncode


async def wait_logged(proxy: Watched, text: str, *, since: int = 0, timeout: float = DEADLINE) -> str:
    """Return the proxy's stderr once it contains text (after offset `since`)."""

    def probe() -> str | None:
        err = proxy.stderr()
        return err if text in err[since:] else None

    return await until_true(probe, lambda: f"{text!r} in the proxy's stderr\n{proxy.stderr()[since:]}", timeout)


async def is_refused(host: str, port: int) -> bool:
    """Return whether a new TCP connection to host:port is refused right now."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except ConnectionRefusedError:
        return True
    except (TimeoutError, ConnectionResetError, OSError):  # reset: caught in the backlog as the listener closed
        return False
    writer.close()
    return False
