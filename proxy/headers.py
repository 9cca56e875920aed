"""Which headers cross the proxy. Pure: lists of (name, value) pairs in, lists out.

Hop-by-hop fields are removed in both directions (RFC 9110 7.6.1), then the proxy sets its own
X-Forwarded-* so that a client can neither remove nor spoof them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Headers = list[tuple[str, str]]

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


def connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Return the lower-cased field names listed in every Connection header."""
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def strip_hop_by_hop(headers: Iterable[tuple[str, str]]) -> Headers:
    """Return headers without hop-by-hop fields and without every field named in Connection."""
    headers = list(headers)
    drop = HOP_BY_HOP | (connection_tokens(headers) - NEVER_STRIPPED)
    return [(name, value) for name, value in headers if name.lower() not in drop]


def request_headers_for_upstream(
    headers: Sequence[tuple[str, str]],
    *,
    client_ip: str,
    proto: str,
    host_header: str,
    upstream_host: str | None,
    via: Sequence[str],
    websocket: bool = False,
) -> Headers:
    """Return the headers to send upstream for a client request.

    The upstream gets `Host: host_header` (the name the request was routed by, which for an
    absolute-form target is the target's authority, RFC 9112 3.2.2), or `upstream_host` when the
    site does not preserve it; `via` is the list of
    sites this request has now passed through (see LOOP_HEADER).
    """
    drop = FORWARDED_BY_US | {"expect", LOOP_HEADER.lower(), REPLAY_HEADER.lower()}
    if websocket:
        drop |= WEBSOCKET_HANDSHAKE
    drop |= {"host"}
    out = [(n, v) for n, v in strip_hop_by_hop(headers) if n.lower() not in drop]
    out.insert(0, ("Host", upstream_host if upstream_host is not None else host_header))
    out += [
        ("X-Forwarded-For", client_ip),
        ("X-Forwarded-Proto", proto),
        ("X-Forwarded-Host", host_header),
        ("Forwarded", forwarded_value(client_ip, host_header, proto)),
        (LOOP_HEADER, ", ".join(via)),
    ]
    return out


def forwarded_value(client_ip: str, host_header: str, proto: str) -> str:
    """Return the RFC 7239 Forwarded field for the same facts as X-Forwarded-*."""
    node = f'"[{client_ip}]"' if ":" in client_ip else client_ip
    host = host_header.replace("\\", "\\\\").replace('"', '\\"')
    return f'for={node};host="{host}";proto={proto}'


def sites_passed(headers: Iterable[tuple[str, str]]) -> list[str]:
    """Return the site hosts named in the loop header of an incoming request."""
    names: list[str] = []
    for name, value in headers:
        if name.lower() == LOOP_HEADER.lower():
            names += [v.strip().lower() for v in value.split(",") if v.strip()]
    return names


_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def response_head_problem(status: int, headers: Sequence[tuple[str, str]]) -> str | None:
    """Return what makes an upstream response head unsafe to relay (a phrase after "the app sent"), or None.

    The client parser is lenient where a proxy must not be (RFC 9112 5.1, 6.1): what it lets
    through here would reach the browser framed differently from how the app meant it.
    """
    if not 200 <= status <= 599:  # 1xx interim answers are consumed by the client; 101 only for WebSockets
        return f"the status code {status}, which cannot answer this request"
    for name, value in headers:
        if not name or not _TOKEN_CHARS.issuperset(name):
            return f"a malformed header name {name[:60]!r}"
        if name.lower() == "transfer-encoding" and value.rsplit(",", 1)[-1].strip().lower() != "chunked":
            return f"Transfer-Encoding: {value[:60]}, a coding the proxy does not pass on"
    return None


def response_headers_for_client(headers: Iterable[tuple[str, str]]) -> Headers:
    """Return an upstream response's headers as the client should see them."""
    return strip_hop_by_hop(headers)
