"""Which header fields cross the proxy. Pure: lists of (name, value) byte pairs in, lists out.

Hop-by-hop fields are removed in both directions (RFC 9110 7.6.1), then the proxy sets its own
X-Forwarded-* so that a client can neither remove nor spoof them. Framing is not decided here:
each front-end adds its own to what these functions return.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from proxy.forwarding.contract import Field

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
# Lists the sites a request has passed through, to catch a dev server proxying back to us.
LOOP_HEADER = "X-Localhost-Proxy-Via"
# Reserved by the proxy: never forwarded and never shown, so that no client's request can pass
# for one of the dashboard's replays in an app's log or in the inspector.
REPLAY_HEADER = "X-Localhost-Proxy-Replay"


def _wire(names: Iterable[str]) -> frozenset[bytes]:
    return frozenset(name.encode("ascii") for name in names)


_HOP_BY_HOP = _wire(HOP_BY_HOP)
_NEVER_STRIPPED = _wire(NEVER_STRIPPED)
# Request fields never passed upstream as the client sent them: hop-by-hop, the ones the proxy
# sets itself, Expect (the front-end answers 100-continue), and its own markers.
_NOT_FORWARDED = _HOP_BY_HOP | _wire(FORWARDED_BY_US) | _wire({"host", "expect", LOOP_HEADER.lower(), REPLAY_HEADER.lower()})
_LOOP_HEADER = LOOP_HEADER.encode("ascii")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@functools.lru_cache(maxsize=1024)  # "keep-alive", "close", "Upgrade": a handful of values recur
def _named_in_connection_value(value: bytes) -> frozenset[bytes]:
    """Return the field names a Connection value lists, other than hop-by-hop ones and the ones never stripped."""
    return frozenset(t.strip().lower() for t in value.split(b",")) - _HOP_BY_HOP - _NEVER_STRIPPED - {b""}


@functools.lru_cache(maxsize=4096)  # the same few dozen names recur on every message
def _lower_token(name: bytes) -> bytes | None:
    """Return a field name lower-cased, or None when it is not a token (RFC 9110 5.1)."""
    return name.lower() if _TOKEN.fullmatch(name) else None


def _named_in_connection(fields: Sequence[Field], lowered: Sequence[bytes | None]) -> frozenset[bytes]:
    """Return the names a message's Connection fields list beyond the hop-by-hop ones (commonly none)."""
    named: frozenset[bytes] = frozenset()
    if b"connection" not in lowered:  # the common case, answered by one scan in C
        return named
    for lower, (_, value) in zip(lowered, fields):
        if lower == b"connection":
            named |= _named_in_connection_value(value)
    return named


def strip_hop_by_hop(fields: Iterable[Field]) -> list[Field]:
    """Return fields without hop-by-hop ones and without every field named in Connection."""
    fields = list(fields)
    lowered = [name.lower() for name, _ in fields]
    drop = _HOP_BY_HOP | _named_in_connection(fields, lowered)
    return [field for lower, field in zip(lowered, fields) if lower not in drop]


def request_fields_for_upstream(
    fields: Sequence[Field],
    *,
    client_ip: str,
    proto: str,
    host_header: str,
    upstream_host: str | None,
    via: Sequence[str],
    upgrade: str | None = None,
) -> list[Field]:
    """Return the fields to send upstream for a client request, in one pass.

    The upstream gets `Host: host_header` (the name the request was routed by, which for an
    absolute-form target is the target's authority, RFC 9112 3.2.2), or `upstream_host` when the
    site does not preserve it; `via` is the list of sites this request has now passed through
    (see LOOP_HEADER). `upgrade` ("websocket") asks the upstream to switch protocols: the
    client's own Upgrade and Connection are hop-by-hop, so the proxy asks anew; the
    Sec-WebSocket-* fields are end to end and pass as sent.
    """
    # The request parser has checked the names already; lower-casing goes through the same cache.
    lowered = [_lower_token(name) or name.lower() for name, _ in fields]
    named = _named_in_connection(fields, lowered)
    out: list[Field] = [(b"Host", _latin1(upstream_host if upstream_host is not None else host_header))]
    out += [field for lower, field in zip(lowered, fields) if lower not in _NOT_FORWARDED and lower not in named]
    out += _forwarding_fields(client_ip, proto, host_header, tuple(via))
    if upgrade is not None:
        out += [(b"Connection", b"Upgrade"), (b"Upgrade", _latin1(upgrade))]
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


class ClientFields(NamedTuple):  # made per response: a NamedTuple is cheaper to make than a frozen dataclass
    """An upstream response's header section as the client gets it, and what the proxy needs to know of it."""

    fields: list[Field]  # as the app sent them, hop-by-hop fields removed
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
    lowered = [_lower_token(name) for name, _ in fields]
    if None in lowered:
        name = fields[lowered.index(None)][0]
        return f"a malformed header name {name[:60].decode('latin-1')!r}"
    named = _named_in_connection(fields, lowered)
    kept: list[Field] = []
    has_date = is_event_stream = False
    for lower, field in zip(lowered, fields):
        if lower in _HOP_BY_HOP or lower in named:
            if lower == b"transfer-encoding" and field[1].rsplit(b",", 1)[-1].strip().lower() != b"chunked":
                return f"Transfer-Encoding: {field[1][:60].decode('latin-1')}, a coding the proxy does not pass on"
            continue
        if lower == b"date":
            has_date = True
        elif lower == b"content-type":
            is_event_stream = field[1].startswith(b"text/event-stream")
        kept.append(field)
    return ClientFields(kept, has_date, is_event_stream)


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
