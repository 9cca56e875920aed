"""Requests the proxy refuses before routing: what it will not forward unambiguously. Pure.

aiohttp's parser (llhttp) already rejects ambiguous framing: Content-Length with
Transfer-Encoding, duplicate or invalid lengths, obs-fold, bare LF, missing or repeated Host.
What it accepts but a proxy must not pass on is checked here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

# RFC 9112 3.2 / RFC 3986 3.2.2: an IP literal or a reg-name, then an optional port.
_HOST_SYNTAX = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(:[0-9]*)?")


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    title: str
    detail: str


@functools.lru_cache(maxsize=1024)  # the same few Host values arrive request after request
def _host_problem(host: str) -> str | None:
    """Return what is wrong with a Host value, or None when it is a host with an optional :port."""
    match = _HOST_SYNTAX.fullmatch(host)
    if match is None:
        return f"The Host {host[:100]!r} is not a host name with an optional :port."
    port = (match.group(2) or ":")[1:]
    if port and (len(port) > 5 or int(port) > 65535):
        # Names are matched without their port: a Host no socket could have been reached on must not route as if it could.
        return f"The Host {host[:100]!r} has {port[:20]!r} as its port; a port is a number from 0 to 65535."
    return None


# An HTTP/1 request line names its version as HTTP/major.minor; of those, these are spoken.
_REQUEST_LINE_VERSION = re.compile(r"HTTP/\d+\.\d+")
SPOKEN = frozenset({"HTTP/1.0", "HTTP/1.1"})


def refusal(method: str, target: str, protocol: str, host: str, transfer_encodings: Sequence[str]) -> Refusal | None:
    """Return why a request is answered by the proxy itself instead of forwarded, or None to forward it.

    `protocol` is what the client spoke: an HTTP/1 request line's version ("HTTP/1.1"; one
    saying HTTP/2.0 or HTTP/0.9 is refused), or another front-end's name for its protocol;
    `host` is the name the request is routed by: its Host
    header, or an absolute-form target's authority; `transfer_encodings` the values of its
    Transfer-Encoding fields.
    """
    if protocol not in SPOKEN and _REQUEST_LINE_VERSION.fullmatch(protocol):
        # llhttp reads HTTP/0.9 and HTTP/2.0 request lines; neither is spoken here.
        return Refusal(505, "HTTP version not supported", f"{protocol} is not spoken here; use HTTP/1.1.")
    if (problem := _host_problem(host)) is not None:
        return Refusal(400, "Bad Host", problem)
    if method == "CONNECT":
        return Refusal(405, "CONNECT is not supported", "This proxy routes requests by their Host name; it does not open tunnels.")
    if not target.startswith("/"):
        # Authority-form belongs to CONNECT and asterisk-form to OPTIONS *; neither names a path on a site.
        return Refusal(400, "Bad request target", f"The request target {target[:100]!r} is not a path starting with /.")
    codings = [value.strip().lower() for value in transfer_encodings]
    if codings and protocol == "HTTP/1.0":
        # HTTP/1.0 has no chunked coding: such a message's framing is faulty (RFC 9112 6.1).
        return Refusal(400, "Transfer-Encoding in HTTP/1.0", "An HTTP/1.0 request cannot be sent chunked; send it as HTTP/1.1 or with Content-Length.")
    if codings and codings != ["chunked"]:
        # A coding under chunked (gzip, chunked) would reach the app as if it were the plain body.
        return Refusal(
            501,
            "Transfer coding not supported",
            f"Transfer-Encoding: {', '.join(codings)[:100]} is not supported; send the body chunked or with Content-Length.",
        )
    return None
