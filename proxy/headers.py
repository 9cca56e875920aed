"""Which headers cross the proxy. Pure: lists of (name, value) byte pairs in, lists or bytes out.

Hop-by-hop fields are removed in both directions (RFC 9110 7.6.1), then the proxy sets its own
X-Forwarded-* so that a client can neither remove nor spoof them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Fields as they are on the wire: (name, value) bytes, in order, repeats kept. Working on the
# bytes means nothing is re-encoded on the way through (obs-text stays byte for byte).
Field = tuple[bytes, bytes]

# RFC 9110 7.6.1, plus the older fields that proxies in the wild still send.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# A client naming these in Connection must not change how the message is framed or routed.
NEVER_STRIPPED = frozenset({"host", "content-length"})
FORWARDED_BY_US = frozenset({"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port"})
# Request fields the WebSocket client library writes itself on the upstream handshake.
WEBSOCKET_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol", "sec-websocket-accept"}
)
# Lists the sites a request has passed through, to catch a dev server proxying back to us.
LOOP_HEADER = "X-Localhost-Proxy-Via"
# Marks the dashboard's own replay of a captured request; never forwarded.
REPLAY_HEADER = "X-Localhost-Proxy-Replay"


def _wire(names: Iterable[str]) -> frozenset[bytes]:
    return frozenset(name.encode("ascii") for name in names)


_HOP_BY_HOP = _wire(HOP_BY_HOP)
_NEVER_STRIPPED = _wire(NEVER_STRIPPED)
# Request fields never passed upstream as the client sent them: hop-by-hop, the ones the proxy
# sets itself, Expect (the proxy answers 100-continue), and its own markers.
_NOT_FORWARDED = _HOP_BY_HOP | _wire(FORWARDED_BY_US) | _wire({"host", "expect", LOOP_HEADER.lower(), REPLAY_HEADER.lower()})
_NOT_FORWARDED_WEBSOCKET = _NOT_FORWARDED | _wire(WEBSOCKET_HANDSHAKE)
_LOOP_HEADER = LOOP_HEADER.encode("ascii")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def connection_tokens(fields: Iterable[Field]) -> frozenset[bytes]:
    """Return the lower-cased field names listed in every Connection field, minus the ones never stripped."""
    tokens: set[bytes] = set()
    for name, value in fields:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    tokens.discard(b"")
    return frozenset(tokens - _NEVER_STRIPPED)


def strip_hop_by_hop(fields: Iterable[Field]) -> list[Field]:
    """Return fields without hop-by-hop ones and without every field named in Connection."""
    fields = list(fields)
    drop = _HOP_BY_HOP | connection_tokens(fields)
    return [(name, value) for name, value in fields if name.lower() not in drop]


def request_fields_for_upstream(
    fields: Sequence[Field],
    *,
    client_ip: str,
    proto: str,
    host_header: str,
    upstream_host: str | None,
    via: Sequence[str],
    websocket: bool = False,
) -> list[Field]:
    """Return the fields to send upstream for a client request, in one pass.

    The upstream gets `Host: host_header` (the name the request was routed by, which for an
    absolute-form target is the target's authority, RFC 9112 3.2.2), or `upstream_host` when the
    site does not preserve it; `via` is the list of sites this request has now passed through
    (see LOOP_HEADER).
    """
    drop = _NOT_FORWARDED_WEBSOCKET if websocket else _NOT_FORWARDED
    named = connection_tokens(fields) if any(name.lower() == b"connection" for name, _ in fields) else frozenset()
    out: list[Field] = [(b"Host", _latin1(upstream_host if upstream_host is not None else host_header))]
    out += [(name, value) for name, value in fields if (lower := name.lower()) not in drop and lower not in named]
    out += _forwarding_fields(client_ip, proto, host_header, tuple(via))
    return out


@functools.lru_cache(maxsize=256)  # the same few clients, names and chains, request after request
def _forwarding_fields(client_ip: str, proto: str, host_header: str, via: tuple[str, ...]) -> tuple[Field, ...]:
    """Return the fields the proxy sets itself on every forwarded request."""
    return (
        (b"X-Forwarded-For", _latin1(client_ip)),
        (b"X-Forwarded-Proto", _latin1(proto)),
        (b"X-Forwarded-Host", _latin1(host_header)),
        (b"Forwarded", _latin1(forwarded_value(client_ip, host_header, proto))),
        (_LOOP_HEADER, _latin1(", ".join(via))),
    )


def _latin1(text: str) -> bytes:
    """Encode a value the proxy itself writes; Host values arrive as Latin-1 text and go back unchanged."""
    return text.encode("latin-1", "replace")


def serialize_fields(fields: Iterable[Field]) -> bytes:
    """Return fields as the lines of a message head."""
    return b"".join([name + b": " + value + b"\r\n" for name, value in fields])


@dataclass(frozen=True, slots=True)
class ClientFields:
    """An upstream response's header section as the client gets it, and what the proxy needs to know of it."""

    lines: bytes  # serialized, hop-by-hop fields removed
    has_date: bool
    is_event_stream: bool


def response_fields_for_client(status: int, fields: Sequence[Field]) -> ClientFields | str:
    """Return an upstream response's fields for the client, or what makes the head unsafe to relay.

    The problem is a phrase to follow "the app sent". The response parser is lenient where a
    proxy must not be (RFC 9112 5.1, 6.1): what it lets through here would reach the browser
    framed differently from how the app meant it.
    """
    if not 200 <= status <= 599:  # 1xx interim answers are consumed by the client; 101 only for WebSockets
        return f"the status code {status}, which cannot answer this request"
    named = connection_tokens(fields) if any(name.lower() == b"connection" for name, _ in fields) else frozenset()
    lines: list[bytes] = []
    has_date = is_event_stream = False
    for name, value in fields:
        if not _TOKEN.fullmatch(name):
            return f"a malformed header name {name[:60].decode('latin-1')!r}"
        lower = name.lower()
        if lower == b"transfer-encoding":
            if value.rsplit(b",", 1)[-1].strip().lower() != b"chunked":
                return f"Transfer-Encoding: {value[:60].decode('latin-1')}, a coding the proxy does not pass on"
            continue
        if lower in _HOP_BY_HOP or lower in named:
            continue
        if lower == b"date":
            has_date = True
        elif lower == b"content-type":
            is_event_stream = value.startswith(b"text/event-stream")
        lines.append(name + b": " + value + b"\r\n")
    return ClientFields(b"".join(lines), has_date, is_event_stream)


def forwarded_value(client_ip: str, host_header: str, proto: str) -> str:
    """Return the RFC 7239 Forwarded field for the same facts as X-Forwarded-*."""
    node = f'"[{client_ip}]"' if ":" in client_ip else client_ip
    host = host_header.replace("\\", "\\\\").replace('"', '\\"')
    return f'for={node};host="{host}";proto={proto}'


def sites_passed(loop_header_values: Iterable[str]) -> list[str]:
    """Return the site hosts named in an incoming request's loop header fields (LOOP_HEADER)."""
    names: list[str] = []
    for value in loop_header_values:
        names += [v.strip().lower() for v in value.split(",") if v.strip()]
    return names
