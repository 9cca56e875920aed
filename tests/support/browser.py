"""Headless Chromium as the browser tests run it: Debian's own binary (no browser download), with
flags for a machine that runs tests as root and has no internet.
"""

from __future__ import annotations

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # tests run as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # this machine has no internet: no update or sync calls
    "--disable-component-update",
    "--disable-sync",
]
