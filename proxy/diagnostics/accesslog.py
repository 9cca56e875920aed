"""The access log: one line per request, kept as a tuple on the request path and written in batches.

A log record per request (formatting, handler lock, a write and flush each) costs more than the
rest of forwarding a small response. Lines are formatted and written together at most
FLUSH_INTERVAL later, or at once when many are waiting, as one record on the "proxy.access"
logger holding every line with its own time.
"""

from __future__ import annotations

import asyncio
import logging
import time

from proxy.names import normalize_host

FLUSH_INTERVAL = 0.1  # seconds a line may wait before it is written
MAX_PENDING = 1000  # lines held before they are written regardless

Line = tuple[float, str, str, str, int | None, str, float, str]  # when, Host as sent, method, target, status, upstream, seconds, note


_clock: tuple[int, str] = (0, "")


def _clock_at(when: float) -> str:
    """Return HH:MM:SS for a time, formatted once per second."""
    global _clock
    second = int(when)
    if _clock[0] != second:
        _clock = (second, time.strftime("%H:%M:%S", time.localtime(second)))
    return _clock[1]


def format_line(line: Line) -> str:
    when, host, method, target, status, upstream, seconds, note = line
    clock = _clock_at(when)
    arrow = f" -> {upstream}" if upstream else ""
    why = f" ({note})" if note else ""
    return f"{clock} {normalize_host(host) or '-'} {method} {target} {status or '-'}{arrow} {seconds * 1000:.1f}ms{why}"


class AccessLog:
    """Collects access lines and writes them in batches to a logger whose handler prints messages as they are."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._pending: list[Line] = []
        self._flush_timer: asyncio.TimerHandle | None = None

    def record(self, host: str, method: str, target: str, status: int | None, upstream: str, seconds: float, note: str) -> None:
        self._pending.append((time.time(), host, method, target, status, upstream, seconds, note))
        if len(self._pending) >= MAX_PENDING:
            self.flush()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        lines, self._pending = self._pending, []
        if lines and self._logger.isEnabledFor(logging.INFO):
            self._logger.info("%s", "\n".join(map(format_line, lines)))
