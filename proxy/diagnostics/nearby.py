"""What listens near an upstream that refused: the same port on the other loopback address, or a
neighbouring port a dev server moved to ("port 5173 is free, but 5174 is taken by vite").

`explain_nearby` is pure; `explain_refused` asks the OS (ports.tcp_listeners) and is called only
when a request has already failed, never on the forwarding path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from proxy.config.model import Upstream
from proxy.diagnostics.ports import ListeningSocket, tcp_listeners

# How far a dev server that found its port taken usually moves (Vite, Next.js and CRA count up).
NEIGHBOUR_DISTANCE = 3
# Known dev servers, named by what their command line contains (node runs most of them).
_DEV_SERVERS = (
    "vite",
    "next",
    "webpack",
    "nuxt",
    "astro",
    "remix",
    "parcel",
    "storybook",
    "gatsby",
    "svelte-kit",
    "ng serve",
    "runserver",
    "uvicorn",
    "flask",
    "rails",
    "hugo",
    "jekyll",
)


def who(listener: ListeningSocket) -> str:
    """Return "vite (pid 4121)": the dev server its command line names, else its program."""
    if listener.pid is None:
        return "another process"
    command = " ".join(listener.cmdline)
    program = next((name for name in _DEV_SERVERS if name in command), listener.program or "a process")
    return f"{program} (pid {listener.pid})"


def explain_nearby(upstream: Upstream, listeners: Sequence[ListeningSocket], *, own_pid: int | None = None) -> str | None:
    """Return one sentence about what listens near a refused upstream, or None when nothing does."""
    candidates = [entry for entry in listeners if (own_pid is None or entry.pid != own_pid) and entry.is_local]
    tried = set(upstream.dial_hosts)
    tried_text = " or ".join(upstream.tried_addresses)
    same_port = [entry for entry in candidates if entry.port == upstream.port and entry.address not in tried]
    if same_port:
        entry = same_port[0]
        return f"nothing on {tried_text}, but {who(entry)} listens on {entry.endpoint}: write just {entry.port} in sites.yaml (dialed on both 127.0.0.1 and ::1), or {entry.endpoint}"
    neighbours = sorted(
        (entry for entry in candidates if 0 < abs(entry.port - upstream.port) <= NEIGHBOUR_DISTANCE),
        key=lambda entry: (abs(entry.port - upstream.port), entry.port),
    )
    if neighbours:
        entry = neighbours[0]
        return f"port {upstream.port} is free, but {entry.port} is taken by {who(entry)}: did the dev server move? Then change the port in sites.yaml to {entry.port}"
    return None


def nearby_ports(upstream: Upstream) -> set[int]:
    return {p for p in range(upstream.port - NEIGHBOUR_DISTANCE, upstream.port + NEIGHBOUR_DISTANCE + 1) if 0 < p < 65536}


def explain_refused(upstream: Upstream) -> str | None:
    """Blocking: ask the OS what listens near upstream and say it in one sentence."""
    return explain_nearby(upstream, tcp_listeners(nearby_ports(upstream))[0], own_pid=os.getpid())
