"""Requests the proxy refuses before routing: what it will not forward unambiguously. Pure.

aiohttp's parser (llhttp) already rejects ambiguous framing: Content-Length with
Transfer-Encoding, duplicate or invalid lengths, obs-fold, bare LF, missing or repeated Host.
What it accepts but a proxy must not pass on is checked here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    title: str
    detail: str


def refusal(method: str, target: str, headers: Iterable[tuple[str, str]]) -> Refusal | None:
    """Return why a request is answered by the proxy itself instead of forwarded, or None to forward it."""
    if method == "CONNECT":
        return Refusal(405, "CONNECT is not supported", "This proxy routes requests by their Host name; it does not open tunnels.")
    if not target.startswith("/"):
        # Authority-form belongs to CONNECT and asterisk-form to OPTIONS *; neither names a path on a site.
        return Refusal(400, "Bad request target", f"The request target {target[:100]!r} is not a path starting with /.")
    codings = [value.strip().lower() for name, value in headers if name.lower() == "transfer-encoding"]
    if codings and codings != ["chunked"]:
        # A coding under chunked (gzip, chunked) would reach the app as if it were the plain body.
        return Refusal(501, "Transfer coding not supported", f"Transfer-Encoding: {', '.join(codings)[:100]} is not supported; send the body chunked or with Content-Length.")
    return None
