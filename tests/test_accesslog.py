"""Access lines: formatted from the kept tuple exactly as the log shows them, and written in batches."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from proxy.diagnostics.accesslog import MAX_PENDING, AccessLog, format_line


def test_a_line_has_time_host_method_target_status_upstream_duration_and_note() -> None:
    when = time.mktime((2026, 11, 26, 20, 5, 9, 0, 0, -1))
    line = format_line((when, "App1.Localhost:7080", "GET", "/a?b", 200, "127.0.0.1:3000", 0.0123, ""))
    assert line == "20:05:09 app1.localhost GET /a?b 200 -> 127.0.0.1:3000 12.3ms"


def test_a_line_without_host_status_or_upstream_says_so() -> None:
    line = format_line((time.time(), "", "GET", "/", None, "", 0.0001, "client went away"))
    assert line.endswith(" - GET / - 0.1ms (client went away)")


async def test_lines_are_written_together_after_a_short_wait(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.access.batch")
    access = AccessLog(logger)
    with caplog.at_level(logging.INFO, logger=logger.name):
        for i in range(3):
            access.record("app1.localhost", "GET", f"/{i}", 200, "127.0.0.1:3000", 0.001, "")
        assert caplog.records == []  # nothing formatted or written on the request path
        await asyncio.sleep(0.3)
        assert len(caplog.records) == 1
        assert [line.split(" ", 3)[3] for line in caplog.records[0].getMessage().splitlines()] == [f"/{i} 200 -> 127.0.0.1:3000 1.0ms" for i in range(3)]


async def test_many_waiting_lines_are_written_at_once(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.access.many")
    access = AccessLog(logger)
    with caplog.at_level(logging.INFO, logger=logger.name):
        for i in range(MAX_PENDING):
            access.record("app1.localhost", "GET", f"/{i}", 200, "", 0.001, "")
        assert len(caplog.records) == 1 and len(caplog.records[0].getMessage().splitlines()) == MAX_PENDING
        access.flush()
        assert len(caplog.records) == 1  # nothing left over
