"""Recognize a dev server refusing the Host header the proxy forwarded, and say the one-line fix.

Pure: callers pass a response's status, content type and first body bytes; nothing here touches
a socket. With preserve_host (the default) the app sees `Host: app1.localhost`, which dev servers
that guard against DNS rebinding refuse until their allowed-hosts setting names it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from proxy.names import is_under_localhost, normalize_host

# Callers pass at most this much; more would only slow down every 400 and 403.
MAX_BODY_PREFIX = 64 * 1024
REFUSAL_STATUSES = frozenset({400, 403})
# webpack-dev-server before 4 sent its refusal as a 200 with nothing but the message.
OLD_WEBPACK_STATUS = 200
OLD_WEBPACK_MAX_BODY = 64
_WEBPACK_MIN_BODY = len("Invalid Host header")  # shorter bodies cannot be its answer
# The proxy then sends the app its own address as Host, which every dev server accepts.
OR_PRESERVE_HOST = "(or set preserve_host: false for this site in sites.yaml)"
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class HostRefusal:
    """A dev server refused the forwarded Host: who refused, and one sentence on how to allow it."""

    server: str  # "Vite", "Django", "webpack-dev-server", "Rails", "Starlette"
    hint: str


def could_be_old_webpack_refusal(body_size: int) -> bool:
    """Return whether a 200 of this size can be old webpack's refusal (checked before anything is decoded)."""
    return _WEBPACK_MIN_BODY <= body_size <= OLD_WEBPACK_MAX_BODY


def detect_host_refusal(status: int, content_type: str, body_prefix: bytes, host: str) -> HostRefusal | None:
    """Return which dev server refused `host` and its one-line fix, or None for any other response.

    `body_prefix` is the first bytes of the body (up to 64 KiB, possibly gzip-compressed);
    `host` is the site name the request was for. Never raises, whatever the bytes.
    """
    if status == OLD_WEBPACK_STATUS:
        # Checked on the bytes first: a 200 is almost never a refusal, so skip decoding.
        if not _WEBPACK_MIN_BODY <= len(body_prefix) <= OLD_WEBPACK_MAX_BODY or not _is_text(content_type):
            return None
        is_webpack = _decode(body_prefix).strip().lower() == "invalid host header"
        return _webpack_refusal(host) if is_webpack else None
    if status not in REFUSAL_STATUSES:
        return None
    text = _decode(body_prefix)
    lowered = text.lower()
    if "blocked request. this host" in lowered and "is not allowed" in lowered:
        return _vite_refusal(host, is_preview="preview.allowedhosts" in lowered)
    # Django with DEBUG off says only "Bad Request (400)", which could be anything: not matched.
    if "disallowedhost" in lowered or "invalid http_host header" in lowered:
        return _refusal("Django", host, f"add `ALLOWED_HOSTS += ['{_allow_pattern(host)}']` to settings.py")
    if "blocked host" in lowered and "config.hosts" in lowered:  # older Rails: "Blocked host: x", newer: "Blocked hosts: x"
        return _refusal("Rails", host, f'add `config.hosts << "{_allow_pattern(host)}"` to config/environments/development.rb')
    stripped = text.strip()
    # Starlette's TrustedHostMiddleware answers 400 "Invalid host header"; only the case tells it from webpack.
    if stripped == "Invalid host header" and status == 400:
        pattern = _allow_pattern(host)
        wildcard = "*" + pattern if pattern.startswith(".") else pattern
        return _refusal("Starlette", host, f"add `'{wildcard}'` to allowed_hosts of TrustedHostMiddleware (FastAPI: app.add_middleware)")
    if stripped.lower() == "invalid host header":
        return _webpack_refusal(host)
    return None


def _decode(body_prefix: bytes) -> str:
    """Return the body prefix as text, gunzipped first when it is gzip (browsers ask for it)."""
    body = body_prefix[:MAX_BODY_PREFIX]
    if body.startswith(GZIP_MAGIC):
        try:
            # A prefix is a truncated stream: decompressobj returns what it could, flush() is never needed.
            body = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(body, MAX_BODY_PREFIX)
        except zlib.error:
            return ""
    return body.decode("utf-8", errors="replace")


def _is_text(content_type: str) -> bool:
    """Return whether a Content-Type is absent or plain text or HTML, as old webpack sent it."""
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type in ("", "text/plain", "text/html")


def _allow_pattern(host: str) -> str:
    """Return what to allow: `.localhost` (every site at once, as each server reads a leading dot) or the exact name."""
    name = normalize_host(host).removeprefix("*.")
    if is_under_localhost(name):
        return ".localhost"
    return name


def _refusal(server: str, host: str, fix: str, who: str | None = None) -> HostRefusal:
    return HostRefusal(server, f"{who or server} refused the Host {host}: {fix} {OR_PRESERVE_HOST}")


def _vite_refusal(host: str, *, is_preview: bool) -> HostRefusal:
    # `vite preview` has its own option block; the message names the one that refused.
    block = "preview" if is_preview else "server"
    return _refusal("Vite", host, f"add `{block}: {{ allowedHosts: ['{_allow_pattern(host)}'] }}` to vite.config")


def _webpack_refusal(host: str) -> HostRefusal:
    pattern = _allow_pattern(host)
    return _refusal(
        "webpack-dev-server",
        host,
        f"add `devServer: {{ allowedHosts: ['{pattern}'] }}` to webpack.config.js (Angular CLI: `ng serve --allowed-hosts {pattern}`)",
        who="webpack-dev-server (also used by Angular CLI / Create React App)",
    )
