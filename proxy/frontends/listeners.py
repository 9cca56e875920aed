"""Listening sockets: bound loopback-only unless allowed otherwise, served by a front-end, moved on reload.

Binding failures become ListenError with the process holding the port named when it can be
found; a bare port is bound on 127.0.0.1 and then [::1] on the same port.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from dataclasses import dataclass, field

from aiohttp import web

from proxy.config.model import ListenAddress
from proxy.diagnostics.ports import describe_listener
from proxy.errors import ListenError
from proxy.names import format_host

log = logging.getLogger("proxy")


@dataclass(frozen=True, slots=True)
class Listener:
    """One bound socket."""

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"{self.scheme}://{format_host(self.host)}:{self.port}"


@dataclass
class _Bound:
    """The sockets one scheme listens on, and the address they were bound for."""

    address: ListenAddress
    sites: list[web.SockSite] = field(default_factory=list)
    listeners: list[Listener] = field(default_factory=list)


class ListenerSet:
    """The listeners of each scheme (http, https), all served by one front-end runner."""

    def __init__(self, runner: web.ServerRunner) -> None:
        self._runner = runner
        self._bound: dict[str, _Bound] = {}

    @property
    def listeners(self) -> list[Listener]:
        return [listener for scheme in ("http", "https") if scheme in self._bound for listener in self._bound[scheme].listeners]

    def address(self, scheme: str) -> ListenAddress | None:
        bound = self._bound.get(scheme)
        return bound.address if bound else None

    def port(self, scheme: str) -> int | None:
        bound = self._bound.get(scheme)
        return bound.listeners[0].port if bound and bound.listeners else None

    async def serve(self, scheme: str, address: ListenAddress, sockets: list[socket.socket], tls: ssl.SSLContext | None) -> list[Listener]:
        """Start serving on bound sockets; the scheme's previous listeners (if any) stop, their open connections carry on."""
        bound = _Bound(address)
        for sock in sockets:
            site = web.SockSite(self._runner, sock, ssl_context=tls)
            await site.start()
            bound.sites.append(site)
            host, port = sock.getsockname()[:2]
            bound.listeners.append(Listener(scheme, host, port))
        old = self._bound.get(scheme)
        self._bound[scheme] = bound
        for site in old.sites if old else []:
            await site.stop()
        return bound.listeners

    async def stop_accepting(self) -> None:
        """Stop accepting connections on every listener."""
        for bound in self._bound.values():
            for site in bound.sites:
                await site.stop()


def bind_all(address: ListenAddress, *, allow_remote: bool) -> list[socket.socket]:
    """Return listening sockets for an address; a bare port gets 127.0.0.1, then [::1] on the same port."""
    if not allow_remote and not address.is_loopback:
        raise ListenError(
            f"refusing to listen on {address}: that is reachable from other machines, and this proxy "
            f"forwards to your dev servers. Use 127.0.0.1 or [::1], or pass --allow-remote if you mean it."
        )
    if address.host is not None:
        return [_bind(address.host, address.port)]
    first = _bind("127.0.0.1", address.port)
    port = first.getsockname()[1]  # port 0: the IPv4 pick is reused for [::1]
    try:
        return [first, _bind("::1", port)]
    except ListenError as exc:
        log.warning("warning: %s; serving on 127.0.0.1 only", exc)
        return [first]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    display = f"{format_host(host)}:{port}"
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ListenError(f"cannot listen on {display}: {exc.strerror} (no IPv6 on this machine?)") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart without waiting out TIME_WAIT
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            holder = describe_listener(port, host)
            by = f" by {holder}" if holder else ""
            raise ListenError(f"cannot listen on {display}: already used{by}; stop it or pass --http {port + 1 if port < 65535 else 7081}") from None
        if exc.errno == errno.EACCES:
            raise ListenError(f"cannot listen on {display}: permission denied (ports below 1024 need root); pass --http 7080") from None
        raise ListenError(f"cannot listen on {display}: {exc.strerror}") from None
    return sock
