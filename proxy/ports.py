"""Who listens where: read-only questions to the OS, for error messages."""

from __future__ import annotations

import psutil


def describe_listener(port: int, host: str | None = None) -> str | None:
    """Return "node (pid 4121)" for the process listening on port (and host, if given), else None.

    Other users' processes can be hidden without root; then nothing is named.
    """
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError):
        return None
    for conn in connections:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        if host is not None and conn.laddr.ip not in (host, "0.0.0.0", "::"):
            continue
        if conn.pid is None:
            return "another process"
        try:
            name = psutil.Process(conn.pid).name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            name = "a process"
        return f"{name} (pid {conn.pid})"
    return None
