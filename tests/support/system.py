"""What this machine offers the tests: system tools, an IPv6 loopback (and a mark that skips without
it), and ports on loopback: one free on 127.0.0.1 and ::1 alike, or one whose listen backlog is full,
so that a connection to it neither completes nor is refused.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Iterator

import pytest


def require_tool(name: str, package: str = "") -> str:
    """Return a system tool's path; without it skip on a laptop, but fail under CI (CI set), so a
    .ci/run that forgot an install step cannot pass by skipping."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed" + (f" (Debian package {package})" if package else "")
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run must install it")
        pytest.skip(message)
    return path


def has_ipv6_loopback() -> bool:
    """Return whether this machine can bind ::1 (some containers have no IPv6)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port that nothing listens on right now (on both loopbacks when possible)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port: int = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s6:
                s6.bind(("::1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


@contextlib.contextmanager
def unanswering_listener() -> Iterator[int]:
    """A 127.0.0.1 port whose listen backlog is full, so a new connection neither completes nor is refused."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # never accepted: Linux drops SYNs once this queue holds one connection
        port: int = listener.getsockname()[1]
        for _ in range(8):
            filler = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                pass
            else:
                pytest.skip("this kernel completes connections beyond a full backlog; cannot simulate a hanging upstream")
        yield port
