"""bench/compare.py works end to end: a --quick run starts nginx, wrk and the proxies, measures, and
writes its table. The numbers are not judged here (too noisy for pass/fail); only that they exist.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.system import require_tool

COMPARE = Path(__file__).resolve().parent.parent / "bench" / "compare.py"


def numbers_in_row(table: str, label: str) -> list[float]:
    """Return the numeric cells of every table row that starts with label (ratios and n/a left out).

    A memory growth can be negative: the server gave pages back meanwhile.
    """
    rows = [line for line in table.splitlines() if line.startswith(f"| {label} |")]
    assert rows, f"no row {label!r} in:\n{table}"
    cells = [cell.strip() for row in rows for cell in row.strip("|").split("|")[1:]]
    return [float(cell.replace(",", "")) for cell in cells if re.fullmatch(r"-?[\d,]+(\.\d+)?", cell)]


@pytest.mark.timeout(150)
def test_quick_run_writes_a_table_with_every_measurement(tmp_path: Path) -> None:
    require_tool("nginx", "nginx")
    require_tool("wrk", "wrk")
    out = tmp_path / "results.md"
    finished = subprocess.run(
        [sys.executable, str(COMPARE), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert finished.returncode == 0, f"exit {finished.returncode}:\n{finished.stderr[-4000:]}"
    table = out.read_text()
    assert table in finished.stdout  # printed and written alike
    for section in ("## HTTP", "## HTTPS", "## WebSocket and config size", "## Targets (issue 7)"):
        assert section in table
    # direct, nginx and this proxy each got a rate, over HTTP and over HTTPS (two rows).
    rates = numbers_in_row(table, "13 B responses, 50 connections: req/s")
    assert len(rates) == 6 and all(rate > 0 for rate in rates), rates
    assert len(numbers_in_row(table, "1 MiB responses, 8 connections: MiB/s")) == 6
    assert len(numbers_in_row(table, "1000 idle keep-alive connections: RSS per connection, KiB")) == 2  # nginx, this proxy
    assert len(numbers_in_row(table, "messages/s")) == 2  # direct, through this proxy
    assert len(numbers_in_row(table, "CPU per request, µs")) == 2  # 1 site, 10,000 sites
    assert numbers_in_row(table, "reload: save (rename-over) to the new site answering, through the running proxy")
