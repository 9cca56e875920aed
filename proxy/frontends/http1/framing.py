"""HTTP/1.1 on the client side, as bytes and rules: request targets, the WebSocket upgrade, and how
a response head is framed for this client (RFC 9112). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from urllib.parse import urlsplit

from proxy.forwarding.contract import Field

_REASONS = {status.value: status.phrase for status in HTTPStatus}


def authority_and_target(raw_target: str, host: str) -> tuple[str, str]:
    """Return the name to route by and the path?query to forward, exactly as received.

    An absolute-form target (GET http://app1.localhost/x) names its host itself (RFC 9112
    3.2.2); it is routed like any other request and never dialed as written.
    """
    if raw_target.startswith(("http://", "https://")):
        parts = urlsplit(raw_target)
        path = parts.path or "/"
        return parts.netloc, path + (f"?{parts.query}" if parts.query else "")
    return host, raw_target


def is_websocket_upgrade(method: str, fields: Iterable[Field]) -> bool:
    """Return whether a request asks to become a WebSocket (the only upgrade the proxy tunnels).

    RFC 6455 4.1: a GET with `Upgrade: websocket` and `upgrade` among the Connection options.
    Any other upgrade (h2c, ...) is forwarded as a plain request, its Upgrade dropped.
    """
    if method != "GET":
        return False
    upgrade = False
    connection_upgrade = False
    for name, value in fields:
        lower = name.lower()
        if lower == b"upgrade":
            upgrade = value.strip().lower() == b"websocket"
        elif lower == b"connection":
            connection_upgrade = connection_upgrade or b"upgrade" in (token.strip().lower() for token in value.split(b","))
    return upgrade and connection_upgrade


def has_body(method: str, status: int) -> bool:
    """Return whether a response to this request carries a body (RFC 9112 6.3: not to HEAD, not 1xx, 204, 304)."""
    return method != "HEAD" and status >= 200 and status not in (204, 304)


def response_head(version: tuple[int, int], status: int, reason: str, fields: Iterable[Field], framing: bytes) -> bytes:
    """Return a response head: status line, the fields as given, the framing fields, the blank line."""
    # A response is sent in the version the client spoke, HTTP/1.0 or HTTP/1.1.
    lines = [b"HTTP/1.%d %d %s\r\n" % (1 if version >= (1, 1) else 0, status, (reason or _REASONS.get(status, "")).encode("latin-1", "replace"))]
    for name, value in fields:
        lines += (name, b": ", value, b"\r\n")
    lines += (framing, b"\r\n")
    return b"".join(lines)


def framing_fields(version: tuple[int, int], keep_alive: bool, *, body: bool, length: int | None, length_in_fields: bool) -> tuple[bytes, bool, bool]:
    """Return the framing fields to add, whether the connection stays open, and whether the body goes chunked.

    `body`: the response carries one; `length`: its length when known (None: it streams and
    ends when it ends); `length_in_fields`: the fields already say it (the app's Content-Length).
    """
    framing = b""
    chunked = False
    if not body:
        pass  # a Content-Length among the fields describes the resource (HEAD, 304), and stays
    elif length is not None:
        if not length_in_fields:
            framing = b"Content-Length: %d\r\n" % length
    elif version >= (1, 1):
        framing, chunked = b"Transfer-Encoding: chunked\r\n", True
    else:
        keep_alive = False  # an HTTP/1.0 client reads to the close
    if version >= (1, 1):
        if not keep_alive:
            framing += b"Connection: close\r\n"
    elif keep_alive:
        framing += b"Connection: keep-alive\r\n"
    return framing, keep_alive, chunked
